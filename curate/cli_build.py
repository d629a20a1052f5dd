"""``mmcurate suggest``, ``mmcurate balance`` and ``mmcurate export``: the last stages of MMStar's recipe."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def register(app: typer.Typer) -> None:
    app.command("suggest")(suggest_cmd)
    app.command("balance")(balance_cmd)
    app.command("export")(export_cmd)


def suggest_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the classifier.")] = 0,
    cv: Annotated[bool, typer.Option("--cv", help="Also print the cross-validated accuracy (slower).")] = False,
) -> None:
    """Suggest MMStar's dimension (with a probability) for items whose source category does not map to one."""
    from curate.suggest import cross_validate_suggester, suggest_workspace

    with warnings.catch_warnings(record=True) as caught, out.status("training the dimension classifier"):
        warnings.simplefilter("always")
        stage, df = suggest_workspace(workdir, seed=seed)
        score = cross_validate_suggester(df, use_category=False, seed=seed) if cv else None
    counts = df.group_by("suggested_by").len().sort("len", descending=True)
    out.print(f"{stage}.parquet: suggestions added to {df.height} items: "
              + ", ".join(f"{n} from {by}" for by, n in counts.iter_rows()), highlight=False)
    for w in {str(w.message) for w in caught}:
        out.print(f"[yellow]warning:[/] {w}", highlight=False)
    if score is not None:
        out.print(f"cross-validated: {score}", highlight=False)


def balance_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    total: Annotated[int, typer.Option(help="Items to select, split equally over the 6 capabilities.")] = 1500,
    seed: Annotated[int, typer.Option(help="Tie-breaking seed; same input + seed = same selection.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 2) instead of printing a shortfall table.")] = False,
    source_cap: Annotated[float, typer.Option(help="Most items from one source: a fraction of --total (<= 1) or a count; 0 = no cap.")] = 0.5,
    replace: Annotated[Optional[str], typer.Option("--replace", metavar="ITEM_ID", help="Replace one rejected item of balanced.parquet (same capability and difficulty).")] = None,
) -> None:
    """Select a balanced set from the newest of reviewed / screened / items into WORKDIR/balanced.parquet."""
    from curate.balance import balance_workspace, replace_in_workspace

    cap = None if source_cap == 0 else (int(source_cap) if source_cap > 1 else source_cap)
    if replace:
        rep = replace_in_workspace(workdir, replace, seed=seed, source_cap=cap)
        out.print(f"replaced {rep.removed} with {rep.added} in {workdir}/balanced.parquet", highlight=False)
        return
    with out.status("solving the selection (HiGHS)"):
        res = balance_workspace(workdir, total=total, seed=seed, strict=strict, source_cap=cap)
    print_balance(res, workdir, out)


def print_balance(res, workdir, console: Console) -> None:
    """Counts per capability / dimension, warnings and the shortfall table (CLI, `run` and `demo`)."""
    if res.suggested:
        console.print("some items had no dimension: suggested ones were used (run `mmcurate suggest` to keep them)")
    console.print(_counts(res.selected))
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if res.shortfall.height:
        console.print(_shortfall(res.shortfall))
    console.print(f"{res.selected.height} items from {res.input_stage}.parquet -> {workdir}/balanced.parquet", highlight=False)


def _counts(df) -> Table:
    t = Table(title="selected per capability / dimension")
    for c in ("capability", "dimension", "items"):
        t.add_column(c, justify="right" if c == "items" else "left")
    for cap, dim, n in df.group_by("category", "l2_category", maintain_order=True).len().iter_rows():
        t.add_row(cap, dim, str(n))
    return t


def _shortfall(df) -> Table:
    t = Table(title="shortfall (not enough candidates)", title_style="yellow")
    for c in df.columns:
        t.add_column(c, justify="right" if c in ("wanted", "available", "chosen") else "left")
    for row in df.iter_rows():
        t.add_row(*["(total)" if v is None else str(v) for v in row])
    return t


def export_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    to: Annotated[Path, typer.Option("--to", help="Export folder (must not exist unless --overwrite).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="hf | parquet | tsv | jsonl")] = "hf",
    stage: Annotated[Optional[str], typer.Option(help="Stage to export: balanced, reviewed, screened, items (default: newest).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export folder.")] = False,
    license: Annotated[Optional[str], typer.Option("--license", help="Licence field of the dataset card (default: other).")] = None,
) -> None:
    """Export a stage as a Hugging Face dataset, parquet, a VLMEvalKit TSV or JSONL, images embedded."""
    from curate.export import export_workspace

    with out.status(f"exporting ({fmt})"):
        stage_used, path = export_workspace(workdir, to, fmt=fmt, stage=stage, overwrite=overwrite,
                                            card_info={"license": license} if license else None)
    out.print(f"{stage_used}.parquet -> {path} ({fmt}, dataset card in {path}/README.md)", highlight=False)
