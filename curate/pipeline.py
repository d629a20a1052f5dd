"""The pipeline: ingest -> screen -> review -> balance -> export, resumable stage by stage.

A stage whose output file already exists (and whose inputs are older) is skipped, so
``mmcurate run`` after a crash or a Ctrl-C continues where it stopped; the model screening
stage resumes inside itself through its SQLite answer cache.
"""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from curate.assets import asset_path
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
    review_project: str = "mmcurate"
    min_reviewers: int = 3
    total: int = 1500
    strict: bool = False
    export_dir: Path | None = None
    export_formats: tuple[str, ...] = ("hf",)
    extra: dict = field(default_factory=dict, hash=False)


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


KNOWN = {
    "workdir": None,
    "seed": None,
    "ingest": {"sources", "open_to_mcq"},
    "screen": {"panel", "limit"},
    "review": {"url", "project", "min_reviewers"},
    "balance": {"total", "strict"},
    "export": {"to", "formats"},
}


def load_config(path: Path) -> PipelineConfig:
    """Read a pipeline TOML; unknown keys are errors (a typo must not silently change a run)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: cannot read pipeline config ({exc})") from exc
    for key, value in raw.items():
        if key not in KNOWN:
            raise UserError(f"{path}: unknown key {key!r}; expected one of {sorted(KNOWN)}")
        if isinstance(value, dict):
            bad = set(value) - (KNOWN[key] or set())
            if bad:
                raise UserError(f"{path}: unknown key(s) {sorted(bad)} in [{key}]; expected {sorted(KNOWN[key] or [])}")
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
        review_project=rev.get("project", "mmcurate"),
        min_reviewers=int(rev.get("min_reviewers", 3)),
        total=int(bal.get("total", 1500)),
        strict=bool(bal.get("strict", False)),
        export_dir=_path(base, exp.get("to")),
        export_formats=tuple(exp.get("formats", ["hf"])),
    )


def demo_config(workdir: Path) -> PipelineConfig:
    demo = asset_path("demo")
    sources = tuple(sorted(demo.glob("*.tsv")) + sorted(demo.glob("*.jsonl")))
    return PipelineConfig(
        workdir=Path(workdir),
        sources=sources,
        total=60,
        panel=None,
        export_dir=Path(workdir) / "export",
        export_formats=("hf", "tsv"),
    )


def run_pipeline(cfg: PipelineConfig, *, fresh: bool = False, until: str | None = None, console: Console | None = None) -> None:
    console = console or Console()
    if until is not None and until not in STAGES:
        raise UserError(f"--until {until!r}: expected one of {', '.join(STAGES)}")
    if fresh and cfg.workdir.exists():
        shutil.rmtree(cfg.workdir)
    from curate.ingest import ingest_to_workspace
    from curate.workspace import Workspace

    ws = Workspace(cfg.workdir, create=True)
    console.rule("[bold]1. ingest")
    if ws.has("items"):
        console.print("items.parquet exists: skipped (use --fresh to start over)")
    else:
        result = ingest_to_workspace(cfg.sources, cfg.workdir, open_to_mcq=cfg.open_to_mcq, seed=cfg.seed)
        from curate.cli_ingest import ingest_tables

        for table in ingest_tables(result):
            console.print(table)
        console.print(f"  -> {result.items} items in {ws.path('items')}")
    if until == "ingest":
        return
