"""Item difficulty from vision models' results: solver counts, MMStar's bins and the ``difficulty`` command.

MMStar sorted its items by how many of 16 LVLMs solve them (easy 12-16, moderate 8-11, hard
4-7, tough 0-3); the balancer uses the same bins to keep a benchmark's difficulty mix. Why its
own module: the bins are a pure function of counts (:func:`difficulty_bin`, also used by
:mod:`curate.item_stats` so ``n_solvers``/``n_models``/``difficulty`` never disagree), while
:func:`write_difficulty` is the workspace command that adds them to the newest stage file.
Result files are read, matched to items and scored by :mod:`curate.results`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl

from curate.errors import UserError
from curate.results import Predictions, match_items, score
from curate.workspace import workspace_command

#: MMStar's bins over 16 models (easy 12-16 solvers, moderate 8-11, hard 4-7, tough 0-3),
#: as lower bounds on the solver fraction so they scale to any number of models.
DIFFICULTY_BINS: tuple[tuple[str, int], ...] = (("easy", 12), ("moderate", 8), ("hard", 4), ("tough", 0))
DIFFICULTY_COLUMNS = ("n_solvers", "n_models", "difficulty")


def difficulty_bin(n_solvers: int, n_models: int) -> str:
    """MMStar's bin for an item solved by ``n_solvers`` of ``n_models`` vision models.

    The 16-model thresholds (12, 8, 4) scale to ``n`` as solver fractions 3/4, 1/2, 1/4.

    >>> [difficulty_bin(s, 16) for s in (16, 12, 11, 8, 7, 4, 3, 0)]
    ['easy', 'easy', 'moderate', 'moderate', 'hard', 'hard', 'tough', 'tough']
    >>> difficulty_bin(3, 4), difficulty_bin(2, 4), difficulty_bin(1, 4), difficulty_bin(0, 4)
    ('easy', 'moderate', 'hard', 'tough')
    """
    if n_models <= 0 or not 0 <= n_solvers <= n_models:
        raise ValueError(f"need 0 <= n_solvers <= n_models and n_models > 0, got {n_solvers}/{n_models}")
    for name, low in DIFFICULTY_BINS:
        if 16 * n_solvers >= low * n_models:
            return name
    return "tough"  # unreachable: the last bound is 0


def solver_counts(runs: list[Predictions], *, matcher: str = "mmstar") -> pl.DataFrame:
    """Per item key: how many of the runs solved it (``n_solvers``), of ``n_models``, and its bin."""
    if not runs:
        raise UserError("difficulty needs prediction files of at least one vision model")
    if len(runs) < 4:
        warnings.warn(f"only {len(runs)} model(s): difficulty bins are coarse (MMStar used 16)", stacklevel=2)
    hits = pl.concat([score(r, matcher=matcher).select("key", pl.col("hit").cast(pl.Int32)) for r in runs])
    counts = hits.group_by("key").agg(pl.col("hit").sum().alias("n_solvers"), pl.len().cast(pl.Int32).alias("n_models"))
    return counts.with_columns(
        pl.struct("n_solvers", "n_models").map_elements(lambda r: difficulty_bin(r["n_solvers"], r["n_models"]), return_dtype=pl.String).alias("difficulty")
    ).sort("key")


def add_difficulty(items: pl.DataFrame, counts: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Join solver counts onto an items table (keys matched by :func:`curate.results.match_items`).

    Replaces earlier difficulty columns. Returns the new table and how many items matched;
    unmatched items get nulls (the balancer treats them as unknown difficulty).
    """
    by_item = match_items(counts["key"], items).join(counts, on="key", how="inner").drop("key")
    base = items.drop([c for c in DIFFICULTY_COLUMNS if c in items.columns])
    out = base.join(by_item, on="item_id", how="left")
    matched = int(out["difficulty"].is_not_null().sum())
    if matched == 0:
        raise UserError(f"no prediction key (e.g. {counts['key'][0]!r}) matches an item_id or orig_index in the workspace")
    return out, matched


@workspace_command("difficulty")
def write_difficulty(workdir: str | Path, runs: list[Predictions], *, matcher: str = "mmstar", source: str | None = None) -> dict:
    """Count solvers over ``runs`` and add ``n_solvers``/``n_models``/``difficulty`` to the newest stage file.

    The stage file is rewritten atomically (``Workspace.write``), so the balancer reads the
    bins from the same table it balances. ``source`` restricts matching to one source when
    the predictions are keyed by that source's own indices.
    """
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    base = ws.annotation_base("difficulty")  # read once: annotate joins into this same table
    items = base[1]
    counts = solver_counts(runs, matcher=matcher)
    if source is not None:
        if source not in set(items["source"].to_list()):
            raise UserError(f"--source {source!r}: no such source in {ws.root} (sources: {sorted(set(items['source'].to_list()))})")
        part, rest = items.filter(pl.col("source") == source), items.filter(pl.col("source") != source)
        part, matched = add_difficulty(part, counts)
        table = pl.concat([part, rest], how="diagonal_relaxed").sort("row", "item_id", nulls_last=True)
        table = items.select("item_id").join(table, on="item_id", how="left")  # keep the original order
    else:
        table, matched = add_difficulty(items, counts)
    stage, path = ws.annotate("difficulty", table.select("item_id", *DIFFICULTY_COLUMNS), base=base)
    bins = {name: int((table["difficulty"] == name).sum()) for name, _ in DIFFICULTY_BINS}
    known = set(table["item_id"].to_list()) | set(table["orig_index"].to_list())
    unused = sum(1 for k in counts["key"].to_list() if k not in known)
    if unused:
        warnings.warn(f"{unused} predicted item(s) are not in the workspace (dropped at ingest or another source); ignored", stacklevel=2)
    return {
        "stage": stage, "path": str(path), "n_models": len(runs), "matched": matched,
        "unmatched": table.height - matched, "unused_predictions": unused, "bins": bins,
    }
