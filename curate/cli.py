"""The ``mmcurate`` command: a thin layer over the library functions.

Each command maps flags, calls one library function, prints a summary and sets the exit
code. Stage modules register their own commands (``register(app)``) so this file stays
small and heavy imports (torch, datasets) happen only inside the command that needs them.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from curate.console import safe as escape  # markup escaped and control characters shown: data reaches error lines
from curate.errors import UserError

app = typer.Typer(
    name="mmcurate",
    help="Build and audit vision-dependent multimodal benchmarks (MMStar's recipe).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, emoji=False)


def version() -> str:
    """The installed distribution's version (pyproject's, as pip recorded it); "unknown" in a source tree
    that was never installed."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("mmcurate")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"mmcurate {version()}")
        raise typer.Exit()


@app.callback()
def _main_options(
    show_version: Annotated[Optional[bool], typer.Option("--version", help="Print the version and exit.",
                                                         callback=_print_version, is_eager=True)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="When another mmcurate process is changing the workspace, wait "
                                                      "for it instead of stopping (also MMCURATE_WAIT=1).")] = False,
) -> None:
    """Build and audit vision-dependent multimodal benchmarks (MMStar's recipe)."""
    if wait:
        from curate import workspace

        workspace.LOCK_WAIT = True


def _register_all() -> None:
    from curate import cli_ingest
    from curate import cli_build
    from curate import cli_audit
    from curate import cli_pipeline
    from curate import cli_check
    from filters import cli as filters_cli
    from filters import cli_panel
    from annotation import cli as annotation_cli

    for module in (cli_ingest, filters_cli, cli_panel, annotation_cli, cli_build, cli_check, cli_audit, cli_pipeline):
        module.register(app)
    from curate import cli_items  # issue #18: item-stats

    cli_items.register(app)


_register_all()


def _cli_exception_types() -> tuple[type, ...]:
    """typer's own exception base (typer >= 0.2x vendors click and raises its copies of click's
    exceptions, which ``except click.ClickException`` does not catch) and click's, when present."""
    types: list[type] = [typer.TyperException]
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:  # typer without click
        pass
    return tuple(types)


def _abort_types() -> tuple[type, ...]:
    types: list[type] = [typer.Abort]
    try:
        import click

        types.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(types)


def _usage_error(exc: Exception) -> None:
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
    console.print(f"[bold red]error:[/] {escape(message + where)}", highlight=False, soft_wrap=True)
    sys.exit(getattr(exc, "exit_code", 2) or 2)


def main() -> None:
    """Console-script entry point: UserError and usage errors -> one red line and exit code 2, never a traceback."""
    try:
        # Without standalone mode click returns a command's ``typer.Exit(code)`` instead of exiting.
        code = app(standalone_mode=False)
    except UserError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        sys.exit(code or 0)
    except KeyboardInterrupt:
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors, in click's or typer's own classes
        if isinstance(exc, _abort_types()):
            console.print("aborted")
            sys.exit(130)
        if isinstance(exc, _cli_exception_types()):
            _usage_error(exc)
        raise
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
