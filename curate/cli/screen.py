"""``mmcurate screen``: the text-only panel and the rule filters over a workspace's items.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.table import Table

from curate.cli._common import warn
from curate.console import log_console, safe


def register(app: typer.Typer) -> None:
    app.command("screen")(screen_cmd)


def screen_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder holding items.parquet.")],
    panel: Annotated[Optional[Path], typer.Option("--panel", help="panel.toml (default: the offline panel shipped in data/panel.toml).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Screen only the first N items.")] = None,
    members: Annotated[Optional[str], typer.Option("--members", help="Comma-separated member names to run (default: all).")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="SQLite response cache (default: one per user, shared by every workspace: $MMCURATE_CACHE/responses.sqlite, else ~/.cache/mmcurate/responses.sqlite).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Ask every panel member every question with the image withheld; write screened.parquet and the ledger."""
    from filters.screen import screen_workspace

    names = [m.strip() for m in members.split(",") if m.strip()] if members else None
    df, report = screen_workspace(workdir, panel, limit=limit, members=names, cache_path=cache, progress=progress)
    print_summary(report, df)


def print_summary(report, df: pl.DataFrame, console=None) -> None:
    """The member table (competence, bias, hit rate vs chance) and the kept/dropped counts (`screen`, `run`, `demo`)."""
    from curate.throughput import throughput_line

    console = console or log_console(stderr=True)
    console.print(_members(report))
    for m in report.members:
        console.print(safe(throughput_line(m.name, m.throughput())), highlight=False)
    for w in report.warnings:
        warn(console, w)
    console.print(_counts_line(report, df))


def _members(report) -> Table:
    table = Table(title=f"panel {safe(report.panel)} ({report.panel_hash}), blind when hits > {report.threshold}")
    for col in ("member", "backend", "method", "controls acc [95% CI]", "at chance", "letter bias", "hit rate", "chance (uniform / biased)"):
        table.add_column(col)
    for m in report.members:
        c = m.competence
        acc = f"{c['accuracy']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] n={c['n']}" if c else "-"
        bias = " ".join(f"{k}:{v:.0%}" for k, v in c["letter_bias"].items()) if c else "-"
        at = ("yes" + ("" if m.counted else ", not counted")) if c and c["at_chance"] else "no"
        biased = f"{m.expected_biased_hit_rate:.2f}" if m.expected_biased_hit_rate is not None else "-"
        table.add_row(safe(m.name), safe(m.backend), f"{m.method} {m.shots}-shot", acc, at, bias, f"{m.hit_rate:.2f}", f"{m.expected_chance_hit_rate:.2f} / {biased}")
    return table


def _counts_line(report, df: pl.DataFrame) -> str:
    """Screened, blind, flagged by rules, skipped and kept, in one line."""
    rule = int(df["rule_reason"].is_not_null().sum()) if "rule_reason" in df.columns else 0
    skipped = df["screen_error"].is_not_null() if "screen_error" in df.columns else pl.Series([False] * df.height)
    dropped = int((df["blind"].fill_null(False) | (df["rule_reason"].is_not_null() if "rule_reason" in df.columns else False) | skipped).sum())
    unaskable = f", {int(skipped.sum())} skipped (could not be asked; ledger reason unaskable)" if skipped.any() else ""
    return (f"{df.height} items screened: {report.n_blind} blind-answerable, {rule} flagged by rule filters{unaskable}, "
            f"{df.height - dropped} kept")
