"""Push and pull speed of the review stage against a real local Label Studio.

Builds 2,000 items with real images (AI2D test sample + MMBench samples from ../shared/data,
repeated with distinct item_ids), starts Label Studio on a free 127.0.0.1 port (from the test
template in ~/.cache/mmcurate when present: ~4 s, else a fresh data dir: ~1 min), and prints
tasks/s for: push (inline images and local-file images), an idempotent re-push, three reviewers'
annotations on 100 tasks, and pull (export + decide + write reviewed.parquet).

    python bench/review.py [--n 2000] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from annotation.client import ReviewClient, push_workspace  # noqa: E402
from annotation.server import free_port, label_studio_version, load_secret, start_server  # noqa: E402
from annotation.verdicts import pull  # noqa: E402
from curate.ingest import ingest  # noqa: E402
from curate.workspace import Workspace  # noqa: E402


def build_items(shared: Path, n: int, workdir: Path) -> pl.DataFrame:
    src = ingest([shared / "vlmevalkit" / "AI2D_TEST_sub309.tsv", shared / "vlmevalkit" / "MMBench_samples.tsv"], out=workdir / "src")
    reps = -(-n // src.height)
    items = pl.concat([src.with_columns(pl.col("item_id") + f"#{k}") for k in range(reps)]).head(n)
    return items


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-bench-review-"))
    items = build_items(args.shared, args.n, tmp)
    mb = items.select(pl.col("images").list.eval(pl.element().struct.field("bytes").bin.size()).list.sum().sum()).item() / 2**20
    print(f"{items.height} items, {items['n_images'].sum()} images, {mb:.1f} MiB of image bytes")

    template = Path.home() / ".cache" / "mmcurate" / f"ls-template-{label_studio_version()}"
    t0 = time.perf_counter()
    server = start_server(tmp / "ws", free_port(), template=template if (template / ".label_studio" / "data").is_dir() else None, timeout=300)
    print(f"server ready in {time.perf_counter() - t0:.1f} s at {server.url}")
    try:
        ws = Workspace(tmp / "ws")
        ws.write("items", items)
        client = ReviewClient(server.url, load_secret(ws.root).token)
        for mode in ("inline", "local"):
            t0 = time.perf_counter()
            res = push_workspace(ws.root, client, f"bench {mode}", image_mode=mode)
            dt = time.perf_counter() - t0
            print(f"push {mode:6s}: {res.pushed} tasks in {dt:.1f} s = {res.pushed / dt:.0f} tasks/s ({res.batches} batches)")
        t0 = time.perf_counter()
        res = push_workspace(ws.root, client, "bench inline", image_mode="inline")
        dt = time.perf_counter() - t0
        print(f"re-push (nothing new): {res.already} checked, {res.pushed} imported in {dt:.1f} s = {res.already / dt:.0f} tasks/s")

        ls = client.ls
        pid = client.project_id("bench inline")
        tasks = list(ls.tasks.list(project=pid, fields="task_only", page_size=100))[:100]
        users = [ls.users.create(username=f"r{i}", email=f"r{i}@bench.test").id for i in range(3)]
        t0 = time.perf_counter()
        for task in tasks:
            for uid in users:
                ls.annotations.create(id=task.id, completed_by=uid, request_options={"max_retries": 0}, result=[
                    {"from_name": "needs_image", "to_name": "question", "type": "choices", "value": {"choices": ["yes"]}},
                    {"from_name": "key_correct", "to_name": "question", "type": "choices", "value": {"choices": ["yes"]}},
                    {"from_name": "dimension", "to_name": "question", "type": "choices", "value": {"choices": ["diagram reasoning"]}},
                ])
        dt = time.perf_counter() - t0
        print(f"annotations posted: {3 * len(tasks)} in {dt:.1f} s = {3 * len(tasks) / dt:.0f}/s")
        t0 = time.perf_counter()
        result = pull(ws.root, client, "bench inline")
        dt = time.perf_counter() - t0
        print(f"pull: {result.table.height} items decided in {dt:.1f} s = {result.table.height / dt:.0f} tasks/s; {result.counts}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
