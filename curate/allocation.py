"""Proportional allocation of a whole number of items over groups (largest remainder, Hamilton's method).

Why its own module: the audit's stratified sample (:mod:`curate.sampling`) and the keep-ranking
subset's per-stratum and per-cell quotas (:mod:`curate.subsets`) share ``n`` items over groups in
proportion to their sizes, and must round the same way -- one rule, written once, so a stratum
never gets one item more in one command than in another. Pure Python, imports nothing.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping


def largest_remainder(sizes: Mapping[Hashable, int], n: int) -> dict:
    """Share ``n`` over the keys of ``sizes`` in proportion to their values, in whole numbers.

    Each key gets the floor of its exact share ``n * size / total``; the units left over go one
    each to the keys with the largest fractional parts. Ties (equal fractions) go to the key
    that sorts first: ``None`` before any other key, then by ``str(key)`` -- a fixed order, so
    the same sizes always give the same allocation whatever their insertion order. All zeros
    when the sizes sum to zero. The result sums to ``n`` (for ``0 <= n`` and a positive total)
    and keeps the keys in the order of ``sizes``.

    >>> largest_remainder({"a": 1, "b": 1, "c": 1}, 2)
    {'a': 1, 'b': 1, 'c': 0}
    >>> largest_remainder({"x": 5, None: 3, "y": 2}, 2)
    {'x': 1, None: 1, 'y': 0}
    >>> largest_remainder({"b": 1, None: 1}, 1)
    {'b': 0, None: 1}
    """
    total = sum(sizes.values())
    if total == 0:
        return {k: 0 for k in sizes}
    exact = {k: n * v / total for k, v in sizes.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(sizes, key=lambda k: (-(exact[k] - out[k]), k is not None, "" if k is None else str(k)))[: n - sum(out.values())]:
        out[k] += 1
    return out
