"""What a workspace holds: rows per stage file and the ledger's counts (``mmcurate status``).

A pure read of the workspace, kept out of the command line so a notebook or another tool gets the
same figures the command prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from curate.workspace import STAGE_FILES, Workspace


@dataclass(frozen=True)
class WorkspaceStatus:
    """``stage_rows``: rows per stage file present; ``ledger``: the whole ledger; ``counts``: ledger rows per
    stage / source file / status / reason (largest first within a status); ``not_simply_kept``: the rows dropped,
    quarantined, or kept with a reason (changed or flagged)."""

    stage_rows: dict[str, int]
    ledger: pl.DataFrame
    counts: pl.DataFrame
    not_simply_kept: pl.DataFrame


def workspace_status(ws: Workspace) -> WorkspaceStatus:
    """Count without reading the stage tables (row counts come from the parquet footers)."""
    stage_rows = {
        stage: pl.scan_parquet(ws.path(stage)).select(pl.len()).collect().item()
        for stage in STAGE_FILES if ws.has(stage)
    }
    ledger = ws.ledger()
    counts = (
        ledger.group_by("stage", "source_file", "status", "reason")
        .len()
        .sort(["stage", "source_file", "status", "len", "reason"], descending=[False, False, False, True, False], nulls_last=True)
    )
    bad = ledger.filter((pl.col("status") != "kept") | pl.col("reason").is_not_null())
    return WorkspaceStatus(stage_rows, ledger, counts, bad)
