"""``mmcurate demo`` and ``mmcurate run``: the stages chained, resuming from the last finished one.

``curate.pipeline.pipeline_steps`` runs the stages and yields what happened; this module prints it
with the tables the single-stage commands print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from curate.cli._common import out


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
    app.command("run")(run_cmd)


def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Workspace folder for the demo.")] = Path("mmcurate-demo"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the demo workspace first (default: resume it).")] = False,
    panel: Annotated[Optional[Path], typer.Option(help="Screening panel TOML (default: the offline default panel, Qwen2.5-Coder-1.5B).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Screen with the tiny SmolLM2-135M panel (fast, but a near-chance judge).")] = False,
) -> None:
    """Run the whole pipeline on the small demo pool shipped in data/demo/."""
    from curate.assets import asset_path
    from curate.pipeline import demo_config, pipeline_steps

    if quick and panel is None:
        panel = asset_path("panel_tiny.toml")
    for event in pipeline_steps(demo_config(workdir, panel=panel), fresh=fresh):
        print_event(event, out)


def run_cmd(
    config: Annotated[Path, typer.Argument(help="Pipeline TOML: [ingest] sources, [screen] panel, [review], [balance], [export].")],
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over: delete the workspace's stage files first.")] = False,
    until: Annotated[Optional[str], typer.Option(help="Stop after this stage (ingest, screen, review, balance, export).")] = None,
) -> None:
    """ingest -> screen -> review -> balance -> export, resuming from the last finished stage."""
    from curate.pipeline import load_config, pipeline_steps

    for event in pipeline_steps(load_config(config), fresh=fresh, until=until):
        print_event(event, out)


def print_event(event, console: Console) -> None:
    """One pipeline event as the single-stage command prints its result (a heading rule per stage)."""
    from curate import pipeline as p
    from curate.cli.build import print_balance
    from curate.cli.ingest import ingest_tables
    from curate.cli.screen import print_summary

    if isinstance(event, p.StageStarted):
        console.rule(f"[bold]{event.n}. {event.stage}")
    elif isinstance(event, p.Note):
        console.print(event.text, highlight=False, markup=False)
    elif isinstance(event, p.Ingested):
        for table in ingest_tables(event.result):
            console.print(table)
    elif isinstance(event, p.Screened):
        print_summary(event.report, event.table, console=console)
    elif isinstance(event, p.Balanced):
        print_balance(event.result, event.workdir, console)
    elif isinstance(event, p.Finished) and event.ledger.height:
        console.print(_ledger_table(event.workdir, event.ledger))


def _ledger_table(workdir: Path, summary) -> Table:
    """``curate.pipeline.ledger_summary`` as the run's closing table."""
    table = Table(title=f"{workdir}: what happened to every input row")
    for col in ("stage", "kept", "dropped", "quarantined", "top reasons"):
        table.add_column(col, justify="left" if col in ("stage", "top reasons") else "right")
    for r in summary.iter_rows(named=True):
        table.add_row(r["stage"], *(str(r[s]) for s in ("kept", "dropped", "quarantined")), r["top_reasons"])
    return table
