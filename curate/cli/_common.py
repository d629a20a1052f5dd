"""What every ``mmcurate`` command shares: the consoles, JSON and warning output, percentages, and the
translation of errors into one line and an exit code.

The command modules stay about ten lines per command because the presentation rules live here once:
stdout carries tables or exactly one JSON object, a warning is one yellow line, a ``UserError`` or a
usage error is one red line and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

from curate.console import log_console, safe

out = log_console()  # a log file gets wide tables, not tables wrapped at 80 columns
err = log_console(stderr=True)
#: The one-line error console: the terminal's width always (an error line is short and soft-wrapped).
error_console = Console(stderr=True, emoji=False)


def print_json(obj: dict, *, sort_keys: bool = False, ensure_ascii: bool = False) -> None:
    """One JSON object on stdout, nothing else (rich would wrap and colour it)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=ensure_ascii, sort_keys=sort_keys) + "\n")


def pct(x: float | None) -> str:
    """A share as ``12.3 %``; an en dash when undefined."""
    return "–" if x is None else f"{100 * x:.1f} %"


def warn(console: Console, message: object) -> None:
    """A yellow ``warning:`` line with the (untrusted) message escaped."""
    console.print(f"[yellow]warning:[/] {safe(message)}", highlight=False)


def print_error(message: object) -> None:
    """The one red ``error:`` line every failure ends in."""
    error_console.print(f"[bold red]error:[/] {safe(message)}", highlight=False, soft_wrap=True)


def cli_exception_types() -> tuple[type, ...]:
    """typer's own exception base (typer >= 0.2x vendors click and raises its copies of click's
    exceptions, which ``except click.ClickException`` does not catch) and click's, when present."""
    types: list[type] = [typer.TyperException]
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:  # typer without click
        pass
    return tuple(types)


def abort_types() -> tuple[type, ...]:
    """Ctrl-C inside a prompt, in typer's and click's classes."""
    types: list[type] = [typer.Abort]
    try:
        import click

        types.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(types)


def usage_error(exc: Exception) -> None:
    """A usage error as one line (``error: ...``) naming where to find help; exit 2.

    ``mmcurate`` alone (no_args_is_help) prints the help text instead, as click does.
    """
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help())
        sys.exit(2)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None and getattr(ctx, "command_path", None) else ""
    print_error(message + where)
    sys.exit(getattr(exc, "exit_code", 2) or 2)
