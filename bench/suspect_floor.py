"""How low can a suspect-key rule's false-flag rate go with the model results we have? (issue #18)

Issue #18's planted-error check: flip the keys of seeded items; flag >= 80 % of the flipped items that
at least two models solved before the flip, and under 5 % of the untouched items. Whatever the rule,
it sees only the models' extracted letters and the key. So an item reduces to its *answer pattern*:
per model (in a fixed order) ``K`` (chose the key), ``x``/``y``/``z`` (the first, second, third
distinct wrong letter), ``-`` (no answer). For every pattern this script counts

* how often it occurs on the untouched items (the false-flag rate a rule pays for flagging it), and
* how often it occurs on flipped items (each item >= 2 models solved, the key moved to each of its
  other letters in turn, weighted equally: the planted test's recall for flagging it).

By the Neyman-Pearson lemma the rule with the lowest false-flag rate at a given recall flags
patterns in decreasing order of the ratio recall share / false-flag share (randomising on the last
one). The script prints that frontier up to the recall target: its false-flag rate is a floor no rule
on these models' letters can beat (letters' identities left out: a rule that used them would learn
the flip scheme, not wrong keys). It also prints the operating point of mmcurate's own rule
(:class:`curate.item_stats.SuspectRule` defaults) with the same flips.

    python bench/suspect_floor.py [--recall 0.8]

The natural counts include the few items whose MMStar key is itself wrong; that makes the floor
slightly pessimistic, never optimistic by more than their share.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate.item_stats import answers_table, item_stats, model_names  # noqa: E402
from curate.results import read_predictions  # noqa: E402

MMSTAR = [REPO / "tests/data/mmstar" / f for f in ("llava_next_yi_34b_MMStar.xlsx", "vila_13b_MMStar.xlsx", "vila_8b_MMStar.xlsx")]
WRONG = "xyzw"
LETTERS = "ABCD"


def pattern(votes: dict[str, str | None], key: str, models: list[str]) -> str:
    """The item as the rule sees it: one symbol per model, wrong letters named by first appearance."""
    names: dict[str, str] = {}
    out = []
    for m in models:
        v = votes.get(m)
        if v is None:
            out.append("-")
        elif v == key:
            out.append("K")
        else:
            out.append(names.setdefault(v, WRONG[len(names)]))
    return "".join(out)


def option_letters(path: Path) -> dict[str, str]:
    """item_id -> its option letters ("AB" ... "ABCD"): up to the last option column that is filled."""
    t = pl.read_excel(path)
    out = {}
    for r in t.iter_rows(named=True):
        filled = [c for c in LETTERS if c in r and r[c] is not None and str(r[c]).strip() != ""]
        out[str(r["index"])] = LETTERS[: LETTERS.index(filled[-1]) + 1] if filled else LETTERS
    return out


def pattern_counts(long: pl.DataFrame, models: list[str], letters_of: dict[str, str]) -> tuple[Counter, Counter, int]:
    """(untouched pattern counts, flipped pattern weights, flipped items) over the items of ``long``."""
    natural: Counter = Counter()
    flipped: Counter = Counter()
    n_flip = 0
    for r in long.group_by("item_id").agg("model", "extracted", pl.col("key").first()).iter_rows(named=True):
        votes, key = dict(zip(r["model"], r["extracted"])), r["key"]
        natural[pattern(votes, key, models)] += 1
        if sum(v == key for v in votes.values()) >= 2:
            others = [o for o in letters_of[r["item_id"]] if o != key]
            n_flip += 1
            for new in others:
                flipped[pattern(votes, new, models)] += 1 / len(others)
    return natural, flipped, n_flip


def frontier(natural: Counter, flipped: Counter, target: float) -> list[tuple[str, float, float]]:
    """Patterns in Neyman-Pearson order with cumulative (recall, false-flag rate), up to ``target`` recall."""
    n, f = sum(natural.values()), sum(flipped.values())
    order = sorted(set(natural) | set(flipped),
                   key=lambda p: (-(flipped[p] / f) / (natural[p] / n) if natural[p] else float("-inf"), p))
    rows, rec, fp = [], 0.0, 0.0
    for p in order:
        if not flipped[p]:
            break
        rec, fp = rec + flipped[p] / f, fp + natural[p] / n
        rows.append((p, rec, fp))
        if rec >= target:
            break
    return rows


def own_rule(long: pl.DataFrame, letters_of: dict[str, str], n_flip: int = 200, seed: int = 7) -> tuple[int, int, int, int]:
    """mmcurate's rule under the planted test's flips (``n_flip`` seeded items, key -> next letter).

    Returns (flagged, flipped items >= 2 models had solved, flagged untouched, untouched)."""
    before = item_stats(long)
    ids = before["item_id"].to_list()
    flipped = set(np.random.default_rng(seed).choice(ids, n_flip, replace=False).tolist())
    eligible = set(before.filter(pl.col("n_solvers") >= 2)["item_id"].to_list()) & flipped
    new_key = {}
    for i, k in long.group_by("item_id").agg(pl.col("key").first()).iter_rows():
        own = letters_of[i]
        new_key[i] = own[(own.index(k) + 1) % len(own)] if i in flipped else k
    long2 = long.with_columns(key=pl.col("item_id").replace_strict(new_key))
    after = item_stats(long2.with_columns(hit=pl.col("extracted").eq(pl.col("key")).fill_null(False)))
    flagged = set(after.filter(pl.col("suspect_key"))["item_id"].to_list())
    untouched = set(ids) - flipped
    return len(flagged & eligible), len(eligible), len(flagged & untouched), len(untouched)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recall", type=float, default=0.8, help="recall target on flipped items (issue #18: 0.8)")
    args = ap.parse_args()
    runs = [read_predictions(p) for p in MMSTAR]
    models = model_names(MMSTAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long = answers_table(runs, names=models)
    letters_of = option_letters(MMSTAR[0])
    natural, flipped, n_flip = pattern_counts(long, models, letters_of)
    n = sum(natural.values())
    print(f"MMStar: {n} items, models {', '.join(models)} (order of the pattern symbols); "
          f"{n_flip} items solved by >= 2 models (the planted test's flip candidates)")
    print("pattern  recall (cumulative)  false-flag rate on untouched items (cumulative)")
    for p, rec, fp in frontier(natural, flipped, args.recall):
        print(f"  {p}     {rec:6.1%}              {fp:6.1%}  ({natural[p]} untouched items have it)")
    rows = frontier(natural, flipped, args.recall)
    if rows and rows[-1][1] >= args.recall:
        print(f"floor: no rule on these {len(models)} models' letters flags >= {args.recall:.0%} of the planted errors "
              f"with fewer than {rows[-1][2]:.1%} false flags (issue #18's target: < 5 %)")
    hit, elig, fp, n_un = own_rule(long, letters_of)
    print(f"mmcurate's rule (SuspectRule defaults), the planted test's 200 seeded flips: flags {hit} of {elig} flipped items "
          f">= 2 models solved ({hit / elig:.1%}) and {fp} of {n_un} untouched items ({fp / n_un:.1%})")


if __name__ == "__main__":
    main()
