"""Keep-ranking subsets vs random subsets on the largest real sets of model results we have.

MMStar: 3 public result files (LLaVA-Next-Yi-34B, VILA-13B, VILA-8B; tests/data/mmstar), 1,500 items.
SEED-Bench: VILA-13B (../shared/data/text_pools) + VILA-8B (tests/data/results), 14,232 items.

For a 25 % subset chosen by ``keep_ranking_subset`` and for random 25 % subsets (several seeds), prints
Kendall's tau between the model ranking on the subset and on the full set, and each model's accuracy
error (subset - full, in points). The keep-ranking subset is fitted on the same models it is scored on,
so it also prints the honest check: leave one model out, choose the subset with the others, and
measure the held-out model's accuracy error.

    python bench/item_stats.py [--seeds 10] [--share 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate.item_stats import correct_matrix, model_names
from curate.results import read_predictions, score
from curate.subsets import keep_ranking_subset, random_subset, ranking_agreement

SHARED = REPO.parent / "shared" / "data"
SETS = {
    "MMStar": [REPO / "tests/data/mmstar" / f for f in ("llava_next_yi_34b_MMStar.xlsx", "vila_13b_MMStar.xlsx", "vila_8b_MMStar.xlsx")],
    "SEED-Bench": [SHARED / "text_pools/SEEDBench_IMG_vila13b.xlsx", REPO / "tests/data/results/vila_8b_SEEDBench_IMG.xlsx"],
}


def _pts(x: float | None) -> str:
    return "  –  " if x is None else f"{100 * x:+.2f}"


def run(name: str, paths: list[Path], share: float, seeds: int) -> None:
    runs = [read_predictions(p) for p in paths]
    names = model_names(paths)
    cm = correct_matrix(runs, names=names)
    cat = score(runs[0]).select(pl.col("key").alias("item_id"), pl.col("category").fill_null("(none)"))
    cm = cm.join(cat, on="item_id")
    n = round(share * cm.height)
    print(f"\n== {name}: {cm.height:,} items, {len(names)} models, subset {n:,} ({share:.0%})")
    print("full-set accuracy: " + ", ".join(f"{m} {100 * a:.2f} %" for m, a in ranking_agreement(cm, cm["item_id"])["accuracy_full"].items()))
    t = time.perf_counter()
    kr = keep_ranking_subset(cm, n, models=names, strata="category")
    dt = time.perf_counter() - t
    print(f"keep-ranking (stratified by category, {dt:.1f} s): tau {kr.tau}, accuracy error (points) "
          + ", ".join(f"{m} {_pts(d)}" for m, d in kr.accuracy_diff.items()) + f"; max |error| {100 * kr.max_abs_diff:.2f}")
    taus, maxes, per = [], [], {m: [] for m in names}
    for s in range(seeds):
        a = ranking_agreement(cm, random_subset(cm, n, seed=s), names)
        taus.append(a["tau"])
        maxes.append(a["max_abs_diff"])
        for m in names:
            per[m].append(abs(a["accuracy_diff"][m]))
    kept = sum(1 for x in taus if x is not None and x > 0.999)
    print(f"random ({seeds} seeds): tau = 1 in {kept} of {seeds} (taus {sorted({round(x, 3) for x in taus if x is not None})}), "
          f"mean |error| (points) " + ", ".join(f"{m} {100 * statistics.mean(v):.2f}" for m, v in per.items())
          + f"; mean max |error| {100 * statistics.mean(maxes):.2f}, worst {100 * max(maxes):.2f}")
    if len(names) >= 3:
        print(f"held-out model (subset chosen with the other models), mean |accuracy error| over {seeds} seeds, points:")
        for held in names:
            others = [m for m in names if m != held]
            kept = [abs(ranking_agreement(cm, keep_ranking_subset(cm, n, models=others, strata="category", seed=s).item_ids, [held])["accuracy_diff"][held])
                    for s in range(seeds)]
            rnd = [abs(ranking_agreement(cm, random_subset(cm, n, seed=s), [held])["accuracy_diff"][held]) for s in range(seeds)]
            print(f"  {held}: keep-ranking {100 * statistics.mean(kept):.2f} (worst {100 * max(kept):.2f}), "
                  f"random {100 * statistics.mean(rnd):.2f} (worst {100 * max(rnd):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--share", type=float, default=0.25)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    for name, paths in SETS.items():
        if all(p.is_file() for p in paths):
            run(name, paths, args.share, args.seeds)
        else:
            print(f"\n== {name}: skipped (missing {[str(p) for p in paths if not p.is_file()]})")


if __name__ == "__main__":
    main()
