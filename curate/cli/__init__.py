"""The ``mmcurate`` command: a thin layer over the library, one module per command group.

Every command maps its flags, calls one library function, prints and sets the exit code; the
presentation rules they share (consoles, JSON, one-line errors) are in ``_common``. Nothing outside
this package imports it, and only this package imports typer (``tests/test_architecture.py``). Heavy
imports (torch, datasets) happen inside the command that needs them, so ``mmcurate --help`` is quick.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from curate.cli import _common
from curate.errors import UserError

app = typer.Typer(
    name="mmcurate",
    help="Build and audit vision-dependent multimodal benchmarks (MMStar's recipe).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    """Add every command group, in the order ``mmcurate --help`` lists them (sub-groups come last there)."""
    from curate.cli import audit, build, check, ingest, items, panel, pipeline, review, screen

    for module in (ingest, screen, panel, review, build, check, audit, pipeline, items):
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point: UserError and usage errors -> one red line and exit code 2, never a traceback."""
    try:
        # Without standalone mode click returns a command's ``typer.Exit(code)`` instead of exiting.
        code = app(standalone_mode=False)
    except UserError as exc:
        _common.print_error(exc)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        sys.exit(code or 0)
    except KeyboardInterrupt:
        _common.error_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors, in click's or typer's own classes
        if isinstance(exc, _common.abort_types()):
            _common.error_console.print("aborted")
            sys.exit(130)
        if isinstance(exc, _common.cli_exception_types()):
            _common.usage_error(exc)
        raise
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        sys.exit(code)
