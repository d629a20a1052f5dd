"""Statistics of mmcurate: Wilson intervals, chance levels and the share beyond chance.

Pure functions of numbers and tables (no workspace, no panel, no I/O), part of the foundation so
the panel's control accuracy (``filters.competence``), ``panel calibrate``, the audit summary,
``bench/`` and the tests compute every interval with the one :func:`wilson_interval`.

Why confidence intervals and chance levels everywhere: a "12 % blind-answerable" figure
means little on 40 items, and nothing without the share the same panel would reach by luck.
Every share comes with its 95 % Wilson interval and, when the screen recorded each item's
chance (``blind_chance``), the share beyond chance with its own 95 % interval (below).
``chance_blind`` (uniform guessers under the panel's rule) stays in the JSON for old readers;
the report no longer quotes it: a chance-corrected, rotating panel is no uniform guesser.

Blind-answerable *beyond chance* (``beyond_chance``, the report's headline). A panel calls
some items blind by luck: a member whose hit rule accepts the key when it happens to be the
option it likes. The screen records, per item, ``blind_chance`` = e_i, the probability the
panel would call the item blind if the key were a uniformly random option (the members' own
outputs and hit rules, one random key shared by all members). The classical correction for
guessing (knowledge-or-random-guessing) says an item is blind for a reason with probability
R, and otherwise blind by chance with probability e_i, so P(blind_i) = p_i(R) = e_i + R (1 - e_i).
With B the observed blind share and E the mean e_i over n items, R = (B - E) / (1 - E),
equivalently sum(x_i - e_i) / sum(1 - e_i). When items differ (some known, some not), R is the
(1 - e_i)-weighted mean of the items' own R_i: an item that chance alone calls blind half the
time carries half the information about knowledge of one that chance never calls blind.

Its 95 % interval is a score (Wilson-type) interval from the item-level variance: the R for
which the observed blind count is within z = 1.96 standard deviations of its expectation,

    (sum(x_i - e_i) - R sum(a_i))^2 <= z^2 V(R),   a_i = 1 - e_i,
    V(R) = sum p_i(R)(1 - p_i(R)) + R^2 sum (a_i - mean a)^2,

a quadratic inequality in R solved in closed form (:func:`beyond_chance_stats`). The first term
of V is each item's own Bernoulli variance under R; the second is the spread of the chance
levels across items, which matters when the items are a sample (``--sample``) of a pool with
mixed option counts and vanishes when every item has the same chance. Why a score interval and
not estimate +- z * SE: the share is often 0 or 1 in a group of 10 items, where the plug-in SE is
0 and the Wald interval collapses to a point; with e_i = 0 this interval is exactly Wilson's
(the one every other share carries) and with one chance level for all items it is Wilson's
interval mapped through (b - e) / (1 - e). The point estimate and both bounds are clipped to
[0, 1] (a panel below chance knows nothing, it does not know a negative share); ``estimate``
keeps the unclipped value. Deterministic: no resampling.
"""

from __future__ import annotations

import functools
import math
import statistics
from fractions import Fraction
from collections.abc import Sequence
from typing import Any

import polars as pl

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile
#: The screen's per-item chance of a blind verdict (see the module docstring).
BLIND_CHANCE = "blind_chance"


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for ``k`` successes of ``n`` (None when ``n`` is 0).

    Wilson, not the normal approximation, because blind shares are often near 0 where the
    normal interval goes negative.
    """
    if n <= 0:
        return None
    z = Z95 if confidence == 0.95 else statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    lo, hi = wilson_interval(int(k), int(n), z=z)
    return (round(lo, 4), round(hi, 4))


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (stays inside [0, 1], sane for small n).

    Unrounded; (0, 1) when ``n`` is 0 (nothing observed: every rate is possible). ``z`` is the
    normal quantile (default 95 %)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@functools.lru_cache(maxsize=1024)
def blind_by_chance(n_options: int, n_members: int, threshold: int) -> float:
    """P(more than ``threshold`` of ``n_members`` guessers hit) for one ``n_options`` item.

    The blind share a panel of uniform guessers would produce (``chance_blind``). Cached: it is
    asked once per item and group, and a few (options, members) pairs cover a whole benchmark.
    """
    if n_options < 1 or n_members < 1:
        return float("nan")
    # the binomial tail summed in exact rationals: correctly rounded, and no scipy.stats import
    # (seconds at start-up, more than the whole summary of a small audit)
    p = Fraction(1, n_options)
    return float(sum(math.comb(n_members, j) * p**j * (1 - p) ** (n_members - j)
                     for j in range(max(threshold + 1, 0), n_members + 1)))


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def beyond_chance_stats(observed: Sequence[float], chance: Sequence[float], z: float = Z95) -> dict[str, Any] | None:
    """Blind-answerable beyond chance, R = sum(x - e) / sum(1 - e), with its 95 % score interval.

    ``observed``: 0/1 verdicts x_i; ``chance``: each item's e_i (probability of that verdict
    if the key were random). The formula and why this interval are in the module docstring.
    Returns ``share``, ``lo``, ``hi`` (clipped to [0, 1]), ``estimate`` (unclipped),
    ``observed`` (B), ``chance`` (E) and ``n``; None when there is nothing to correct for
    (no items, or every item blind by chance alone).
    """
    n = len(observed)
    if n == 0 or n != len(chance):
        return None
    a = [1.0 - float(e) for e in chance]
    big_a = math.fsum(a)
    if big_a <= 1e-12:
        return None
    d = math.fsum(float(x) - float(e) for x, e in zip(observed, chance))
    sum_ae = math.fsum(ai * float(e) for ai, e in zip(a, chance))
    sum_aa = math.fsum(ai * ai for ai in a)
    # (d - R A)^2 - z^2 V(R) <= 0 with V(R) = sum_ae + R (sum_aa - sum_ae) - R^2 A^2 / n: alpha R^2 - beta R + gamma <= 0
    alpha = big_a * big_a * (1.0 + z * z / n)
    beta = 2.0 * big_a * d + z * z * (sum_aa - sum_ae)
    gamma = d * d - z * z * sum_ae
    estimate = d / big_a
    disc = beta * beta - 4.0 * alpha * gamma
    if disc < 0:  # observed far below chance: no R in [0, 1] fits; the nearest is 0
        lo = hi = _clip01(estimate)
    else:
        root = math.sqrt(disc)
        lo, hi = _clip01((beta - root) / (2 * alpha)), _clip01((beta + root) / (2 * alpha))
    return {
        "share": round(_clip01(estimate), 4),
        "lo": round(lo, 4),
        "hi": round(hi, 4),
        "estimate": round(estimate, 4),
        "observed": round(math.fsum(float(x) for x in observed) / n, 4),
        "chance": round(math.fsum(float(e) for e in chance) / n, 4),
        "n": n,
    }


def beyond_chance(table: pl.DataFrame, flag: str = "blind", chance: str = BLIND_CHANCE) -> dict[str, Any] | None:
    """:func:`beyond_chance_stats` of a table's ``flag`` verdicts against its ``chance`` column.

    Items without a verdict or a chance level (unaskable items, members that gave none) are left
    out; ``n`` says how many counted. None when the column is missing or no item has both.
    """
    if flag not in table.columns or chance not in table.columns:
        return None
    both = table.select(pl.col(flag).cast(pl.Float64).alias("x"), pl.col(chance).cast(pl.Float64).alias("e")).drop_nulls()
    both = both.filter(pl.col("e").is_not_nan())
    return beyond_chance_stats(both["x"].to_list(), both["e"].to_list())


def flag_share(table: pl.DataFrame, flag: str, *, threshold: int | None = None) -> dict[str, Any]:
    """The share of rows whose Boolean ``flag`` is true: ``n``, ``k``, ``share``, ``ci95`` and chance levels.

    ``chance_hit`` (mean 1/options) when the table has ``options``; ``chance_blind`` (uniform
    guessers under the panel's rule) when ``threshold`` and ``n_members`` are known; for the
    ``blind`` flag also ``beyond_chance`` (null for a table screened without ``blind_chance``).
    """
    n = table.height
    k = int(table[flag].fill_null(False).sum()) if n else 0
    out: dict[str, Any] = {"n": n, "k": k, "share": round(k / n, 4) if n else None, "ci95": wilson(k, n)}
    if n and "options" in table.columns:
        n_opts = table["options"].list.len()
        out["chance_hit"] = round(float((1.0 / n_opts.cast(pl.Float64)).mean()), 4)
        if threshold is not None and "n_members" in table.columns:
            probs = [blind_by_chance(o, m or 0, threshold) for o, m in zip(n_opts.to_list(), table["n_members"].to_list())]
            probs = [p for p in probs if not math.isnan(p)]
            out["chance_blind"] = round(sum(probs) / len(probs), 4) if probs else None
    if flag == "blind":
        out["beyond_chance"] = beyond_chance(table)  # null for a table screened without blind_chance
    return out


def shares_by(table: pl.DataFrame, column: str, flag: str, threshold: int | None) -> dict[str, dict]:
    """:func:`flag_share` per value of ``column`` (nulls as "(none)"); empty when the column is missing or all null."""
    if column not in table.columns or table[column].null_count() == table.height:
        return {}
    out = {}
    for (value,), group in sorted(table.group_by(column), key=lambda g: (g[0][0] is None, str(g[0][0]))):
        out["(none)" if value is None else str(value)] = flag_share(group, flag, threshold=threshold)
    return out
