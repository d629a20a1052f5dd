"""Crash tests (issue 13): kill a stage -- by the fault-injection hook at each step of a commit
(``MMCURATE_FAULT=after:<step>``, the process ends with ``os._exit(137)`` as under kill -9) or by a
real SIGKILL at several moments -- and the workspace is the old one or the new one, never a mix;
the next run cleans up and succeeds.

``review push`` is not killed here: it needs a running Label Studio (minutes to start), and its
only workspace write is none (tasks go to the server; the lock it holds is tested with the other
commands in test_workspace_integrity.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curate.workspace import JOURNAL_FILE, Workspace

REPO = Path(__file__).resolve().parents[1]
OLD = "vlmevalkit/MMMU_DEV_VAL_8rows_upstream.tsv"  # the workspace before the run: 8 items
NEW = "vlmevalkit/MMBench_samples.tsv"  # the run adds 54


def cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "curate.cli", *args]


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def state(root: Path) -> tuple[int, int, int]:
    """(items rows, ingest rows kept in the ledger, ingest ledger rows), read as any later command reads them."""
    ws = Workspace(root)
    led = ws.ledger().filter(pl.col("stage") == "ingest")
    return ws.read("items").height, led.filter(pl.col("status") == "kept").height, led.height


def assert_whole(root: Path, expected: set[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The workspace is one of ``expected`` (old or new), agrees with its manifest, and holds no leftovers."""
    got = state(root)
    assert got in expected, f"a mix: {got} is neither of {expected}"
    assert got[0] == got[1]  # ledger kept count == items rows
    assert Workspace(root).verify() == []
    assert not (root / JOURNAL_FILE).exists()
    return got


@pytest.fixture
def old_ws(tmp_path, shared_data) -> Path:
    root = tmp_path / "ws"
    r = run("ingest", str(shared_data / OLD), "--out", str(root))
    assert r.returncode == 0, r.stderr
    return root


OLD_STATE = (8, 8, 8)
NEW_STATE = (62, 62, 62)


@pytest.mark.parametrize("step,expected", [
    ("staged", OLD_STATE),  # files written, journal not: rolled back
    ("journal", NEW_STATE),  # committed, nothing renamed yet: rolled forward
    ("items.parquet", NEW_STATE),  # new items beside the old ledger on disk: rolled forward
    ("ledger.parquet", NEW_STATE),
    ("manifest", NEW_STATE),
])
def test_ingest_killed_at_each_commit_step(old_ws, shared_data, step, expected):
    r = run("ingest", str(shared_data / NEW), "--out", str(old_ws), env={"MMCURATE_FAULT": f"after:{step}"})
    assert r.returncode == 137, r.stderr
    assert_whole(old_ws, {expected})
    again = run("ingest", str(shared_data / NEW), "--out", str(old_ws))  # the next run succeeds
    assert again.returncode == 0, again.stderr
    assert_whole(old_ws, {NEW_STATE})
    assert not list(old_ws.glob(".*.tmp"))  # the killed run's temporaries are gone


@pytest.mark.slow  # several CLI processes, 5-7 s: runs in CI, not in the fast loop
def test_export_killed_between_its_two_renames_keeps_the_old_export(old_ws, tmp_path):
    to = tmp_path / "rel"
    first = run("export", str(old_ws), "--to", str(to), "--format", "jsonl", "--ignore-check", "--allow-no-image")
    assert first.returncode == 0, first.stderr
    old_bytes = (to / "rel.jsonl").read_bytes()
    r = run("export", str(old_ws), "--to", str(to), "--format", "jsonl", "--ignore-check", "--allow-no-image",
            "--overwrite", env={"MMCURATE_FAULT": "after:export-aside"})
    assert r.returncode == 137
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".rel.")]
    assert not to.exists() and any(".old-" in h for h in hidden)  # the state a kill there leaves
    again = run("export", str(old_ws), "--to", str(to), "--format", "jsonl", "--ignore-check", "--allow-no-image",
                "--overwrite")
    assert again.returncode == 0, again.stderr
    assert (to / "rel.jsonl").read_bytes() == old_bytes  # same workspace, same export
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rel.")]  # recovered and cleaned up


def _kill_after(args: list[str], delay: float) -> int:
    proc = subprocess.Popen(cli(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8, 1.6, 2.2, 2.6, 3.0, 3.5])
def test_ingest_sigkill_at_several_moments(old_ws, shared_data, tmp_path, delay):
    big = shared_data / "vlmevalkit/AI2D_TEST_sub309.tsv"
    ref = tmp_path / "ref"
    shutil.copytree(old_ws, ref)
    assert run("ingest", str(big), "--out", str(ref)).returncode == 0
    new_state = state(ref)
    _kill_after(["ingest", str(big), "--out", str(old_ws)], delay)
    assert_whole(old_ws, {OLD_STATE, new_state})
    again = run("ingest", str(big), "--out", str(old_ws))
    assert again.returncode == 0, again.stderr
    assert_whole(old_ws, {new_state})
    assert not list(old_ws.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("delay", [1.5, 2.0, 2.5, 3.0])
def test_export_sigkill_at_several_moments(old_ws, shared_data, tmp_path, delay):
    from curate.export import _recover_export

    assert run("ingest", str(shared_data / NEW), "--out", str(old_ws)).returncode == 0
    to = tmp_path / "rel"
    assert run("export", str(old_ws), "--to", str(to), "--format", "hf", "--ignore-check").returncode == 0
    old_files = sorted(str(p.relative_to(to)) for p in to.rglob("*"))
    tsv = ["export", str(old_ws), "--to", str(to), "--format", "tsv", "--ignore-check", "--overwrite",
           "--allow-uncategorized", "--allow-no-image"]
    code = _kill_after(tsv, delay)
    _recover_export(to)  # what the next export does first
    now = sorted(str(p.relative_to(to)) for p in to.rglob("*"))
    assert now == old_files or now == sorted(["rel.tsv", "README.md", "LICENSE.md"]), (code, now)  # old or new, whole
    again = run(*tsv)
    assert again.returncode == 0, again.stderr
    assert (to / "rel.tsv").is_file() and not (to / "dataset_dict.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rel.")] == []


@pytest.mark.slow
# One real model run per step costs minutes on 2 cores; the step between the two renames is the one a
# half-committed workspace would show (every step is covered, without a model, by the ingest fault tests above).
@pytest.mark.parametrize("step", ["screened.parquet"])
def test_screen_killed_at_commit_steps_with_the_tiny_panel(old_ws, tmp_path, step):
    panel = REPO / "data" / "panel_tiny.toml"
    args = ["screen", str(old_ws), "--panel", str(panel), "--limit", "4", "--no-progress", "--cache", str(tmp_path / "c.sqlite")]
    r = run(*args, env={"MMCURATE_FAULT": f"after:{step}"}, timeout=900)
    assert r.returncode == 137, r.stderr[-2000:]
    ws = Workspace(old_ws)
    screened, led = ws.read("screened"), ws.ledger().filter(pl.col("stage") == "screen")
    assert screened.height + led.filter(pl.col("reason") == "unaskable").height == led.height == 4  # rolled forward whole
    assert json.loads((old_ws / "screen_report.json").read_text())["n_items"] == 4
    assert ws.verify() == []
    again = run(*args, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
