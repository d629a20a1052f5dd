"""``mmcurate screen``: the text-only panel + rule filters over a workspace's items.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import polars as pl

from curate.console import log_console, safe


def print_summary(report, df, console=None) -> None:
    """The member table (competence, bias, hit rate vs chance) and the kept/dropped counts."""
    from rich.table import Table

    console = console or log_console(stderr=True)
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
    console.print(table)
    from curate.audit import throughput_line

    for m in report.members:
        console.print(safe(throughput_line(m.name, m.throughput())), highlight=False)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {safe(w)}", highlight=False)
    rule = int(df["rule_reason"].is_not_null().sum()) if "rule_reason" in df.columns else 0
    skipped = df["screen_error"].is_not_null() if "screen_error" in df.columns else pl.Series([False] * df.height)
    dropped = int((df["blind"].fill_null(False) | (df["rule_reason"].is_not_null() if "rule_reason" in df.columns else False) | skipped).sum())
    unaskable = f", {int(skipped.sum())} skipped (could not be asked; ledger reason unaskable)" if skipped.any() else ""
    console.print(f"{df.height} items screened: {report.n_blind} blind-answerable, {rule} flagged by rule filters{unaskable}, "
                  f"{df.height - dropped} kept")


def register(app: typer.Typer) -> None:
    @app.command("screen")
    def screen_cmd(
        workdir: Path = typer.Argument(..., help="Workspace folder holding items.parquet."),
        panel: Optional[Path] = typer.Option(None, "--panel", help="panel.toml (default: the offline panel shipped in data/panel.toml)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Screen only the first N items."),
        members: Optional[str] = typer.Option(None, "--members", help="Comma-separated member names to run (default: all)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="SQLite response cache (default: one per user, shared by every workspace: $MMCURATE_CACHE/responses.sqlite, else ~/.cache/mmcurate/responses.sqlite)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Ask every panel member every question with the image withheld; write screened.parquet and the ledger."""
        from filters.screen import screen_workspace

        names = [m.strip() for m in members.split(",") if m.strip()] if members else None
        df, report = screen_workspace(workdir, panel, limit=limit, members=names, cache_path=cache, progress=progress)
        print_summary(report, df)
