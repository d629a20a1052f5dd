"""One largest-remainder rule (issue #14): the audit's ``--sample`` and keep-ranking quotas share it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.allocation import largest_remainder
from curate.results import read_predictions
from curate.sampling import sample_items

RESULT = Path(__file__).parent / "data" / "mmstar" / "vila_13b_MMStar.xlsx"


def test_largest_remainder_rounds_by_the_largest_fractions_and_breaks_ties_by_name():
    assert largest_remainder({"a": 5, "b": 3, "c": 2}, 7) == {"a": 4, "b": 2, "c": 1}  # 3.5, 2.1, 1.4: a gets the unit
    assert largest_remainder({"b": 1, "a": 1, "c": 1}, 2) == {"b": 1, "a": 1, "c": 0}  # a tie: the first names win
    assert list(largest_remainder({"b": 1, "a": 1}, 1)) == ["b", "a"]  # the order of the sizes is kept
    assert largest_remainder({"x": 1, None: 1}, 1) == {"x": 0, None: 1}  # a null stratum sorts first
    assert largest_remainder({"a": 0, "b": 0}, 3) == {"a": 0, "b": 0}


def test_audit_sample_takes_the_largest_remainder_of_each_source():
    """MMStar's six categories as sources: the sample's per-source counts are the rule's, for every n."""
    items = read_predictions(RESULT).table.select(pl.col("key").alias("item_id"), pl.col("category").alias("source"))
    sizes = dict(items.group_by("source").len().sort("source").iter_rows())
    for n in (1, 5, 37, 250, 1499):
        sample, info = sample_items(items, n, seed=1)
        want = {s: k for s, k in largest_remainder(sizes, n).items() if k}
        assert info["by_source"] == want
        assert dict(sample.group_by("source").len().iter_rows()) == want
        assert sum(want.values()) == n == sample.height
