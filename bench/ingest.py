"""Ingest speed and memory: prints rows/s and peak RSS; asserts nothing.

1. The 14,232-row SEED-Bench xlsx (text only; target >= 50,000 rows/s).
2. A VLMEvalKit TSV with images, scaled up from MMBench's real samples to >= 50,000 rows
   (every 4th row shares its image by index, as MMBench's rotated copies do). Target: peak
   RSS under 1 GiB, i.e. memory must not grow with file size.

Each ingest runs in a fresh subprocess so its peak RSS is its own. Wall-clock figures are
noisy on a shared machine, so CPU seconds (time.process_time of the child) are printed too.
The SEED figure is given twice: the first ingest in a fresh process (what one CLI call pays,
including libraries imported lazily on first use -- pyarrow imports pandas when it first
converts Python lists) and a second ingest in the same process (the steady per-row rate).

    python bench/ingest.py [--rows 50000] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

CHILD = r"""
import json, resource, sys, time
from curate.ingest import ingest_to_workspace
runs = []
for i in range(int(sys.argv[3])):
    t, c = time.perf_counter(), time.process_time()
    r = ingest_to_workspace([sys.argv[1]], f"{sys.argv[2]}-{i}")
    runs.append({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c})
print(json.dumps({"rows": r.rows, "items": r.items, "runs": runs,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(src: Path, out: Path, runs: int = 1) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), str(runs)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def rate(rows: int, run: dict) -> str:
    return (f"{run['seconds']:.2f} s wall = {rows / run['seconds']:,.0f} rows/s; "
            f"{run['cpu_seconds']:.2f} s CPU = {rows / run['cpu_seconds']:,.0f} rows/s")


def scaled_tsv(dest: Path, rows: int) -> Path:
    csv.field_size_limit(sys.maxsize)
    with open(SHARED / "vlmevalkit" / "MMBench_samples.tsv", encoding="utf-8", newline="") as fh:
        base = list(csv.DictReader(fh, delimiter="\t"))
    header = list(base[0])
    with open(dest, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, delimiter="\t", quoting=csv.QUOTE_ALL)
        w.writeheader()
        for i in range(rows):
            r = dict(base[i % len(base)])
            r["index"] = str(i)
            if i % 4 == 3:
                r["image"] = str(i - 1)  # shares the previous row's image, by index
            w.writerow(r)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--keep", action="store_true", help="keep the scaled TSV and workspaces")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-bench-"))

    seed = SHARED / "text_pools" / "SEEDBench_IMG_vila13b.xlsx"
    r = run_child(seed, tmp / "ws-seed", runs=2)
    first, steady = r["runs"]
    print(f"SEED-Bench xlsx: {r['rows']:,} rows ({r['items']:,} items), target >= 50,000 rows/s; peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  first ingest in a fresh process: {rate(r['rows'], first)}")
    print(f"  second ingest, same process:     {rate(r['rows'], steady)}")

    t = time.perf_counter()
    tsv = scaled_tsv(tmp / "scaled.tsv", args.rows)
    size_mb = tsv.stat().st_size / 2**20
    print(f"made {tsv.name}: {args.rows:,} rows, {size_mb:,.0f} MB in {time.perf_counter() - t:.1f} s")
    r = run_child(tsv, tmp / "ws-tsv")
    print(f"VLMEvalKit TSV with images: {r['rows']:,} rows in {rate(r['rows'], r['runs'][0])}; "
          f"peak RSS {r['peak_rss_mb']:.0f} MB for a {size_mb:,.0f} MB file (target < 1,024 MB)")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp)
    else:
        print(f"kept {tmp}")


if __name__ == "__main__":
    main()
