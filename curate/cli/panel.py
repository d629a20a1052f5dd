"""``mmcurate panel calibrate``: choose each member's margin by its false-hit rate (``filters.calibrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from curate.cli._common import print_json
from curate.console import log_console, safe


def register(app: typer.Typer) -> None:
    panel_app = typer.Typer(name="panel", help="Panel files: calibrate members' margins on the shipped controls.", no_args_is_help=True)
    panel_app.command("calibrate")(calibrate_cmd)
    app.add_typer(panel_app, name="panel")


def calibrate_cmd(
    panel: Annotated[Optional[Path], typer.Option("--panel", help="panel.toml to calibrate (default: the packaged default panel; needs --out).")] = None,
    target_fpr: Annotated[float, typer.Option("--target-fpr", help="Highest false-hit rate allowed on the vision-needed controls.")] = 0.02,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="SQLite response cache (default: the per-user cache shared with screen and audit).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the calibrated panel here instead of rewriting --panel.")] = None,
    members: Annotated[Optional[str], typer.Option("--members", help="Comma-separated member names (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per run instead of the table.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Ask each member the vision-needed and MMLU controls (once, cached), choose the smallest margin whose
    false-hit rate is <= the target, and write margin, false_hit_rate and recall into the panel file."""
    from filters.cache import user_cache_path  # the per-user cache shared with screen and audit
    from filters.calibrate import calibrate_panel, write_calibration
    from filters.panel import load_panel

    src = _writable_source(panel, out, target_fpr)
    names = [m.strip() for m in members.split(",") if m.strip()] if members else None
    results = calibrate_panel(load_panel(src), cache_path=cache or user_cache_path(), target_fpr=target_fpr, members=names,
                              progress=progress and not as_json)
    written = write_calibration(Path(src), results, out)
    if as_json:
        print_json({"panel": str(written), "target_fpr": target_fpr, "members": [r.as_dict() for r in results]},
                   sort_keys=True, ensure_ascii=True)
        return
    print_calibration(results, written)


def _writable_source(panel: Path | None, out: Path | None, target_fpr: float) -> Path:
    """The panel file to read, after refusing to rewrite the packaged one and a target outside [0, 1)."""
    from curate.assets import asset_path
    from curate.errors import UserError
    from filters.calibrate import is_packaged

    src = panel or asset_path("panel.toml")
    if is_packaged(out or src):
        raise UserError(f"{src}: is the panel shipped with mmcurate and is not rewritten; write a calibrated copy with "
                        f"`mmcurate panel calibrate --out my_panel.toml`, then pass --panel my_panel.toml to screen and audit")
    if not 0.0 <= target_fpr < 1.0:
        raise UserError(f"--target-fpr {target_fpr}: must be in [0, 1), e.g. 0.02")
    return src


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def print_calibration(results, written: Path, console=None) -> None:
    """One row per member: margin, false-hit rate [95 % CI], recall [CI], kept single-pass hits, calls, questions."""
    console = console or log_console(stderr=True)
    t0 = results[0].target_fpr if results else 0.0
    table = Table(title=f"calibrated {safe(written)} (false-hit target {t0:.1%}, rotations {safe(results[0].rotations) if results else '-'})")
    for col in ("member", "margin", "false hits (vision) [95% CI]", "recall (MMLU) [95% CI]", "single-pass hits kept",
                "calls vs 1 pass", "asked / from cache"):
        table.add_column(col)
    for r in results:
        lo, hi = r.false_hit_ci
        rlo, rhi = r.recall_ci
        table.add_row(
            safe(r.member), "-" if r.margin is None else f"{r.margin:.3f}",
            f"{r.false_hits}/{r.n_vision} = {_pct(r.false_hit_rate)} [{_pct(lo)}, {_pct(hi)}]",
            f"{r.mmlu_hits}/{r.n_mmlu} = {_pct(r.recall)} [{_pct(rlo)}, {_pct(rhi)}]",
            f"{_pct(r.kept)} of {r.single_pass_hits}", f"{r.calls_ratio:.2f}x", f"{r.asked} / {r.cached}",
        )
    console.print(table)
    for r in results:
        if not r.depths:
            continue
        now = r.adaptive_depth if r.adaptive_depth is not None else max(d["adaptive_depth"] for d in r.depths)
        dt = Table(title=f"{safe(r.member)}: each adaptive_depth at the false-hit target (this panel: {now})")
        for col in ("adaptive_depth", "margin", "false hits (vision)", "recall (MMLU)", "single-pass hits kept", "calls vs 1 pass"):
            dt.add_column(col)
        for d in r.depths:
            dt.add_row(str(d["adaptive_depth"]), "-" if d["margin"] is None else f"{d['margin']:.3f}",
                       f"{d['false_hits']}/{r.n_vision} = {_pct(d['false_hit_rate'])}", f"{d['mmlu_hits']}/{r.n_mmlu} = {_pct(d['recall'])}",
                       _pct(d["kept"]), "-" if d["calls_ratio"] is None else f"{d['calls_ratio']:.2f}x")
        console.print(dt)
    for r in results:
        if r.note:
            console.print(f"{safe(r.member)}: {safe(r.note)}", highlight=False)
    console.print("recall = MMLU controls still hit at that margin / MMLU controls; kept = share of the one-ask hits at the "
                  "panel's old margin that are still hits", highlight=False)
