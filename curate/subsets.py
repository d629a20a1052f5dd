"""Keep-ranking subsets: ``n`` items on which the models rank -- and score -- as on the full set.

:func:`keep_ranking_subset` picks ``n`` items whose per-model accuracies match the full set's (so the
ranking is kept): stratified sampling over cells of stratum x solve pattern (which models solved the
item), discriminative items first within a cell, then improving swaps until the summed absolute
accuracy deviation ``sum_m |sum_i x_i (c_im - a_m r_im)|`` (``c`` solved, ``r`` has a result; in
items) stops falling. Why not only optimise the fitted models' accuracies: any subset can be tuned
to the models it was chosen with; keeping the full set's mix of solve patterns is what keeps a model
that was *not* used close as well (``bench/item_stats.py`` measures both). :func:`kendall_tau`
(scipy's tau-b, :mod:`curate.correlation`) and :func:`ranking_agreement` report how the subset's
ranking and accuracies compare with the full set.

Why its own module: it works on a correct matrix (``item_id`` + one Boolean column per model,
:func:`curate.item_stats.correct_matrix`) and nothing else, and two commands build on it: ``balance
--keep-ranking`` (:mod:`curate.balance`, the program's cell counts as exact quotas) and the
item-stats bench. Quotas are shared by :func:`curate.allocation.largest_remainder`, the rule the
audit's sample uses too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from curate.allocation import largest_remainder
from curate.correlation import kendall_tau, point_biserial
from curate.errors import UserError

__all__ = ["MAX_PATTERN_MODELS", "KeepRanking", "keep_ranking_subset", "kendall_tau", "random_subset", "ranking_agreement"]


def _model_columns(correct: pl.DataFrame, models: Sequence[str] | None) -> list[str]:
    cols = list(models) if models is not None else [c for c, t in correct.schema.items() if t == pl.Boolean]
    if not cols:
        raise UserError("no model columns (Boolean) in the correct matrix")
    return cols


def _accuracies(correct: pl.DataFrame, models: Sequence[str]) -> dict[str, float | None]:
    row = correct.select([pl.col(m).cast(pl.Float64).mean().alias(m) for m in models]).row(0, named=True)
    return {m: (None if v is None else float(v)) for m, v in row.items()}


def ranking_agreement(correct: pl.DataFrame, item_ids: Iterable[str], models: Sequence[str] | None = None) -> dict:
    """Kendall's tau between model accuracies on ``correct`` and on the subset, and per-model differences."""
    models = _model_columns(correct, models)
    ids = pl.Series(list(item_ids), dtype=pl.String)
    full = _accuracies(correct, models)
    sub = _accuracies(correct.filter(pl.col("item_id").is_in(ids.implode())), models)
    diff = {m: (None if full[m] is None or sub[m] is None else round(sub[m] - full[m], 6)) for m in models}
    known = [m for m in models if diff[m] is not None]
    return {
        "n": int(ids.n_unique()),
        "of": correct.height,
        "tau": kendall_tau([full[m] for m in known], [sub[m] for m in known]),
        "accuracy_full": {m: full[m] for m in models},
        "accuracy_subset": {m: sub[m] for m in models},
        "accuracy_diff": diff,
        "max_abs_diff": max((abs(diff[m]) for m in known), default=None),
    }


@dataclass
class KeepRanking:
    """A keep-ranking subset and how its model ranking compares with the full set's."""

    item_ids: list[str]
    tau: float | None
    accuracy_full: dict[str, float | None]
    accuracy_subset: dict[str, float | None]
    accuracy_diff: dict[str, float | None]
    max_abs_diff: float | None
    method: str = "stratified"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"n": len(self.item_ids), "tau": self.tau, "accuracy_full": self.accuracy_full,
                "accuracy_subset": self.accuracy_subset, "accuracy_diff": self.accuracy_diff,
                "max_abs_diff": self.max_abs_diff, "method": self.method, **self.extra}


def _quotas(strata: list, n: int, quotas: dict[str, int] | None) -> dict:
    """Items per stratum: the given quotas, else proportional to stratum sizes (largest remainder)."""
    sizes: dict = {}
    for s in strata:
        sizes[s] = sizes.get(s, 0) + 1
    if quotas is not None:
        bad = {s: q for s, q in quotas.items() if q > sizes.get(s, 0)}
        if bad:
            s, q = next(iter(bad.items()))
            raise UserError(f"quota {q} for stratum {s!r} exceeds its {sizes.get(s, 0)} candidates")
        return {s: int(quotas.get(s, 0)) for s in sizes}
    return largest_remainder(sizes, n)


#: Up to this many models, cells are the exact solve pattern (which models solved the item);
#: beyond it (3^7 = 2,187 possible patterns would leave cells of one item) the number of solvers.
MAX_PATTERN_MODELS = 6


def keep_ranking_subset(correct: pl.DataFrame, n: int, *, models: Sequence[str] | None = None, strata: str | None = None,
                        quotas: dict[str, int] | None = None, candidates: Iterable[str] | None = None, seed: int = 0,
                        prefer: str = "discriminability") -> KeepRanking:
    """Choose ``n`` items whose model ranking and per-model accuracies match the full ``correct`` table.

    ``correct``: ``item_id`` + Boolean model columns (:func:`correct_matrix`; null = no result),
    optionally a stratum column named by ``strata`` (quotas per value: ``quotas``, else proportional).
    The full-set accuracies are over all rows of ``correct``; the choice is restricted to ``candidates``.

    How (stratified sampling on the models' own evidence, then exact matching):

    1. every item falls in a cell: its stratum x its *solve pattern* (which of the models solved it;
       with more than :data:`MAX_PATTERN_MODELS` models, how many did);
    2. each stratum's quota is shared over its cells in proportion to their sizes (largest
       remainder), so the subset has the full set's mix of easy, hard and discriminating items --
       which is what keeps the accuracy of a model *not* among ``models`` close too;
    3. within a cell, items are taken by ``prefer``: ``"discriminability"`` (point-biserial over the
       models, highest first; ties and everything else seeded-random) or ``"random"``;
    4. swaps within a stratum (one chosen item out, one other in, between cells) are made while they
       reduce the summed absolute accuracy deviation over the models (in items), so rounding in
       step 2 and coarse cells in step 1 cost at most about one item per model.
    """
    if prefer not in ("discriminability", "random"):
        raise UserError(f"prefer={prefer!r}: use 'discriminability' or 'random'")
    models = _model_columns(correct, models)
    pool = correct if candidates is None else correct.filter(pl.col("item_id").is_in(pl.Series(list(candidates), dtype=pl.String).implode()))
    if not 0 < n <= pool.height:
        raise UserError(f"keep-ranking: asked for {n} items of {pool.height} candidates")
    full = _accuracies(correct, models)
    c = pool.select([pl.col(m).cast(pl.Float64).fill_null(0.0) for m in models]).to_numpy()
    r = pool.select([pl.col(m).is_not_null().cast(pl.Float64) for m in models]).to_numpy()
    a = np.array([full[m] or 0.0 for m in models])
    dev = c - r * a  # per item and model: its share of (hits - a_m * answered)
    state = (c + r).astype(int)  # 0 no result, 1 wrong, 2 solved
    if len(models) <= MAX_PATTERN_MODELS:
        pattern = ["".join("-xo"[v] for v in row) for row in state]
    else:
        pattern = [f"{int((row == 2).sum())} solvers" for row in state]
    rng = np.random.default_rng(seed)
    jitter = rng.random(pool.height)
    if prefer == "discriminability":
        disc = np.array([point_biserial(c[i][r[i] > 0] > 0, a[r[i] > 0]) for i in range(pool.height)], dtype=object)
        score_ = np.array([(d if d is not None else -2.0) for d in disc], dtype=float) + 1e-6 * jitter
    else:
        score_ = jitter
    labels = pool[strata].cast(pl.String).fill_null("(none)").to_list() if strata else ["all"] * pool.height
    sizes: dict = {}
    for s in labels:
        sizes[s] = sizes.get(s, 0) + 1
    want = _quotas(labels, n, quotas) if strata else {"all": n}
    if sum(want.values()) != n:
        raise UserError(f"keep-ranking: quotas sum to {sum(want.values())}, not n = {n}")
    chosen = np.zeros(pool.height, dtype=bool)
    cells: dict = {}
    for i, (s, p) in enumerate(zip(labels, pattern)):
        cells.setdefault(s, {}).setdefault(p, []).append(i)
    for s, by_pattern in cells.items():
        for p in by_pattern:
            by_pattern[p].sort(key=lambda i: -score_[i])  # best first
        alloc = largest_remainder({p: len(v) for p, v in by_pattern.items()}, want.get(s, 0))
        for p, k in alloc.items():
            chosen[by_pattern[p][:k]] = True
    swaps = _match_accuracies(chosen, dev, cells, score_)
    ids = pool["item_id"].filter(pl.Series(chosen)).to_list()
    agree = ranking_agreement(correct, ids, models)
    D = dev[chosen].sum(axis=0)
    return KeepRanking(ids, agree["tau"], agree["accuracy_full"], agree["accuracy_subset"], agree["accuracy_diff"],
                       agree["max_abs_diff"], f"stratified by {strata or 'nothing'} x solve pattern, {prefer} first",
                       {"cells": sum(len(v) for v in cells.values()), "swaps": swaps, "deviation_items": round(float(np.abs(D).sum()), 4)})


def _match_accuracies(chosen: np.ndarray, dev: np.ndarray, cells: dict, score_: np.ndarray, max_swaps: int = 100_000) -> int:
    """Step 4 of :func:`keep_ranking_subset`: improving swaps within strata; returns how many were made.

    Items of one cell share their ``dev`` row (it depends on the solve pattern only, when cells
    are exact patterns), so a swap is chosen between cells: out goes the chosen item of cell P
    with the lowest score, in comes the unchosen item of cell Q with the highest."""
    D = dev[chosen].sum(axis=0)
    swaps = 0
    while swaps < max_swaps:
        best = (np.abs(D).sum() - 1e-9, None)
        for by_pattern in cells.values():
            outs = {p: [i for i in v if chosen[i]] for p, v in by_pattern.items()}
            ins = {p: [i for i in v if not chosen[i]] for p, v in by_pattern.items()}
            for p, out_items in outs.items():
                if not out_items:
                    continue
                i = min(out_items, key=lambda k: score_[k])
                for q, in_items in ins.items():
                    if q == p or not in_items:
                        continue
                    j = max(in_items, key=lambda k: score_[k])
                    cost = np.abs(D - dev[i] + dev[j]).sum()
                    if cost < best[0]:
                        best = (cost, (i, j))
        if best[1] is None:
            return swaps
        i, j = best[1]
        chosen[i], chosen[j] = False, True
        D = D - dev[i] + dev[j]
        swaps += 1
    return swaps


def random_subset(correct: pl.DataFrame, n: int, *, seed: int = 0) -> list[str]:
    """A uniformly random subset of ``n`` item ids (the baseline keep-ranking is compared with)."""
    return correct["item_id"].sample(n, seed=seed, shuffle=True).to_list()
