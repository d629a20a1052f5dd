"""The pipeline: ingest -> screen -> review -> balance -> export, resumable stage by stage.

A stage whose output file already exists (and whose inputs are older) is skipped, so
``mmcurate run`` after a crash or a Ctrl-C continues where it stopped; the model screening
stage resumes inside itself through its SQLite answer cache.

The pipeline prints nothing: :func:`pipeline_steps` yields what happened, stage by stage, as it
happens (a stage's start before it runs, its result after), and the caller shows it -- ``mmcurate run``
and ``mmcurate demo`` print tables (``curate/cli/pipeline.py``); a script can keep the results.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.assets import asset_path
from curate.config import Param, check_table, check_value, read_toml, suggest
from curate.errors import UserError

STAGES = ("ingest", "screen", "review", "balance", "export")


@dataclass(frozen=True)
class PipelineConfig:
    workdir: Path
    sources: tuple[Path, ...]
    open_to_mcq: bool = False
    seed: int = 0
    panel: Path | None = None  # None: the default offline panel
    screen_limit: int | None = None
    review_url: str | None = None
    review_project: str = "mmcurate review"  # the CLI's default title, so `mmcurate review status` finds it
    min_reviewers: int = 3
    total: int = 1500
    strict: bool = False
    export_dir: Path | None = None
    export_formats: tuple[str, ...] = ("hf",)


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


#: What a pipeline file accepts, section by section (``curate.config`` checks it: unknown keys and bad
#: values stop the run with the file, the parameter, the value and the fix).
SPEC: dict[str, dict[str, Param] | Param] = {
    "workdir": Param((str,)),
    "seed": Param((int,), low=0),
    "ingest": {"sources": Param((list,), each=str), "open_to_mcq": Param((bool,))},
    "screen": {"panel": Param((str,)), "limit": Param((int,), low=1)},
    "review": {"url": Param((str,)), "project": Param((str,)), "min_reviewers": Param((int,), low=1)},
    "balance": {"total": Param((int,), low=1), "strict": Param((bool,))},
    "export": {"to": Param((str,)), "formats": Param((list,), each=str)},
}
#: The keys of each section (kept for callers that list them).
KNOWN = {k: (set(v) if isinstance(v, dict) else None) for k, v in SPEC.items()}


def load_config(path: Path) -> PipelineConfig:
    """Read a pipeline TOML; unknown keys and values of the wrong type are errors (a typo must not
    silently change a run, and ``seed = "x"`` must not end in a traceback)."""
    raw = read_toml(path, "pipeline config")
    src = str(path)
    for key, value in raw.items():
        if key not in SPEC:
            raise UserError(f"{src}: unknown key {key!r}{suggest(key, SPEC)}; valid keys: {', '.join(SPEC)}")
        rule = SPEC[key]
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise UserError(f"{src}: {key} = {value!r} is invalid; write it as a [{key}] section")
            check_table(src, key, value, rule)
        else:
            check_value(src, "", key, value, rule)
    base = Path(path).resolve().parent
    if "workdir" not in raw:
        raise UserError(f"{path}: missing `workdir = \"...\"` (the workspace folder)")
    ing, scr, rev, bal, exp = (raw.get(k, {}) for k in ("ingest", "screen", "review", "balance", "export"))
    sources = tuple(_path(base, s) for s in ing.get("sources", []))
    if not sources:
        raise UserError(f"{path}: [ingest] sources is empty; list the benchmark files to read")
    return PipelineConfig(
        workdir=_path(base, raw["workdir"]),
        sources=sources,
        open_to_mcq=bool(ing.get("open_to_mcq", False)),
        seed=int(raw.get("seed", 0)),
        panel=_path(base, scr.get("panel")),
        screen_limit=scr.get("limit"),
        review_url=rev.get("url"),
        review_project=rev.get("project", "mmcurate review"),
        min_reviewers=int(rev.get("min_reviewers", 3)),
        total=int(bal.get("total", 1500)),
        strict=bool(bal.get("strict", False)),
        export_dir=_path(base, exp.get("to")),
        export_formats=tuple(exp.get("formats", ["hf"])),
    )


def demo_config(workdir: Path, *, panel: Path | None = None) -> PipelineConfig:
    demo = asset_path("demo")
    sources = tuple(sorted(demo.glob("*.tsv")) + sorted(demo.glob("*.jsonl")))
    return PipelineConfig(
        workdir=Path(workdir),
        sources=sources,
        total=60,
        panel=panel,
        export_dir=Path(workdir) / "export",
        export_formats=("hf", "tsv"),
    )


@dataclass(frozen=True)
class StageStarted:
    """Stage ``n`` (1-based) of :data:`STAGES` is about to run (or to find its output up to date)."""

    n: int
    stage: str


@dataclass(frozen=True)
class Note:
    """A line of plain text about the run: a skipped stage, what review pushed and pulled."""

    text: str


@dataclass(frozen=True)
class Ingested:
    """``curate.ingest.ingest_to_workspace``'s result (counts per source and the reasons rows were not kept)."""

    result: Any


@dataclass(frozen=True)
class Screened:
    """``filters.screen.screen_workspace``'s report and the screened table."""

    report: Any
    table: pl.DataFrame


@dataclass(frozen=True)
class Balanced:
    """``curate.balance.balance_workspace``'s result for the workspace ``workdir``."""

    result: Any
    workdir: Path


@dataclass(frozen=True)
class Finished:
    """The run is over (completed, stopped by ``until`` or waiting for reviewers): the ledger per stage
    (:func:`ledger_summary`; empty when nothing was recorded)."""

    workdir: Path
    ledger: pl.DataFrame


Event = StageStarted | Note | Ingested | Screened | Balanced | Finished


def _fresh(ws, stage: str, upstream: str) -> bool:
    """A stage file counts as done when it exists and is newer than the file it was made from."""
    return ws.has(stage) and (not ws.has(upstream) or ws.path(stage).stat().st_mtime >= ws.path(upstream).stat().st_mtime)


def pipeline_steps(cfg: PipelineConfig, *, fresh: bool = False, until: str | None = None) -> Iterator[Event]:
    """Run the stages in order, each skipped when its output is already up to date, yielding what happens.

    A generator: nothing runs until it is iterated, and each stage runs when the event before it
    has been consumed (so a caller can show the stage's heading before its progress bars).
    """
    if until is not None and until not in STAGES:
        raise UserError(f"--until {until!r}: expected one of {', '.join(STAGES)}")
    if fresh and cfg.workdir.exists():
        shutil.rmtree(cfg.workdir)
    from curate.workspace import Workspace

    ws = Workspace(cfg.workdir, create=True)
    steps = {"ingest": _ingest, "screen": _screen, "review": _review, "balance": _balance, "export": _export}
    for n, stage in enumerate(STAGES, 1):
        yield StageStarted(n, stage)
        if (yield from steps[stage](cfg, ws)) is False:
            break
        if stage == until:
            break
    yield Finished(cfg.workdir, ledger_summary(ws.ledger()))


def run_pipeline(cfg: PipelineConfig, *, fresh: bool = False, until: str | None = None) -> list[Event]:
    """:func:`pipeline_steps` run to the end; its events as a list (for scripts that show nothing)."""
    return list(pipeline_steps(cfg, fresh=fresh, until=until))


def _ingest(cfg: PipelineConfig, ws) -> Iterator[Event]:
    from curate.ingest import ingest_to_workspace

    if ws.has("items"):
        yield Note("items.parquet exists: skipped (--fresh starts over)")
        return
    yield Ingested(ingest_to_workspace(cfg.sources, cfg.workdir, open_to_mcq=cfg.open_to_mcq, seed=cfg.seed))


def _screen(cfg: PipelineConfig, ws) -> Iterator[Event]:
    from filters.screen import screen_workspace

    if _fresh(ws, "screened", "items"):
        yield Note("screened.parquet is up to date: skipped")
        return
    df, report = screen_workspace(cfg.workdir, cfg.panel, limit=cfg.screen_limit)
    yield Screened(report, df)


def _review(cfg: PipelineConfig, ws) -> Iterator[Event]:
    """Push survivors and pull verdicts when a Label Studio server is configured or running; returns False
    (the run stops) while items wait for reviewers."""
    from annotation.server import recorded_url

    url = cfg.review_url or recorded_url(cfg.workdir)
    if url is None:
        note = "reviewed.parquet from an earlier pull is used" if ws.has("reviewed") else "balance uses the screened items"
        yield Note("no Label Studio server configured ([review] url) or running (`mmcurate review serve`): "
                   f"human review skipped; {note}")
        return None
    from annotation.client import connect, push_workspace
    from annotation.verdicts import pull

    client = connect(cfg.workdir, url)
    pushed = push_workspace(cfg.workdir, client, cfg.review_project, reviewers=cfg.min_reviewers)
    yield Note(f"pushed to {url}: {pushed.pushed} new tasks, {pushed.already} already there")
    result = pull(cfg.workdir, client, cfg.review_project, min_reviewers=cfg.min_reviewers)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    yield Note(f"pulled verdicts -> reviewed.parquet: {counts}")
    waiting = result.counts.get("quarantined", 0)  # awaiting review, incomplete verdicts, not pushed
    if waiting:
        yield Note(f"{waiting} items have no complete verdict yet (fewer than {cfg.min_reviewers} reviewers): the pipeline "
                   "stops here; run it again when the reviewers are done")
        return False
    return None


def _balance(cfg: PipelineConfig, ws) -> Iterator[Event]:
    from curate.balance import balance_workspace

    upstream = ws.newest()
    if _fresh(ws, "balanced", upstream):
        yield Note("balanced.parquet is up to date: skipped")
        return
    yield Balanced(balance_workspace(cfg.workdir, total=cfg.total, seed=cfg.seed, strict=cfg.strict), cfg.workdir)


def _export(cfg: PipelineConfig, ws) -> Iterator[Event]:
    from curate.export import export_workspace

    if cfg.export_dir is None:
        yield Note("no [export] to = ...: export skipped")
        return
    for fmt in cfg.export_formats:
        stage, path = export_workspace(cfg.workdir, cfg.export_dir / fmt, fmt=fmt, overwrite=True)
        yield Note(f"{stage}.parquet -> {path} ({fmt})")


def ledger_summary(ledger: pl.DataFrame) -> pl.DataFrame:
    """Per ledger stage (in the ledger's order): rows kept, dropped and quarantined, and the three most
    frequent reasons rows were not kept (``"reason n, ..."``, ties by name so the table is the same every run;
    ``"-"`` when there are none)."""
    rows = []
    for stage in ledger["stage"].unique(maintain_order=True).to_list():
        part = ledger.filter(pl.col("stage") == stage)
        counts = dict(part.group_by("status").len().iter_rows())
        reasons = part.filter(pl.col("reason").is_not_null() & (pl.col("status") != "kept")).group_by("reason").len().sort(["len", "reason"], descending=[True, False]).head(3)
        rows.append({"stage": stage, **{s: counts.get(s, 0) for s in ("kept", "dropped", "quarantined")},
                     "top_reasons": ", ".join(f"{r} {n}" for r, n in reasons.iter_rows()) or "-"})
    schema = {"stage": pl.String, "kept": pl.Int64, "dropped": pl.Int64, "quarantined": pl.Int64, "top_reasons": pl.String}
    return pl.DataFrame(rows, schema=schema)
