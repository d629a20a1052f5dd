"""``mmcurate demo`` and ``mmcurate run``: the stages chained, resuming from the last finished one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.console import log_console

out = log_console()  # a log file gets wide tables, not tables wrapped at 80 columns


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
    from curate.pipeline import demo_config, run_pipeline

    if quick and panel is None:
        panel = asset_path("panel_tiny.toml")
    run_pipeline(demo_config(workdir, panel=panel), fresh=fresh, console=out)


def run_cmd(
    config: Annotated[Path, typer.Argument(help="Pipeline TOML: [ingest] sources, [screen] panel, [review], [balance], [export].")],
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over: delete the workspace's stage files first.")] = False,
    until: Annotated[Optional[str], typer.Option(help="Stop after this stage (ingest, screen, review, balance, export).")] = None,
) -> None:
    """ingest -> screen -> review -> balance -> export, resuming from the last finished stage."""
    from curate.pipeline import load_config, run_pipeline

    run_pipeline(load_config(config), fresh=fresh, until=until, console=out)
