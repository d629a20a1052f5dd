"""The ``mmcurate`` command: a thin layer over the library functions.

Each command maps flags, calls one library function, prints a summary and sets the exit
code. Stage modules register their own commands (``register(app)``) so this file stays
small and heavy imports (torch, datasets) happen only inside the command that needs them.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from curate.errors import UserError

app = typer.Typer(
    name="mmcurate",
    help="Build and audit vision-dependent multimodal benchmarks (MMStar's recipe).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _register_all() -> None:
    from curate import cli_ingest
    from curate import cli_build
    from curate import cli_audit
    from curate import cli_pipeline
    from filters import cli as filters_cli
    from annotation import cli as annotation_cli

    for module in (cli_ingest, filters_cli, annotation_cli, cli_build, cli_audit, cli_pipeline):
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point: UserError -> one red line and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        sys.exit(code or 0)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
