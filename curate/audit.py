"""Audit a benchmark for vision dependence: how much of it a text-only panel answers blind.

``audit`` = ingest -> screen (the text-only panel) -> rule filters -> summary -> HTML report +
``summary.json``. This module is only that orchestration; each step it calls is a module of
its own, so a reader finds a figure where it is computed:

* :mod:`curate.audit_summary` -- :func:`~curate.audit_summary.summarize`, a pure function of a
  screened table (a workspace that was already screened is audited without asking any model
  again), and the one-line texts that quote a summary (``headline``);
* :mod:`curate.stats` -- Wilson intervals, chance levels and the share beyond chance;
* :mod:`curate.throughput` -- members' throughput and the MMStar-scale projection;
* :mod:`curate.sampling` -- the seeded, source-stratified ``--sample``;
* :mod:`curate.report` -- the HTML page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from curate.audit_summary import (
    RULE_CHECKS,
    SCREEN_COLUMNS,
    compare_summaries,
    member_names,
    summarize,
)
from curate.errors import UserError
from curate.report import write_report
from curate.sampling import sample_items

__all__ = [
    # the orchestration (this module)
    "apply_rules", "audit", "audit_table", "load_items", "resolve_panel", "screen_items",
]


def load_items(sources: Iterable[str | Path], *, workdir: Path) -> pl.DataFrame:
    """Items to audit: a workspace folder (its newest stage), a stage parquet, or benchmark files to ingest.

    Benchmark files are ingested into ``workdir`` so the report folder keeps the exact items
    (and the ledger of what ingest dropped) that the figures are about.
    """
    from curate.workspace import Workspace, read_parquet_checked

    sources = [Path(s) for s in sources]
    if not sources:
        raise UserError("no SOURCE given; pass benchmark files or a workspace folder")
    if len(sources) == 1 and sources[0].is_dir() and any((sources[0] / f).is_file() for f in ("items.parquet", "screened.parquet")):
        ws = Workspace(sources[0])
        return ws.read(ws.newest())
    if len(sources) == 1 and sources[0].suffix == ".parquet" and sources[0].name in ("items.parquet", "screened.parquet", "reviewed.parquet", "balanced.parquet"):
        return read_parquet_checked(sources[0])
    from curate.ingest import ingest

    return ingest(sources, out=workdir)


def screen_items(
    items: pl.DataFrame,
    panel: Any,
    *,
    cache_path: Path,
    limit: int | None = None,
    members: list[str] | None = None,
    progress: bool = True,
    rules: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """Ask the text-only panel about every item (``filters.screen``); returns the table and the screen report.

    The screen report carries each member's competence on text-answerable controls, which the
    audit shows beside its verdicts. A table that is already screened is returned as is.
    ``rules``: let the screen run the rule filters too (``audit --no-rules`` runs none).
    """
    if all(c in items.columns for c in SCREEN_COLUMNS) and member_names(items):
        return items, None
    try:
        from filters.screen import screen_with_report
    except ImportError as exc:
        raise UserError(f"the screening stage (filters/screen.py) is not available in this install ({exc}); audit a screened workspace instead") from exc
    table, report = screen_with_report(items, panel, cache_path=cache_path, limit=limit, members=members, progress=progress, rules=rules)
    return table, report.as_dict(timing=True)


def apply_rules(table: pl.DataFrame, panel_path: str | Path | None = None) -> pl.DataFrame:
    """Run the rule filters (answer leak, duplicates, malformed) unless their columns are present."""
    if "rule_drop" in table.columns or any(f"{c}_flag" in table.columns for c in RULE_CHECKS):
        return table
    from filters.rules import RuleConfig, run_rules

    config = RuleConfig.from_toml(panel_path) if panel_path is not None else RuleConfig()
    return run_rules(table, config)


def resolve_panel(panel: Any) -> Any:
    """A Panel object, a path to panel.toml, or None for the default panel."""
    from filters.panel import Panel, load_panel

    if isinstance(panel, Panel):
        return panel
    return load_panel(panel)


def _panel_info(panel: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for attr in ("name", "source", "config_hash"):
        if hasattr(panel, attr):
            info["hash" if attr == "config_hash" else attr] = getattr(panel, attr)
    for attr in ("margin", "rotations"):
        if hasattr(panel, attr):
            info[attr] = getattr(panel, attr)
    if getattr(panel, "adaptive_depth", None) is not None:
        info["adaptive_depth"] = panel.adaptive_depth
    if hasattr(panel, "members"):
        info["models"] = {m.name: _model_info(m) for m in panel.members}
    return info


def _model_info(member: Any) -> dict[str, Any]:
    """What the report shows of a member: its model and how it is asked, its margin and calibrated error rates."""
    info = {"backend": member.backend, "model": member.model, "method": member.method, "shots": member.shots}
    for attr in ("margin", "false_hit_rate", "recall"):
        if getattr(member, attr, None) is not None:
            info[attr] = getattr(member, attr)
    return info


def audit_table(
    sources: Sequence[str | Path],
    *,
    panel: Any,
    workdir: Path,
    limit: int | None = None,
    members: list[str] | None = None,
    rules: bool = True,
    progress: bool = True,
    sample: int | None = None,
    seed: int = 0,
    cache_path: str | Path | None = None,
) -> tuple[pl.DataFrame, dict[str, Any], int | None]:
    """Ingest + screen + rules for one benchmark; returns the table, panel info and threshold.

    ``cache_path``: the response cache (default: the per-user one, ``filters.cache.user_cache_path``,
    shared with ``screen`` in every workspace, so a stopped audit resumes and a question seen
    before is not asked again).
    """
    items = load_items(sources, workdir=workdir)
    sampled = None
    if sample is not None:
        items, sampled = sample_items(items, sample, seed=seed)
    if limit is not None:
        items = items.head(limit)
    already = all(c in items.columns for c in SCREEN_COLUMNS) and bool(member_names(items))
    threshold = None
    info: dict[str, Any] = {}
    if already:
        table = items
    else:
        panel_obj = resolve_panel(panel)
        info = _panel_info(panel_obj)
        workdir.mkdir(parents=True, exist_ok=True)
        if cache_path is None:
            from filters.cache import user_cache_path

            cache_path = user_cache_path()
        table, report = screen_items(items, panel_obj, cache_path=Path(cache_path), members=members, progress=progress, rules=rules)
        if report is not None:
            info["screen_report"] = report
            threshold = report.get("threshold")
    if rules:
        panel_path = panel if isinstance(panel, (str, Path)) else None
        table = apply_rules(table, panel_path)
    if not already and (workdir / "items.parquet").is_file():
        from curate.workspace import Workspace

        Workspace(workdir).write("screened", table)  # the exact table the report describes
    if sampled is not None:
        info["sample"] = sampled
    return table, info, threshold


def audit(
    sources: Sequence[str | Path],
    *,
    panel: Any = None,
    report_dir: str | Path,
    compare: Sequence[str | Path] | None = None,
    limit: int | None = None,
    members: list[str] | None = None,
    rules: bool = True,
    progress: bool = True,
    title: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    cache_path: str | Path | None = None,
    results: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Screen ``sources`` with ``panel`` and write ``report_dir/report.html`` + ``summary.json``.

    ``sources``: benchmark files (any format ingest reads), a workspace folder, or a stage
    parquet; an already screened table is not screened again. ``panel``: a Panel, a path to
    panel.toml or None (the default offline panel). ``compare``: a second benchmark audited
    the same way and shown side by side. ``sample``: audit a seeded random sample of that many
    items, stratified by source (see ``sample_items``). ``cache_path``: the response cache
    (default: the per-user one). ``results``: model result files (VLMEvalKit) for the
    ``item_stats`` section (``curate.item_stats.audit_item_stats``). Returns the summary dict (also in summary.json).
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    table, info, threshold = audit_table(
        sources, panel=panel, workdir=report_dir / "workspace", limit=limit, members=members, rules=rules, progress=progress, sample=sample, seed=seed,
        cache_path=cache_path,
    )
    label = _label(sources)
    sampled = info.pop("sample", None)
    summary = summarize(table, threshold=threshold, panel_info=info, label=label)
    if sampled:
        summary["sample"] = sampled
    if compare:
        other, info2, threshold2 = audit_table(
            compare, panel=panel, workdir=report_dir / "workspace_compare", limit=limit, members=members, rules=rules, progress=progress,
            sample=sample, seed=seed, cache_path=cache_path,
        )
        sampled2 = info2.pop("sample", None)
        summary["compare"] = compare_summaries(summary, summarize(other, threshold=threshold2, panel_info=info2, label=_label(compare)))
        if sampled2:
            summary["compare"]["right"]["sample"] = sampled2
    if results:
        from curate.item_stats import audit_item_stats

        summary["item_stats"] = audit_item_stats(table, results)
    write_report(summary, report_dir, title=title)
    return summary


def _label(sources: Sequence[str | Path]) -> str:
    names = [Path(s).name for s in sources]
    return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
