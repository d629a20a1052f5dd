"""Throughput of the rule filters on real benchmark files (prints figures; asserts nothing).

    python bench/rules.py [--data ../shared/data]

Times each check on the 14,232-row SEED-Bench pool (text only, ~14k items after ingest) and
on the image TSVs, and prints rows/s and what was found. Near-duplicate search is quadratic
in compute (chunked sparse products) but linear in memory; the figures show where it stands.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

from curate.ingest import ingest
from filters.rules import CHECKS, RuleConfig, run_rules

REPO = Path(__file__).resolve().parents[1]


def bench_file(path: Path, config: RuleConfig) -> None:
    t0 = time.perf_counter()
    items = ingest([path])
    print(f"\n{path.name}: {items.height} items (ingest {time.perf_counter() - t0:.1f} s)")
    for name in config.enabled:
        t0 = time.perf_counter()
        out = CHECKS[name](items, config)
        dt = time.perf_counter() - t0
        line = f"  {name:16s} {dt:7.2f} s  {items.height / dt:10,.0f} rows/s  flagged {out[f'{name}_flag'].sum():6d}"
        if f"{name}_group" in out.columns:
            line += f"  groups {out[f'{name}_group'].drop_nulls().n_unique()}"
        print(line)
    t0 = time.perf_counter()
    out = run_rules(items, config)
    dt = time.perf_counter() - t0
    print(f"  {'run_rules':16s} {dt:7.2f} s  {items.height / dt:10,.0f} rows/s  dropped {out['rule_drop'].sum()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    config = RuleConfig()
    print(f"rules config {config.digest()}: {config.as_dict()}")
    for rel in (
        "text_pools/SEEDBench_IMG_vila13b.xlsx",
        "text_pools/MMBench_DEV_llava13b.xlsx",
        "text_pools/ScienceQA_TEST_vila13b.xlsx",
        "vlmevalkit/AI2D_TEST_sub309.tsv",
        "vlmevalkit/MMBench_samples.tsv",
    ):
        path = args.data / rel
        if path.exists():
            bench_file(path, config)
        else:
            print(f"\n{rel}: not found under {args.data}, skipped")
    # scale: ~20k items across sources, as a user's merged pool would be
    paths = [args.data / r for r in ("text_pools/SEEDBench_IMG_vila13b.xlsx", "text_pools/MMBench_DEV_llava13b.xlsx",
                                     "text_pools/ScienceQA_TEST_vila13b.xlsx")]
    if all(p.exists() for p in paths):
        items = pl.concat([ingest([p]) for p in paths])
        t0 = time.perf_counter()
        out = CHECKS["near_duplicate"](items, config)
        dt = time.perf_counter() - t0
        cross = out.filter(pl.col("near_duplicate_flag")).join(items.select("item_id", "source"), on="item_id")
        cross = cross.filter(~pl.col("near_duplicate_group").str.starts_with(pl.col("source")))
        print(f"\nnear_duplicate on {items.height} items from 3 sources: {dt:.1f} s ({items.height / dt:,.0f} rows/s), "
              f"flagged {out['near_duplicate_flag'].sum()}, of which across sources {cross.height}")


if __name__ == "__main__":
    main()
