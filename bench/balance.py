"""Benchmark the balancer on 100,000 synthetic candidates: seconds and the solver's objective gap.

Target: under 2 s for 1,500 items out of 100,000 on a 2-core machine. The gap is HiGHS's
relative MIP gap (0 = proven optimal). Two scenarios: "easy" (every wish can be met) and
"tight" (thin dimensions, a dominant source and near-duplicate groups straddling cells, so
slacks are non-zero and the solver has to trade wishes off).

    python bench/balance.py [--n 100000] [--total 1500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import polars as pl

from curate.balance import balance, solver_stats
from curate.taxonomy import default_taxonomy

LEVELS = ["easy", "moderate", "hard", "tough"]


def synthetic(n: int, *, seed: int = 0, tight: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dims = [d.name for d in default_taxonomy().dimensions]
    weights = rng.dirichlet(np.ones(len(dims)) * (0.3 if tight else 3.0))
    n_src = 8
    src_p = np.array([0.7] + [0.3 / (n_src - 1)] * (n_src - 1)) if tight else rng.dirichlet(np.ones(n_src) * 3)
    groups = rng.integers(0, n // 20, n)
    in_group = rng.random(n) < (0.3 if tight else 0.05)
    return pl.DataFrame({
        "item_id": [f"bench:{i}" for i in range(n)],
        "source": [f"bench{k}" for k in rng.choice(n_src, n, p=src_p)],
        "source_file": "synthetic", "row": np.arange(1, n + 1),
        "suggested_l2_category": rng.choice(dims, n, p=weights),
        "suggested_prob": rng.random(n),
        "difficulty": rng.choice(LEVELS, n, p=[0.4, 0.3, 0.2, 0.1]),
        "n_images": np.ones(n, dtype=np.int32),  # every candidate has its image (balance skips items without one)
        "near_duplicate_group": pl.Series([f"g{g}" if m else None for g, m in zip(groups, in_group)], dtype=pl.String),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--total", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for name, tight in (("easy", False), ("tight", True)):
        items = synthetic(args.n, tight=tight)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sel, shortfall = balance(items, total=args.total, seed=0)
            times.append(time.perf_counter() - t0)
        st = solver_stats()
        per_cap = sel.group_by("category").len()["len"].to_list()
        print(f"{name:5s}: {args.n:,} candidates -> {sel.height} items in {statistics.median(times):.2f} s "
              f"(median of {args.repeat}; min {min(times):.2f} s) | objective {st['objective']:.4g}, "
              f"gap {st['gap']:.2e}, status {st['status']} | model {st['variables']} vars x {st['constraints']} rows | "
              f"per capability {min(per_cap)}..{max(per_cap)}, {shortfall.height} shortfall rows, "
              f"largest source {sel.group_by('source').len()['len'].max()}")


if __name__ == "__main__":
    main()
