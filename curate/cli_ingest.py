"""``mmcurate ingest`` and ``mmcurate status``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console()


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest_cmd)
    app.command("status")(status_cmd)


def ingest_cmd(
    sources: Annotated[list[Path], typer.Argument(help="Files or folders: VLMEvalKit .tsv/.xlsx, .parquet, .jsonl, MathVista .json, save_to_disk folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Workspace folder (created if missing).")],
    name: Annotated[Optional[str], typer.Option(help="Source name for item ids (default: file stem). One source only.")] = None,
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="Column mapping CANONICAL=COLUMN, e.g. --map question=Question. Repeatable.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder that JSON/JSONL image paths are relative to (default: the file's folder).")] = None,
    open_to_mcq: Annotated[bool, typer.Option("--open-to-mcq", help="Turn numeric open questions into 4-option MCQ with seeded distractors (as MMStar did for MathVista).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for --open-to-mcq distractors.")] = 0,
) -> None:
    """Read benchmark files into WORKDIR/items.parquet; every input row is accounted for in ledger.parquet."""
    from curate.ingest import ingest_to_workspace, parse_column_map

    column_map = parse_column_map(map_ or [])
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task("ingest", total=None)
        result = ingest_to_workspace(
            sources, out_dir, name=name, column_map=column_map, image_root=images, open_to_mcq=open_to_mcq, seed=seed,
            on_row=lambda src, n: bar.update(task, description=f"ingest {src}", completed=n) if n % 200 == 0 else None,
        )
    for table in ingest_tables(result):
        out.print(table)
    out.print(f"{result.items} items in the workspace; every row with its reason: mmcurate status {out_dir} --rows", highlight=False)


def ingest_tables(result) -> list[Table]:
    """Per-source counts, and why rows were not kept (shared by `ingest`, `run` and `demo`)."""
    table = Table(title=f"ingest -> {result.workdir}/items.parquet")
    for col in ("source", "format", "rows", "kept", "dropped", "quarantined"):
        table.add_column(col, justify="left" if col in ("source", "format") else "right")
    for s in result.sources:
        table.add_row(s.source, s.format, str(s.rows), str(s.counts["kept"]), str(s.counts["dropped"]), str(s.counts["quarantined"]))
    tables = [table]
    reasons = [(s.source, status, reason, n) for s in result.sources for (status, reason), n in s.reasons.most_common()]
    if reasons:
        why = Table(title="why rows were not kept")
        for col in ("source", "status", "reason", "rows"):
            why.add_column(col, justify="right" if col == "rows" else "left")
        for row in reasons:
            why.add_row(*map(str, row))
        tables.append(why)
    return tables


def status_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    rows: Annotated[bool, typer.Option("--rows", help="Also list each dropped / quarantined row with its reason.")] = False,
) -> None:
    """Counts per stage, per source and per reason, from the ledger."""
    from curate.workspace import STAGE_FILES, Workspace

    ws = Workspace(workdir)
    stages = Table(title=f"workspace {ws.root}")
    stages.add_column("stage file")
    stages.add_column("rows", justify="right")
    for stage, fname in STAGE_FILES.items():
        if ws.has(stage):
            n = pl.scan_parquet(ws.path(stage)).select(pl.len()).collect().item()
            stages.add_row(fname, str(n))
    out.print(stages)
    ledger = ws.ledger()
    if ledger.height == 0:
        out.print("ledger is empty")
        return
    counts = (
        ledger.group_by("stage", "source_file", "status", "reason")
        .len()
        .sort(["stage", "source_file", "status", "len"], descending=[False, False, False, True])
    )
    table = Table(title="ledger")
    for col in ("stage", "source", "status", "reason", "rows"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for r in counts.iter_rows(named=True):
        table.add_row(r["stage"], Path(r["source_file"] or "").name, r["status"], r["reason"] or "-", str(r["len"]))
    out.print(table)
    if rows:
        bad = ledger.filter(pl.col("status") != "kept")
        for r in bad.iter_rows(named=True):
            out.print(f"[{r['stage']}] {r['status']} {r['reason']}: {r['detail']}", highlight=False, soft_wrap=True, markup=False)
