"""Balance: choose ``total`` items, an equal share per capability, as an integer program.

Why an integer program and not a greedy pass: the wishes pull against each other (equal
capability shares, even dimensions, a cap per source benchmark, a difficulty mix, at most
one item per group of copies or near-duplicates). A greedy pass satisfies whichever comes
first and silently breaks the rest; HiGHS (``scipy.optimize.milp``) weighs them all at once. Every
wish is a *soft* constraint with a slack variable whose penalty states its priority, so the
solver always returns a selection, and the slacks that stay non-zero become the shortfall
table the user reads (``strict=True`` turns a shortfall into a ``UserError``).

Priorities (penalty per item, highest first): a capability short of its share (1e6), a
source over its cap (1e4), a dimension off its even share (1e2), a difficulty level off its
mix (1), and a seeded tie-breaking cost below 1e-4 per item.

Why it is fast: items that share (dimension, source, difficulty) are interchangeable for
every constraint, so the program has one integer count per such *cell* (a few hundred)
instead of one binary per item (100,000). Items are then taken from each cell in a fixed,
seeded order. Only near-duplicate groups that straddle cells keep one binary per member.

Within a cell items are taken in a fixed order: the most confident dimension first (``_conf``),
then -- when item-stats added a ``discriminability`` column and ``prefer_discriminative`` is on
(the default) -- the most discriminative item (undefined last), then the seeded key. The order
only decides *which* items of a cell fill the count the program chose for it, so it can never
cost a capability, dimension, source or difficulty quota. With ``keep_ranking`` (a per-item,
per-model "solved" matrix, ``curate.item_stats.correct_matrix``) the items of each cell are chosen
instead by ``curate.subsets.keep_ranking_subset`` with the program's cell counts as exact
quotas, so the subset ranks the models like the full set does -- again without touching a quota.

Priority among an item's dimension columns: ``l2_category`` (MMStar strings, when set and
known to the taxonomy), then ``review_dimension`` (a reviewer's label), then
``suggested_l2_category`` (the classifier's suggestion, see ``curate.suggest``).

Two integrity rules hold for every selection (``balance`` and ``replace``):

* an item without any image (``n_images`` 0 / empty ``images``) is never selected unless
  ``allow_no_image=True``: a vision benchmark of text-only questions measures nothing;
* an item whose key item-stats flagged (``suspect_key`` true) is never selected unless a reviewer
  saw the evidence and kept the key (``review_key_confirmed`` true, ``annotation.verdicts``);
  ``balance_workspace`` gives each one a ledger row ``suspect_key``;
* never two items of one group, where a group joins ``group_id`` (copies of one question,
  ``curate.groups``: circular copies, translations, the same image and question twice) and
  ``near_duplicate_group`` transitively (``curate.groups.linked_groups``). A table without
  ``group_id`` gets one from ``curate.groups.assign_groups`` first, and the selection carries it.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from curate.errors import UserError
from curate.groups import ensure_groups, linked_groups, no_image_expr
from curate.schema import dropped_expr
from curate.stages import CANDIDATE_STAGES
from curate.taxonomy import Taxonomy, default_taxonomy
from curate.workspace import workspace_command

#: MMStar's difficulty levels, by how many of its vision models solved an item.
DIFFICULTY_LEVELS = ("easy", "moderate", "hard", "tough")

#: Penalty per item of each soft constraint (see module docstring).
W_CAPABILITY, W_SOURCE, W_DIMENSION, W_DIFFICULTY, W_TIE = 1e6, 1e4, 1e2, 1.0, 1e-4

DEFAULT_SOURCE_CAP = 0.5
_HELPERS = ("_conf", "_key", "_source", "_difficulty", "_group", "_unit", "_co", "_do", "_linked", "_disc")
#: Ledger reason of a suspect key no reviewer cleared.
SUSPECT_REASON = "suspect_key"
DISCRIMINABILITY = "discriminability"
SHORTFALL_SCHEMA = {
    "capability": pl.String(),
    "dimension": pl.String(),  # null on a capability's total row
    "wanted": pl.Int64(),
    "available": pl.Int64(),
    "chosen": pl.Int64(),
}


class Replacement(NamedTuple):
    """What ``replace`` changed: the new selection, the item removed and the item added."""

    selected: pl.DataFrame
    removed: str
    added: str


# --------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------
def not_dropped(items: pl.DataFrame) -> pl.DataFrame:
    """Rows no earlier stage dropped (``curate.schema.DROP_MARKS``: ``blind``/``rule_drop`` not true,
    ``review_kept`` not false; an item screening could not ask)."""
    return items.filter(~dropped_expr(items.columns))


def suspect_expr(columns) -> pl.Expr:
    """True for a row whose key item-stats flagged and no reviewer cleared (False without ``suspect_key``)."""
    if "suspect_key" not in columns:
        return pl.lit(False)
    flagged = pl.col("suspect_key").fill_null(False)
    if "review_key_confirmed" not in columns:
        return flagged
    return flagged & ~pl.col("review_key_confirmed").fill_null(False)


def eligible(items: pl.DataFrame, *, allow_no_image: bool = False) -> pl.DataFrame:
    """Rows no earlier stage dropped (``not_dropped``), without an uncleared suspect key
    (``suspect_expr``) and, unless ``allow_no_image``, with an image."""
    df = not_dropped(items)
    if "suspect_key" in df.columns:
        df = df.filter(~suspect_expr(df.columns))
    return df if allow_no_image else df.filter(~no_image_expr(df.columns))


def candidates(items: pl.DataFrame, *, taxonomy: Taxonomy | None = None, exclude: Iterable[str] = (),
               allow_no_image: bool = False) -> pl.DataFrame:
    """Rows the balancer may choose, with resolved ``category``/``l2_category`` and helper columns.

    Dropped rows (``blind`` true, ``rule_drop`` true, ``review_kept`` false -- each only when
    the column exists), uncleared suspect keys (``suspect_expr``), rows without any image (unless
    ``allow_no_image``) and rows without a known dimension are left out. Added columns: ``dimension_from`` (l2_category / review /
    suggestion) and ``_conf`` (1.0 for a label, the suggestion's probability otherwise; higher
    is taken first within a cell).
    """
    tax = taxonomy or default_taxonomy()
    dims = {d.name: d.capability for d in tax.dimensions}
    df = eligible(items, allow_no_image=allow_no_image)
    exclude = list(exclude)
    if exclude:
        df = df.filter(~pl.col("item_id").is_in(exclude))
    known = list(dims)

    def _dim(col: str) -> pl.Expr:
        if col not in df.columns:
            return pl.lit(None, dtype=pl.String)
        c = pl.col(col).cast(pl.String).str.strip_chars().str.to_lowercase()
        return pl.when(c.is_in(known)).then(c).otherwise(None)

    l2, rv, sg = _dim("l2_category"), _dim("review_dimension"), _dim("suggested_l2_category")
    prob = pl.col("suggested_prob").cast(pl.Float64).fill_null(0.0) if "suggested_prob" in df.columns else pl.lit(0.0)
    df = df.with_columns(
        pl.coalesce(l2, rv, sg).alias("l2_category"),
        pl.when(l2.is_not_null()).then(pl.lit("l2_category"))
        .when(rv.is_not_null()).then(pl.lit("review"))
        .when(sg.is_not_null()).then(pl.lit("suggestion"))
        .alias("dimension_from"),
        pl.when(l2.is_not_null() | rv.is_not_null()).then(1.0).otherwise(prob).alias("_conf"),
    ).filter(pl.col("l2_category").is_not_null())
    return df.with_columns(pl.col("l2_category").replace_strict(dims, return_dtype=pl.String).alias("category"))


def _difficulty(df: pl.DataFrame) -> pl.Series | None:
    if "difficulty" not in df.columns:
        return None
    d = df["difficulty"].cast(pl.String).str.strip_chars().str.to_lowercase()
    wrong = d.is_not_null() & ~d.is_in(DIFFICULTY_LEVELS)
    bad = d.filter(wrong)
    if len(bad):
        row = int(wrong.arg_true()[0])
        raise UserError(
            f"column 'difficulty', item {df['item_id'][row]!r}: unknown level {bad[0]!r}; "
            f"expected one of {list(DIFFICULTY_LEVELS)} or empty"
        )
    if d.null_count() == len(d):
        return None
    return d


def pool_difficulty_mix(levels: pl.Series) -> dict[str, float]:
    """Level -> share among the candidates: the difficulty mix ``--keep-ranking`` uses.

    Why not MMStar's even mix: difficulty bins count how many of the *same* models solved an item,
    so an even mix fixes most of each model's accuracy on the subset by itself (on MMStar with its 3
    public result files it moved every accuracy by ~0.2 whatever the within-cell choice); keeping
    the pool's own mix leaves the accuracies, hence the ranking, to be matched.
    """
    counts = levels.drop_nulls().value_counts()
    total = int(counts["count"].sum())
    return {lvl: n / total for lvl, n in counts.iter_rows()} if total else {}


def _tie_keys(item_ids: Iterable[str], seed: int) -> np.ndarray:
    """A seeded pseudo-random key in [0, 1) per item, independent of row order and platform."""
    out = []
    for iid in item_ids:
        h = hashlib.blake2b(f"{seed}\x1f{iid}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(h, "big") / 2**64)
    return np.asarray(out, dtype=np.float64)


def waterfill(target: int, available: list[int]) -> list[int]:
    """Split ``target`` as evenly as possible over bins holding at most ``available[i]`` each.

    Leftover single units go to the earliest bins (taxonomy order), so the result is fixed.

    >>> waterfill(250, [30, 1000, 1000])
    [30, 110, 110]
    >>> waterfill(250, [10**9] * 3)
    [84, 83, 83]
    """
    alloc = [0] * len(available)
    remaining = target
    active = [i for i, a in enumerate(available) if a > 0]
    while remaining > 0 and active:
        share = remaining // len(active)
        if share == 0:
            for i in active[:remaining]:
                alloc[i] += 1
            break
        for i in active:
            give = min(share, available[i] - alloc[i])
            alloc[i] += give
            remaining -= give
        active = [i for i in active if alloc[i] < available[i]]
    return alloc


def _shares(total: int, capabilities: list[str], per_capability: int | Mapping[str, int] | None) -> dict[str, int]:
    if per_capability is None:
        if total < 0:
            raise UserError(f"total={total}: must be a positive number of items")
        base, extra = divmod(total, len(capabilities))
        return {c: base + (1 if i < extra else 0) for i, c in enumerate(capabilities)}
    if isinstance(per_capability, int):
        return {c: per_capability for c in capabilities}
    unknown = [c for c in per_capability if c not in capabilities]
    if unknown:
        raise UserError(f"per_capability names unknown capability {unknown[0]!r}; expected some of {capabilities}")
    return {c: int(per_capability.get(c, 0)) for c in capabilities}


def _source_cap(source_cap: float | int | None, total: int) -> int | None:
    if source_cap is None:
        return None
    if isinstance(source_cap, float) and 0 < source_cap <= 1:
        return max(1, math.ceil(source_cap * total))
    if source_cap >= 1:
        return int(source_cap)
    raise UserError(f"source_cap={source_cap!r}: give a fraction of the total in (0, 1], a count >= 1, or None")


# --------------------------------------------------------------------------------------
# The balancer
# --------------------------------------------------------------------------------------
def balance(
    items: pl.DataFrame,
    *,
    total: int = 1500,
    per_capability: int | Mapping[str, int] | None = None,
    seed: int = 0,
    source_cap: float | int | None = DEFAULT_SOURCE_CAP,
    difficulty_mix: Mapping[str, float] | None = None,
    strict: bool = False,
    exclude: Iterable[str] = (),
    taxonomy: Taxonomy | None = None,
    time_limit: float = 60.0,
    allow_no_image: bool = False,
    prefer_discriminative: bool = True,
    keep_ranking: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Choose a balanced subset of ``items``; return ``(selected, shortfall)``.

    Parameters
    ----------
    total : items wanted, split equally over the 6 capabilities (1,500 -> 250 each).
    per_capability : overrides ``total``: a count for every capability, or a mapping
        capability -> count (capabilities not named get 0).
    seed : fixes the tie-breaking order; the same input and seed give the same selection.
    source_cap : most items from one ``source``: a fraction of the total (default 0.5) or a
        count; None for no cap. Soft: exceeded (with a warning) only to fill a capability.
    difficulty_mix : level -> fraction per capability when a ``difficulty`` column exists;
        default an even split over easy/moderate/hard/tough as availability allows.
    strict : raise ``UserError`` when any capability or dimension is short.
    exclude : item_ids never to select (e.g. items rejected earlier).
    allow_no_image : also select items without any image (default: never).
    prefer_discriminative : within a cell, take items with a higher ``discriminability`` first
        (only when that column exists; see the module docstring). Never changes a quota.
    keep_ranking : ``item_id`` + one Boolean column per model (``curate.item_stats.correct_matrix``
        over the full set): choose each cell's items so that the models rank on the selection as
        on all rows of this table. Never changes a quota; the difficulty mix defaults to the
        pool's own (``pool_difficulty_mix``) instead of an even one.

    ``selected`` keeps every input column, sets ``category``/``l2_category`` to the resolved
    capability/dimension, and adds ``dimension_from`` (and ``group_id``/``group_reason`` when
    the input had none); no two selected items share a group (copies or near-duplicates).
    ``shortfall`` has one row per short dimension and per short capability total (``dimension`` null): capability, dimension,
    wanted, available, chosen. Raises ``UserError`` when more items are asked for than
    exist, or when a capability that should get items has no candidates at all.
    """
    tax = taxonomy or default_taxonomy()
    cap_names = [c.name for c in tax.capabilities]
    cap_dims = {c.name: [d.name for d in c.dimensions] for c in tax.capabilities}
    shares = _shares(total, cap_names, per_capability)
    total = sum(shares.values())
    if total <= 0:
        raise UserError(f"nothing to select: total={total} (give --total > 0)")

    items = ensure_groups(items)
    items = items.with_columns(linked_groups(items).alias("_linked"))
    cand = candidates(items, taxonomy=tax, exclude=exclude, allow_no_image=allow_no_image)
    if cand.height == 0:
        imageless = 0 if allow_no_image else eligible(items, allow_no_image=True).height - eligible(items).height
        hint = (f"; {imageless} kept items have no image (pass --allow-no-image / allow_no_image=True to select them)"
                if imageless else "")
        raise UserError(
            f"no candidates: none of the {items.height} items is kept, has an image and has a dimension "
            f"(l2_category, review_dimension or suggested_l2_category); run `mmcurate suggest` first{hint}"
        )
    diff = _difficulty(cand)
    if keep_ranking is not None and difficulty_mix is None and diff is not None:
        difficulty_mix = pool_difficulty_mix(diff)
    cand = cand.with_columns(
        pl.Series("_key", _tie_keys(cand["item_id"].to_list(), seed)),
        pl.col("source").fill_null("(unknown)").alias("_source"),
        (diff if diff is not None else pl.lit(None, dtype=pl.String)).alias("_difficulty"),
        pl.col("_linked").alias("_group"),  # copies (group_id) and near-duplicates, joined
    )
    if prefer_discriminative and DISCRIMINABILITY in cand.columns:
        cand = cand.with_columns(pl.col(DISCRIMINABILITY).cast(pl.Float64).fill_nan(None).alias("_disc"))
    # One unit per item, except that a group of copies / near-duplicates counts once.
    cand = cand.with_columns(pl.coalesce(pl.col("_group"), pl.lit("\x00") + pl.col("item_id")).alias("_unit"))

    units_total = cand["_unit"].n_unique()
    if total > units_total:
        raise UserError(
            f"asked for {total} items but only {units_total} distinct candidates exist "
            f"({cand.height} kept items with a dimension, one per group of copies / near-duplicates); lower --total"
        )
    avail_cap = dict(cand.group_by("category").agg(pl.col("_unit").n_unique()).iter_rows())
    empty = [c for c in cap_names if shares[c] > 0 and not avail_cap.get(c)]
    if empty:
        raise UserError(
            f"capability {empty[0]!r} has no candidates (no kept item has one of its dimensions "
            f"{cap_dims[empty[0]]}); add items for it, or give per_capability without it"
        )

    picker = None if keep_ranking is None else _ranking_picker(keep_ranking, seed)
    chosen_ids = _solve(cand, shares, cap_dims, diff is not None, difficulty_mix,
                        _source_cap(source_cap, total), seed, time_limit, picker)

    cap_order = {c: i for i, c in enumerate(cap_names)}
    dim_order = {d.name: i for i, d in enumerate(tax.dimensions)}
    selected = (
        cand.filter(pl.col("item_id").is_in(chosen_ids))
        .with_columns(
            pl.col("category").replace_strict(cap_order, return_dtype=pl.Int32).alias("_co"),
            pl.col("l2_category").replace_strict(dim_order, return_dtype=pl.Int32).alias("_do"),
        )
        .sort(["_co", "_do", "_source", "item_id"])
    )
    shortfall = _shortfall(cand, selected, shares, cap_dims)
    _warn_source_cap(selected, _source_cap(source_cap, total))
    selected = selected.drop(_HELPERS, strict=False)
    if strict and shortfall.height:
        r = shortfall.row(0, named=True)
        where = f"{r['capability']} / {r['dimension']}" if r["dimension"] else f"{r['capability']} (total)"
        raise UserError(
            f"strict: {shortfall.height} shortfall(s), e.g. {where}: wanted {r['wanted']}, "
            f"available {r['available']}, chosen {r['chosen']}; add candidates or drop --strict"
        )
    return selected, shortfall


def _within_cell_order(cand: pl.DataFrame) -> pl.DataFrame:
    """The documented within-cell order: confidence, then discriminability (when used), then the seeded key."""
    if "_disc" not in cand.columns:
        return cand.sort(["_conf", "_key"], descending=[True, False])
    return cand.sort(["_conf", "_disc", "_key"], descending=[True, True, False], nulls_last=True)


#: ``picker(cells, fixed) -> item_ids``: ``cells`` is ``[(cell name, item_ids in order, count)]``
#: as the program allotted them, ``fixed`` the item_ids chosen one by one (straddling groups).
Picker = Callable[[list[tuple[str, list[str], int]], list[str]], list[str]]


def _first_n(cells: list[tuple[str, list[str], int]], fixed: list[str]) -> list[str]:
    """The default picker: each cell's first ``count`` items in the within-cell order."""
    chosen = [i for _, ids, n in cells for i in ids[:n]]
    return chosen + fixed


def _ranking_picker(correct: pl.DataFrame, seed: int) -> Picker:
    """A picker that fills each cell's count with the items keeping the full set's model ranking.

    The full set is every row of ``correct``; candidates no model has a result for get null rows
    (they carry no ranking information and are taken only to fill a count).
    """
    from curate.subsets import keep_ranking_subset

    models = [c for c, t in correct.schema.items() if t == pl.Boolean]
    if not models:
        raise UserError("--keep-ranking: the result files give no model column to rank")

    def pick(cells: list[tuple[str, list[str], int]], fixed: list[str]) -> list[str]:
        stratum = {i: name for name, ids, _ in cells for i in ids} | {i: "\x00fixed" for i in fixed}
        quotas = {name: n for name, _, n in cells} | {"\x00fixed": len(fixed)}
        base = correct.select("item_id", *models)
        known = set(base["item_id"].to_list())
        missing = [i for i in stratum if i not in known]
        if missing:
            base = pl.concat([base, pl.DataFrame({"item_id": missing}).with_columns(
                pl.lit(None, dtype=pl.Boolean).alias(m) for m in models)], how="vertical")
        table = base.with_columns(pl.col("item_id").replace_strict(stratum, default="\x00other",
                                                                   return_dtype=pl.String).alias("_stratum"))
        quotas["\x00other"] = 0
        res = keep_ranking_subset(table, sum(quotas.values()), models=models, strata="_stratum", quotas=quotas,
                                  candidates=list(stratum), seed=seed)
        return list(res.item_ids)

    return pick


def _solve(cand, shares, cap_dims, has_diff, difficulty_mix, cap, seed, time_limit, picker: Picker | None = None) -> list[str]:
    """Build and solve the cell-level program; return the chosen item_ids (``picker`` fills each cell's count)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    # Units: a near-duplicate group collapses to its best member when all its members sit in
    # one cell; groups that straddle cells keep one binary variable per member.
    cell_cols = ["l2_category", "_source", "_difficulty"]
    cand = _within_cell_order(cand)
    grp = cand.filter(pl.col("_group").is_not_null())
    straddling = set(
        grp.group_by("_group").agg(pl.struct(cell_cols).n_unique().alias("n")).filter(pl.col("n") > 1)["_group"].to_list()
    )
    is_straddle = pl.col("_group").is_in(list(straddling)).fill_null(False) if straddling else pl.lit(False)
    free = cand.filter(~is_straddle).unique("_unit", keep="first", maintain_order=True)
    loose = cand.filter(is_straddle)
    if loose.height:
        # Exact reduction: no selection takes more than min(capability share, source cap)
        # units from one cell, so where a cell has at least that many free units, a group
        # member in it can always be swapped for a free one -- drop it from the program.
        dim_cap = {d: c for c, ds in cap_dims.items() for d in ds}
        free_n = free.group_by(cell_cols).len().rename({"len": "_free"})
        bound = pl.col("l2_category").replace_strict({d: shares.get(c, 0) for d, c in dim_cap.items()}, return_dtype=pl.Int64)
        if cap is not None:
            bound = pl.min_horizontal(bound, pl.lit(cap, dtype=pl.Int64))
        loose = (loose.join(free_n, on=cell_cols, how="left", nulls_equal=True)
                 .filter(pl.col("_free").fill_null(0) < bound).drop("_free"))

    cells = free.group_by(cell_cols, maintain_order=True).agg(pl.len().alias("n"), pl.col("item_id"))
    cells = cells.with_columns(pl.col("l2_category").alias("dim"))
    dim_cap = {d: c for c, ds in cap_dims.items() for d in ds}

    # Variable layout.
    rows_cell = cells.select("dim", "_source", "_difficulty").rows()
    rows_loose = loose.select("l2_category", "_source", "_difficulty").rows()
    members = rows_cell + rows_loose
    n_cell, n_loose = len(rows_cell), len(rows_loose)
    n_x = n_cell + n_loose
    caps = [c for c in cap_dims if shares[c] > 0]
    dims = [d for c in caps for d in cap_dims[c]]
    sources = sorted({m[1] for m in members})
    levels = [lvl for lvl in DIFFICULTY_LEVELS] if has_diff else []
    diff_keys = [(c, lvl) for c in caps for lvl in levels]

    off = {}
    k = n_x
    for name, size in (("short", len(caps)), ("dover", len(dims)), ("dunder", len(dims)), ("sover", len(sources) if cap else 0),
                       ("fover", len(diff_keys)), ("funder", len(diff_keys))):
        off[name] = k
        k += size
    n_var = k

    cost = np.zeros(n_var)
    # Seeded tie costs: a cell costs its best key (cheap cells first when equal otherwise).
    cell_keys = _tie_keys([f"{d}\x1f{s}\x1f{f}" for d, s, f in rows_cell], seed)
    cost[:n_cell] = W_TIE * cell_keys
    cost[n_cell:n_x] = W_TIE * loose["_key"].to_numpy()
    cost[off["short"]:off["short"] + len(caps)] = W_CAPABILITY
    cost[off["dover"]:off["dunder"] + len(dims)] = W_DIMENSION
    if cap:
        cost[off["sover"]:off["sover"] + len(sources)] = W_SOURCE
    cost[off["fover"]:off["funder"] + len(diff_keys)] = W_DIFFICULTY

    ub = np.full(n_var, np.inf)
    ub[:n_cell] = cells["n"].to_numpy()
    ub[n_cell:n_x] = 1
    for j, (d, _, _) in enumerate(members):  # capabilities not asked for get nothing
        if shares.get(dim_cap[d], 0) == 0:
            ub[j] = 0
    integrality = np.zeros(n_var)
    integrality[:n_x] = 1

    # Availability per dimension and per (capability, level), counted in units.
    avail_dim = dict(cand.group_by("l2_category").agg(pl.col("_unit").n_unique()).iter_rows())
    avail_lvl = {}
    if has_diff:
        avail_lvl = {(c, lvl): n for c, lvl, n in cand.filter(pl.col("_difficulty").is_not_null())
                     .group_by("category", "_difficulty").agg(pl.col("_unit").n_unique()).iter_rows()}

    r_i, r_j, r_v, lo, hi = [], [], [], [], []
    row = 0

    def add_row(var_idx, coefs, lower, upper):
        nonlocal row
        r_i.extend([row] * len(var_idx))
        r_j.extend(var_idx)
        r_v.extend(coefs)
        lo.append(lower)
        hi.append(upper)
        row += 1

    by_cap = {c: [] for c in caps}
    by_dim = {d: [] for d in dims}
    by_src = {s: [] for s in sources}
    by_lvl = {key: [] for key in diff_keys}
    for j, (d, s, f) in enumerate(members):
        c = dim_cap[d]
        if c not in by_cap:
            continue
        by_cap[c].append(j)
        by_dim[d].append(j)
        by_src[s].append(j)
        if f is not None and (c, f) in by_lvl:
            by_lvl[(c, f)].append(j)
    for i, c in enumerate(caps):  # sum + short = share
        add_row(by_cap[c] + [off["short"] + i], [1.0] * len(by_cap[c]) + [1.0], shares[c], shares[c])
        targets = waterfill(shares[c], [avail_dim.get(d, 0) for d in cap_dims[c]])
        for d, t in zip(cap_dims[c], targets):
            di = dims.index(d)
            add_row(by_dim[d] + [off["dover"] + di, off["dunder"] + di], [1.0] * len(by_dim[d]) + [-1.0, 1.0], t, t)
        if has_diff:
            lv_avail = [avail_lvl.get((c, lvl), 0) for lvl in levels]
            if difficulty_mix is None:
                lv_targets = waterfill(shares[c], lv_avail)
            else:
                lv_targets = [min(a, round(shares[c] * float(difficulty_mix.get(lvl, 0.0)))) for lvl, a in zip(levels, lv_avail)]
            for lvl, t in zip(levels, lv_targets):
                fi = diff_keys.index((c, lvl))
                idx = by_lvl[(c, lvl)]
                add_row(idx + [off["fover"] + fi, off["funder"] + fi], [1.0] * len(idx) + [-1.0, 1.0], t, t)
    if cap:
        for si, s in enumerate(sources):
            add_row(by_src[s] + [off["sover"] + si], [1.0] * len(by_src[s]) + [-1.0], -np.inf, cap)
    if n_loose:
        groups = loose["_group"].to_list()
        by_group: dict[str, list[int]] = {}
        for j, g in enumerate(groups):
            by_group.setdefault(g, []).append(n_cell + j)
        for idx in by_group.values():
            add_row(idx, [1.0] * len(idx), -np.inf, 1)

    A = coo_array((r_v, (r_i, r_j)), shape=(row, n_var)).tocsr()
    res = milp(
        cost,
        integrality=integrality,
        bounds=Bounds(np.zeros(n_var), ub),
        constraints=LinearConstraint(A, lo, hi),
        options={"mip_rel_gap": 1e-9, "time_limit": time_limit, "presolve": True},
    )
    if res.x is None:  # cannot happen with the slacks unless the time limit hit before any solution
        raise UserError(f"balance: the solver found no selection within {time_limit:.0f} s ({res.message}); raise time_limit")
    if res.status != 0:
        warnings.warn(f"balance: solver stopped early ({res.message}); gap {res.mip_gap:.2e}", stacklevel=3)
    x = np.rint(res.x[:n_x]).astype(int)
    names = ["\x1f".join("" if v is None else str(v) for v in r) for r in rows_cell]
    alloc = [(name, ids, int(n)) for name, ids, n in zip(names, cells["item_id"].to_list(), x[:n_cell])]
    fixed = loose["item_id"].filter(pl.Series(x[n_cell:] > 0)).to_list() if n_loose else []
    chosen = (picker or _first_n)(alloc, fixed)
    _solve.last = {"objective": float(res.fun), "gap": float(res.mip_gap or 0.0), "status": int(res.status),
                   "variables": n_var, "constraints": row}
    return chosen


def solver_stats() -> dict:
    """Figures of the last solve (objective, HiGHS relative gap, size) -- for bench/ and logs."""
    return dict(getattr(_solve, "last", {}))


def _shortfall(cand, selected, shares, cap_dims) -> pl.DataFrame:
    avail_dim = dict(cand.group_by("l2_category").agg(pl.col("_unit").n_unique()).iter_rows())
    avail_cap = dict(cand.group_by("category").agg(pl.col("_unit").n_unique()).iter_rows())
    got_dim = dict(selected.group_by("l2_category").len().iter_rows())
    rows = []
    for c, ds in cap_dims.items():
        if shares[c] <= 0:
            continue
        got_c = sum(got_dim.get(d, 0) for d in ds)
        if got_c < shares[c]:
            rows.append((c, None, shares[c], avail_cap.get(c, 0), got_c))
        for d, want in zip(ds, waterfill(shares[c], [10**12] * len(ds))):
            if got_dim.get(d, 0) < want:
                rows.append((c, d, want, avail_dim.get(d, 0), got_dim.get(d, 0)))
    return pl.DataFrame(rows, schema=SHORTFALL_SCHEMA, orient="row")


def _warn_source_cap(selected: pl.DataFrame, cap: int | None) -> None:
    if cap is None:
        return
    over = selected.group_by("_source").len().filter(pl.col("len") > cap).sort("len", descending=True)
    for s, n in over.iter_rows():
        warnings.warn(
            f"source {s!r}: {n} items selected, above the cap of {cap}; too few candidates from other "
            "sources to fill the capabilities otherwise",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------
# Replacing one rejected item
# --------------------------------------------------------------------------------------
def replace(
    selected: pl.DataFrame,
    items: pl.DataFrame,
    item_id: str,
    *,
    seed: int = 0,
    source_cap: float | int | None = DEFAULT_SOURCE_CAP,
    exclude: Iterable[str] = (),
    taxonomy: Taxonomy | None = None,
    allow_no_image: bool = False,
    prefer_discriminative: bool = True,
) -> Replacement:
    """Swap one rejected item for an unselected candidate of the same capability and difficulty.

    MMStar's rule. Nothing else changes, and among the eligible candidates the one that
    disturbs the balance least wins: same dimension first, then same source, then one whose
    source stays within its cap, then the most confident dimension, then (``prefer_discriminative``,
    when the column exists) the most discriminative, then the seeded key. A
    candidate whose group (copies or near-duplicates, as in ``balance``) already has a
    selected member is never taken, nor a copy of the rejected item itself (the same question),
    nor an item without an image unless ``allow_no_image``.
    The new item takes the rejected item's row position.
    """
    ids = selected["item_id"].to_list()
    if item_id not in ids:
        raise UserError(f"--replace {item_id!r}: not in the balanced selection ({len(ids)} items); check the item_id")
    old = selected.row(ids.index(item_id), named=True)
    items = ensure_groups(items)
    items = items.with_columns(linked_groups(items).alias("_linked"))
    pool = candidates(items, taxonomy=taxonomy, exclude=[*exclude, item_id, *ids], allow_no_image=allow_no_image)
    # The selected items' groups, the rejected item's own included: its copies are the same question.
    taken = items.filter(pl.col("item_id").is_in(ids))["_linked"].drop_nulls().to_list()
    pool = pool.filter(pl.col("_linked").is_null() | ~pl.col("_linked").is_in(taken))
    if "near_duplicate_group" in pool.columns and "near_duplicate_group" in selected.columns:
        taken = selected.filter(pl.col("item_id") != item_id)["near_duplicate_group"].drop_nulls().to_list()
        pool = pool.filter(pl.col("near_duplicate_group").is_null() | ~pl.col("near_duplicate_group").is_in(taken))
    pool = pool.filter(pl.col("category") == old["category"])
    old_diff = None
    if "difficulty" in pool.columns:
        old_diff = (old.get("difficulty") or None)
        d = pl.col("difficulty").cast(pl.String).str.strip_chars().str.to_lowercase()
        pool = pool.filter(d.is_null() if old_diff is None else d == str(old_diff).strip().lower())
    if pool.height == 0:
        what = f"capability {old['category']!r}" + (f" and difficulty {old_diff!r}" if old_diff else "")
        raise UserError(f"--replace {item_id!r}: no unselected candidate of {what} is left; the selection is unchanged")
    cap = _source_cap(source_cap, selected.height)
    counts = dict(selected.filter(pl.col("item_id") != item_id).group_by("source").len().iter_rows())
    over = [s for s, n in counts.items() if cap is not None and n >= cap]
    pool = pool.with_columns(
        pl.Series("_key", _tie_keys(pool["item_id"].to_list(), seed)),
        (pl.col("l2_category") == old["l2_category"]).alias("_same_dim"),
        (pl.col("source") == old["source"]).fill_null(False).alias("_same_src"),
        (~pl.col("source").is_in(over)).fill_null(True).alias("_in_cap"),
    )
    order = ["_same_dim", "_same_src", "_in_cap", "_conf", "_key"]
    if prefer_discriminative and DISCRIMINABILITY in pool.columns:
        pool = pool.with_columns(pl.col(DISCRIMINABILITY).cast(pl.Float64).fill_nan(None).alias("_disc"))
        order.insert(4, "_disc")
    pool = pool.sort(order, descending=[c != "_key" for c in order], nulls_last="_disc" in order)
    new = pool.head(1).select([c for c in selected.columns if c in pool.columns])
    pos = ids.index(item_id)
    out = pl.concat([selected.slice(0, pos), new, selected.slice(pos + 1)], how="diagonal_relaxed").select(selected.columns)
    return Replacement(out, item_id, new["item_id"][0])


# --------------------------------------------------------------------------------------
# Workspace level (what `mmcurate balance` and the pipeline call)
# --------------------------------------------------------------------------------------
BALANCE_STAGE = "balance"  # the ledger's stage name
INPUT_STAGES = CANDIDATE_STAGES  # curate.stages: reviewed, else screened, else items


class BalanceResult(NamedTuple):
    input_stage: str
    selected: pl.DataFrame
    shortfall: pl.DataFrame
    warnings: list[str]
    suggested: bool  # dimension suggestions were computed because items lacked a dimension
    #: items left out because item-stats flagged their key and no reviewer cleared it; None
    #: when the input has no ``suspect_key`` column (the report then says nothing about it)
    suspect_excluded: int | None = None
    #: ``--keep-ranking``: Kendall's tau and accuracy differences (``ranking_report``), else None
    ranking: dict | None = None


def _rejected(ws) -> list[str]:
    led = ws.ledger()
    return led.filter((pl.col("stage") == BALANCE_STAGE) & (pl.col("reason") == "rejected"))["item_id"].drop_nulls().to_list()


def _with_dimensions(items: pl.DataFrame, allow_no_image: bool = False) -> tuple[pl.DataFrame, bool]:
    """Add dimension suggestions when some selectable item has no dimension and none were suggested yet."""
    if "suggested_l2_category" in items.columns:
        return items, False
    if candidates(items, allow_no_image=allow_no_image).height == eligible(items, allow_no_image=allow_no_image).height:
        return items, False
    from curate.suggest import suggest

    return suggest(items), True


def _ledger_rows(items: pl.DataFrame, pool: pl.DataFrame, selected: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Selected / not_selected per candidate; a copy left out because another member of its group
    was selected says which one."""
    chosen = selected["item_id"].to_list()
    linked = items.select("item_id", linked_groups(items).alias("_lg"))
    winner = dict(linked.filter(pl.col("item_id").is_in(chosen) & pl.col("_lg").is_not_null()).select("_lg", "item_id").iter_rows())
    pool = pool.join(linked, on="item_id", how="left").with_columns(
        pl.col("_lg").replace_strict(winner, default=None, return_dtype=pl.String).alias("_winner"))
    is_chosen = pl.col("item_id").is_in(chosen)
    base = pl.format("{} / {} (dimension from {}), seed {}", "category", "l2_category", "dimension_from", pl.lit(seed))
    copy = pl.when(~is_chosen & pl.col("_winner").is_not_null()).then(pl.format("; {} of its group is selected", "_winner"))
    return pool.select(
        "source_file", "row", "item_id",
        status=pl.when(is_chosen).then(pl.lit("kept")).otherwise(pl.lit("dropped")),
        reason=pl.when(is_chosen).then(pl.lit("selected")).otherwise(pl.lit("not_selected")),
        detail=pl.concat_str([base, copy], ignore_nulls=True),
    )


def _suspect_rows(items: pl.DataFrame, rejected: list[str], allow_no_image: bool) -> pl.DataFrame:
    """Ledger rows ``suspect_key`` for kept items left out only because their key is uncleared.

    An item without an image (and no ``allow_no_image``) keeps its ``no_image`` row instead, so
    every left-out item has exactly one reason.
    """
    df = not_dropped(items).filter(suspect_expr(items.columns) & ~pl.col("item_id").is_in(rejected))
    if not allow_no_image:
        df = df.filter(~no_image_expr(df.columns))
    evidence = pl.col("suspect_evidence") if "suspect_evidence" in df.columns else pl.lit(None, dtype=pl.String)
    cleared = ("no reviewer cleared it" if "review_key_confirmed" in df.columns
               else "not reviewed (review shows the evidence; a reviewer who keeps the key clears it)")
    return df.select(
        "source_file", "row", "item_id", status=pl.lit("dropped"), reason=pl.lit(SUSPECT_REASON),
        detail=pl.concat_str([pl.lit(f"item-stats flagged the key and {cleared}"),
                              pl.lit(": ") + evidence.cast(pl.String)], ignore_nulls=True),
    )


def ranking_report(correct: pl.DataFrame, selected: list[str], baseline: list[str] | None = None) -> dict:
    """Kendall's tau between the models' accuracies on ``correct`` (the full set) and on ``selected``,
    per-model accuracy differences (subset - full), and the same for ``baseline`` (the same quotas
    filled in the plain within-cell order, i.e. without ``--keep-ranking``) so the gain is visible."""
    from curate.subsets import ranking_agreement

    out = dict(ranking_agreement(correct, selected))
    out["full_set"] = correct.height
    out["selected_with_results"] = int(correct["item_id"].is_in(selected).sum())
    if baseline is not None:
        base = ranking_agreement(correct, baseline)
        out["baseline"] = {k: base.get(k) for k in ("tau", "accuracy_diff", "max_abs_diff")}
    return out


@workspace_command("balance")
def balance_workspace(workdir, *, total: int = 1500, per_capability=None, seed: int = 0, strict: bool = False,
                      source_cap: float | int | None = DEFAULT_SOURCE_CAP, allow_no_image: bool = False,
                      prefer_discriminative: bool = True, keep_ranking: Iterable[str | Path] | None = None,
                      matcher: str = "mmstar") -> BalanceResult:
    """Balance the newest of reviewed / screened / items; write ``balanced.parquet`` and the ledger.

    Items rejected earlier with ``--replace`` stay out, and so do items without an image unless
    ``allow_no_image`` (each gets a ledger row ``no_image``) and items whose key item-stats flagged
    without a reviewer clearing it (ledger row ``suspect_key``). Items without a dimension get one
    suggested first (``curate.suggest``). ``keep_ranking``: VLMEvalKit result files; each cell's
    items are then chosen to keep the models' ranking on the candidate pool (the full set), and
    the result carries ``ranking_report``. Nothing is written when it raises.
    """
    from curate.schema import validate_items
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    stage = ws.newest(INPUT_STAGES)
    items = ws.read(stage)
    rejected = _rejected(ws)
    paths = [Path(p) for p in keep_ranking or ()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items, suggested = _with_dimensions(ensure_groups(items), allow_no_image)
        opts = {"total": total, "per_capability": per_capability, "seed": seed, "strict": strict, "source_cap": source_cap,
                "exclude": rejected, "allow_no_image": allow_no_image, "prefer_discriminative": prefer_discriminative}
        correct = _correct_matrix(paths, items, rejected, allow_no_image, matcher) if paths else None
        selected, shortfall = balance(items, keep_ranking=correct, **opts)
    ranking = None
    if correct is not None:
        levels = _difficulty(candidates(items, exclude=rejected, allow_no_image=allow_no_image))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same program: its warnings were caught above
            plain, _ = balance(items, difficulty_mix=None if levels is None else pool_difficulty_mix(levels), **opts)
        ranking = ranking_report(correct, selected["item_id"].to_list(), plain["item_id"].to_list())
        ranking["results"] = [str(p) for p in paths]
    validate_items(selected, f"{ws.path('balanced')}")
    ws.write("balanced", selected)
    pool = candidates(items, exclude=rejected, allow_no_image=allow_no_image)
    led = _ledger_rows(items, pool, selected, seed)
    if not allow_no_image:
        imageless = not_dropped(items).filter(no_image_expr(items.columns) & ~pl.col("item_id").is_in(rejected))
        if imageless.height:
            led = pl.concat([led, imageless.select(
                "source_file", "row", "item_id", status=pl.lit("dropped"), reason=pl.lit("no_image"),
                detail=pl.lit("the item has no image; a vision benchmark needs one (mmcurate balance --allow-no-image selects such items)"),
            )], how="vertical_relaxed")
    suspect = None
    if "suspect_key" in items.columns:
        sus = _suspect_rows(items, rejected, allow_no_image)
        suspect = sus.height
        if sus.height:
            led = pl.concat([led, sus], how="vertical_relaxed")
    if rejected:
        rej = items.filter(pl.col("item_id").is_in(rejected)).select(
            "source_file", "row", "item_id", status=pl.lit("dropped"), reason=pl.lit("rejected"),
            detail=pl.lit("rejected by a reviewer (mmcurate balance --replace); never selected again"))
        led = pl.concat([led, rej], how="vertical_relaxed")
    ws.record(BALANCE_STAGE, led)
    return BalanceResult(stage, selected, shortfall, [str(w.message) for w in caught], suggested, suspect, ranking)


def _correct_matrix(paths: list[Path], items: pl.DataFrame, rejected: list[str], allow_no_image: bool,
                    matcher: str) -> pl.DataFrame:
    """Solved / not solved per candidate and model from the result files (the full set = the pool)."""
    from curate.item_stats import correct_matrix_from_files

    pool = candidates(items, exclude=rejected, allow_no_image=allow_no_image)["item_id"]
    # Matched against the whole stage table: a result row of a dropped item is not "unknown".
    correct = correct_matrix_from_files(paths, items, matcher=matcher).filter(pl.col("item_id").is_in(pool.implode()))
    models = [c for c, t in correct.schema.items() if t == pl.Boolean]
    if not models or correct.height == 0:
        raise UserError(f"--keep-ranking: none of the {len(paths)} result files matches an item of the candidate pool "
                        "(rows are matched by item_id, else by the source's index)")
    return correct.filter(pl.any_horizontal(pl.col(models).is_not_null()))


@workspace_command("balance")
def replace_in_workspace(workdir, item_id: str, *, seed: int = 0,
                         source_cap: float | int | None = DEFAULT_SOURCE_CAP, allow_no_image: bool = False,
                         prefer_discriminative: bool = True) -> Replacement:
    """Replace one item of ``balanced.parquet`` (MMStar's rule) and record both sides in the ledger."""
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    if not ws.has("balanced"):
        raise UserError(f"{ws.path('balanced')}: no balanced selection yet; run `mmcurate balance {workdir}` first")
    selected = ws.read("balanced")
    rejected = _rejected(ws)
    if item_id in rejected:
        raise UserError(f"--replace {item_id!r}: already rejected and replaced; see `mmcurate status {workdir} --rows`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the suggester's notes were shown when balancing
        items, _ = _with_dimensions(ensure_groups(ws.read(ws.newest(INPUT_STAGES))), allow_no_image)
    rep = replace(selected, items, item_id, seed=seed, source_cap=source_cap, exclude=rejected, allow_no_image=allow_no_image,
                  prefer_discriminative=prefer_discriminative)
    ws.write("balanced", rep.selected)
    both = pl.concat([selected.filter(pl.col("item_id") == item_id), rep.selected.filter(pl.col("item_id") == rep.added)],
                     how="diagonal_relaxed")
    led = both.select(
        "source_file", "row", "item_id",
        status=pl.when(pl.col("item_id") == item_id).then(pl.lit("dropped")).otherwise(pl.lit("kept")),
        reason=pl.when(pl.col("item_id") == item_id).then(pl.lit("rejected")).otherwise(pl.lit("replacement")),
        detail=pl.when(pl.col("item_id") == item_id)
        .then(pl.lit(f"rejected by a reviewer; replaced by {rep.added}"))
        .otherwise(pl.lit(f"replaces {item_id} (same capability and difficulty)")),
    )
    ws.record(BALANCE_STAGE, led, replace=pl.col("item_id").is_in([item_id, rep.added]))
    return rep
