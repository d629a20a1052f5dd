"""A seeded, source-stratified random sample of items (``audit --sample N``).

Why its own module: sampling is a pure function of an items table and a seed, used by the audit
before anything is screened; keeping it apart from the orchestration keeps it testable and
reusable (``bench/``) without loading the screen.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from curate.allocation import largest_remainder
from curate.errors import UserError


def sample_items(items: pl.DataFrame, n: int, *, seed: int = 0) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A seeded random sample of ``n`` items, stratified by source (proportional, largest remainder).

    Why: a whole benchmark can take hours to screen on a small machine, and its first rows are
    no estimate (SEED-Bench is ordered by category). A random sample of a few hundred items
    gives the blind-answerable share with a Wilson interval in minutes. Rows keep their
    original order; the same ``items``, ``n`` and ``seed`` give the same sample.
    """
    if n < 1:
        raise UserError(f"--sample {n}: must be >= 1")
    total = items.height
    if n >= total:
        return items, {"n": total, "of": total, "seed": seed, "by_source": dict(items.group_by("source").len().sort("source").iter_rows())}
    sizes = items.group_by("source").len().sort("source")
    alloc = largest_remainder(dict(sizes.iter_rows()), n)
    indexed = items.with_row_index("__pos")
    parts = []
    for i, (src, k) in enumerate(sizes.iter_rows()):
        if alloc[src]:
            part = indexed.filter(pl.col("source").eq_missing(src))  # a null source is a stratum too
            parts.append(part.sample(n=alloc[src], seed=seed + i, shuffle=False))
    out = pl.concat(parts).sort("__pos").drop("__pos")
    return out, {"n": out.height, "of": total, "seed": seed, "by_source": {s: a for s, a in alloc.items() if a}}
