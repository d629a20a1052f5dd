"""``mmcurate check``: the release check of a workspace stage or an export (see ``curate.check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from curate.cli._common import out, print_json
from curate.console import safe


def register(app: typer.Typer) -> None:
    app.command("check")(check_cmd)


def check_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="A workspace (its newest stage, or --stage) or an export folder / file.")],
    stage: Annotated[Optional[str], typer.Option(help="Workspace stage to check: balanced, reviewed, screened, items (default: newest).")] = None,
    allow_no_image: Annotated[bool, typer.Option("--allow-no-image", help="Items without an image are allowed (a text-only set).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object {ok, errors, warnings, problems} instead of a table.")] = False,
) -> None:
    """List every problem that would embarrass a published benchmark; exit 1 when there are errors."""
    from curate.check import check_folder

    result = check_folder(folder, stage=stage, allow_no_image=allow_no_image)
    if as_json:
        print_json(result.as_dict())
    else:
        print_check(result)
    if not result.ok:
        raise typer.Exit(1)


def print_check(result) -> None:
    """The problems as a table, then one verdict line."""
    errors = sum(p.severity == "error" for p in result.problems)
    warnings = len(result.problems) - errors
    if result.problems:
        table = Table(title=f"check {safe(result.what)}")
        for col in ("severity", "code", "items", "problem"):
            table.add_column(col, justify="right" if col == "items" else "left", overflow="fold")
        for p in result.problems:
            style = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{style}]{p.severity}[/]", safe(p.code), str(len(p.item_ids)), safe(p.message))
        out.print(table)
    verdict = "[green]ok[/]" if errors == 0 else "[bold red]not releasable[/]"
    out.print(f"{verdict}: {result.items} items checked in {safe(result.what)}, {errors} error(s), {warnings} warning(s)",
              highlight=False)
