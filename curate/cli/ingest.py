"""``mmcurate ingest`` and ``mmcurate status``: read benchmark files into a workspace; count what the ledger holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from curate.cli._common import out, print_json
from curate.console import clean, log_console, safe


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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the per-source counts instead of tables.")] = False,
) -> None:
    """Read benchmark files into WORKDIR/items.parquet; every input row is accounted for in ledger.parquet."""
    from curate.ingest import ingest_to_workspace, parse_column_map

    column_map = parse_column_map(map_ or [])
    progress_console = log_console(stderr=True) if as_json else out  # stdout carries only the JSON
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=progress_console, transient=True) as bar:
        task = bar.add_task("ingest", total=None)
        result = ingest_to_workspace(
            sources, out_dir, name=name, column_map=column_map, image_root=images, open_to_mcq=open_to_mcq, seed=seed,
            on_row=lambda src, n: bar.update(task, description=f"ingest {src}", completed=n) if n % 200 == 0 else None,
        )
    if as_json:
        print_json(ingest_summary(result))
        return
    for table in ingest_tables(result):
        out.print(table)
    out.print(f"{result.items} items in the workspace; every row with its reason: mmcurate status {safe(out_dir)} --rows", highlight=False)


def ingest_summary(result) -> dict:
    """``ingest --json``: totals and, per source, the counts and the reasons rows were not kept."""
    sources = []
    for s in result.sources:
        reasons = [{"status": status, "reason": reason, "rows": n}
                   for (status, reason), n in sorted(s.reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
        sources.append({"source": s.source, "path": s.path, "format": s.format, "rows": s.rows,
                        **{k: s.counts.get(k, 0) for k in ("kept", "dropped", "quarantined")}, "reasons": reasons})
    totals = {k: sum(s[k] for s in sources) for k in ("rows", "kept", "dropped", "quarantined")}
    return {"workdir": str(result.workdir), "items": result.items, **totals, "sources": sources}


def ingest_tables(result) -> list[Table]:
    """Per-source counts, and why rows were not kept (shared by `ingest`, `run` and `demo`)."""
    table = Table(title=f"ingest -> {safe(result.workdir)}/items.parquet")
    for col in ("source", "format", "rows", "kept", "dropped", "quarantined"):
        table.add_column(col, justify="left" if col in ("source", "format") else "right")
    for s in result.sources:
        table.add_row(safe(s.source), s.format, str(s.rows), str(s.counts["kept"]), str(s.counts["dropped"]), str(s.counts["quarantined"]))
    tables = [table]
    reasons = [(s.source, status, reason, n) for s in result.sources for (status, reason), n in s.reasons.most_common()]
    if reasons:
        why = Table(title="why rows were not kept, or were kept with a note")
        for col in ("source", "status", "reason", "rows"):
            why.add_column(col, justify="right" if col == "rows" else "left")
        for row in reasons:
            why.add_row(*map(safe, row))
        tables.append(why)
    return tables


def status_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    rows: Annotated[bool, typer.Option("--rows", help="Also list each dropped / quarantined row with its reason.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (stage rows, ledger counts) instead of tables.")] = False,
) -> None:
    """Counts per stage, per source and per reason, from the ledger."""
    from curate.status import workspace_status
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    st = workspace_status(ws)
    bad = st.not_simply_kept if rows else None
    if as_json:
        print_json(status_summary(ws.root, st.stage_rows, st.ledger, st.counts, bad))
    else:
        print_status(ws.root, st.stage_rows, st.ledger, st.counts, bad)


def print_status(root: Path, stage_rows: dict[str, int], ledger: pl.DataFrame, counts: pl.DataFrame,
                 bad: pl.DataFrame | None) -> None:
    """The stage files, the ledger counts and (``--rows``, ``bad`` given) one line per row not simply kept."""
    from curate.workspace import STAGE_FILES

    stages = Table(title=f"workspace {safe(root)}")
    stages.add_column("stage file")
    stages.add_column("rows", justify="right")
    for stage, n in stage_rows.items():
        stages.add_row(STAGE_FILES[stage], str(n))
    out.print(stages)
    if ledger.height == 0:
        out.print("ledger is empty")
        return
    table = Table(title="ledger")
    for col in ("stage", "source", "status", "reason", "rows"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for r in counts.iter_rows(named=True):
        table.add_row(safe(r["stage"]), safe(Path(r["source_file"] or "").name), safe(r["status"]), safe(r["reason"] or "-"), str(r["len"]))
    out.print(table)
    for r in (bad.iter_rows(named=True) if bad is not None else ()):
        line = clean(f"[{r['stage']}] {r['status']} {r['reason']}: {r['detail']}").replace("\n", "\\n")
        out.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)


def status_summary(root: Path, stage_rows: dict[str, int], ledger: pl.DataFrame, counts: pl.DataFrame,
                   bad: pl.DataFrame | None) -> dict:
    """``status --json``: rows per stage file, per ledger stage the status totals, and the ledger counts."""
    totals: dict[str, dict[str, int]] = {}
    for stage, status, n in ledger.group_by("stage", "status").len().sort("stage", "status").iter_rows():
        totals.setdefault(stage, {"kept": 0, "dropped": 0, "quarantined": 0})[status] = n
    obj: dict = {
        "workdir": str(root),
        "stages": stage_rows,
        "ledger_totals": totals,
        "ledger": [{"stage": r["stage"], "source_file": r["source_file"], "status": r["status"], "reason": r["reason"],
                    "rows": r["len"]} for r in counts.iter_rows(named=True)],
    }
    if bad is not None:
        obj["rows"] = bad.select("stage", "source_file", "row", "item_id", "status", "reason", "field", "detail").to_dicts()
    return obj
