"""The installed ``mmcurate`` console script: usage errors, --version, --json summaries, check's exit
codes, log-friendly output and no ResourceWarning -- run as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO

MMCURATE = Path(sys.executable).with_name("mmcurate")
AI2D = "vlmevalkit/AI2D_TEST_sub309.tsv"


def run(*args: str, env: dict | None = None, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the console script with stdout and stderr piped (not a terminal), as in a log or CI."""
    if not MMCURATE.exists():
        pytest.skip(f"{MMCURATE} not installed (pip install -e .)")
    full_env = {**os.environ, **(env or {})}
    full_env.pop("COLUMNS", None)
    return subprocess.run([*(cmd or [str(MMCURATE)]), *args], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("args", [
    ["ingest"],                                   # no source
    ["ingest", "x.tsv"],                          # no --out
    ["ingest", "x.tsv", "--out", "ws", "--bogus"],  # unknown option
    ["nosuchcommand"],
    ["status"],
    ["balance", "ws", "--total", "many"],         # not an integer
    ["check"],
])
def test_usage_errors_are_one_line_and_exit_2(args):
    res = run(*args)
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "--help" in lines[0]


def test_user_error_is_one_line_and_exit_2(tmp_path):
    res = run("ingest", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "ws"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"error: {tmp_path / 'missing.tsv'}: no such file or folder"


def test_version():
    res = run("--version")
    assert res.returncode == 0
    assert res.stdout == f"mmcurate {version('mmcurate')}\n"


@pytest.fixture(scope="module")
def ai2d_ws(shared_data, tmp_path_factory) -> tuple[Path, dict]:
    ws = tmp_path_factory.mktemp("cli") / "ws"
    res = run("ingest", str(shared_data / AI2D), "--out", str(ws), "--json")
    assert res.returncode == 0, res.stderr
    return ws, json.loads(res.stdout)


def test_ingest_json_counts(ai2d_ws, shared_data):
    ws, obj = ai2d_ws
    ledger = pl.read_parquet(ws / "ledger.parquet")
    items = pl.read_parquet(ws / "items.parquet")
    assert obj["rows"] == 309 == ledger.height  # every row of the file
    assert obj["items"] == items.height == obj["kept"]
    assert obj["kept"] + obj["dropped"] + obj["quarantined"] == 309
    (src,) = obj["sources"]
    assert src["source"] == "AI2D_TEST_sub309" and src["format"] == "tsv"
    noted = ledger.filter(pl.col("reason").is_not_null()).group_by("status", "reason").len()
    assert {(r["status"], r["reason"]): r["rows"] for r in src["reasons"]} == {(s, r): n for s, r, n in noted.rows()}


def test_status_json(ai2d_ws):
    ws, ingested = ai2d_ws
    res = run("status", str(ws), "--json", "--rows")
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert obj["stages"] == {"items": ingested["items"]}
    assert obj["ledger_totals"]["ingest"] == {k: ingested[k] for k in ("kept", "dropped", "quarantined")}
    assert sum(r["rows"] for r in obj["ledger"]) == 309
    ledger = pl.read_parquet(ws / "ledger.parquet")
    listed = ledger.filter((pl.col("status") != "kept") | pl.col("reason").is_not_null())  # kept with a note too
    assert [(r["row"], r["reason"]) for r in obj["rows"]] == listed.select("row", "reason").rows()


def test_check_json_and_exit_codes(ai2d_ws, tmp_path):
    ws, ingested = ai2d_ws
    res = run("check", str(ws), "--json")
    obj = json.loads(res.stdout)
    assert res.returncode == 0 and obj["ok"] and obj["errors"] == 0  # AI2D's flaws are warnings
    assert obj["warnings"] == len(obj["problems"]) == 2
    assert {p["code"] for p in obj["problems"]} == {"na_option", "duplicate_options"}
    bad = tmp_path / "bad"
    shutil.copytree(ws, bad)
    items = pl.read_parquet(bad / "items.parquet")
    items.with_columns(category=pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise("category")).write_parquet(bad / "items.parquet")
    res = run("check", str(bad), "--json")
    obj = json.loads(res.stdout)
    assert res.returncode == 1 and not obj["ok"] and obj["errors"] == 1
    (missing,) = [p for p in obj["problems"] if p["severity"] == "error"]
    assert missing["code"] == "missing_category" and missing["item_ids"] == items["item_id"].head(3).to_list()
    table = run("check", str(bad))
    assert table.returncode == 1 and "missing_category" in table.stdout and "not releasable" in table.stdout


def test_balance_json_on_the_demo_pool(tmp_path):
    demo = sorted((REPO / "data" / "demo").glob("*.tsv")) + sorted((REPO / "data" / "demo").glob("*.jsonl"))
    ws = tmp_path / "ws"
    assert run("ingest", *map(str, demo), "--out", str(ws), "--json").returncode == 0
    res = run("balance", str(ws), "--total", "60", "--json")
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    balanced = pl.read_parquet(ws / "balanced.parquet")
    assert obj["selected"] == balanced.height and obj["input_stage"] == "items"
    assert sum(d["items"] for d in obj["by_dimension"]) == balanced.height
    counts = balanced.group_by("category", "l2_category").len()
    assert {(d["category"], d["l2_category"]): d["items"] for d in obj["by_dimension"]} == {(c, d): n for c, d, n in counts.rows()}
    assert obj["selected"] < 60 and obj["shortfall"]  # the demo pool is thin in places


def test_tables_are_not_wrapped_at_80_columns_in_a_log(shared_data, tmp_path):
    """stdout piped to a file: a table row wider than 80 columns stays on one line."""
    name = "AI2D_test_subset_with_a_long_source_name_to_push_the_table_past_eighty_columns"
    res = run("ingest", str(shared_data / AI2D), "--out", str(tmp_path / "ws"), "--name", name)
    assert res.returncode == 0, res.stderr
    row = [ln for ln in res.stdout.splitlines() if name in ln]
    assert row and len(row[0]) > 80 and "309" in row[0]


@pytest.mark.slow  # several CLI processes, 5-7 s: runs in CI, not in the fast loop
def test_no_resource_warning(shared_data, tmp_path):
    """ingest of a real TSV (+ the demo pool, for balance), status and balance under -X dev, ResourceWarning shown."""
    python = [sys.executable, "-X", "dev", "-W", "always::ResourceWarning", "-m", "curate.cli"]
    demo = sorted((REPO / "data" / "demo").glob("*.tsv")) + sorted((REPO / "data" / "demo").glob("*.jsonl"))
    ws = str(tmp_path / "ws")
    for args in (["ingest", str(shared_data / AI2D), *map(str, demo), "--out", ws],
                 ["status", ws, "--rows"],
                 ["balance", ws, "--total", "60"]):
        res = run(*args, cmd=python)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        assert "ResourceWarning" not in res.stderr and "unclosed" not in res.stderr, res.stderr


def test_wheel_ships_every_package_and_data_file(tmp_path):
    """A copy of the sources built without network: every module and data file is in the wheel, and
    setuptools warns about no package it would leave out (curate.formats and filters.backends were)."""
    import zipfile

    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "curate", "filters", "annotation", "data"],
                             cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    files = [f for f in tracked.stdout.splitlines() if (REPO / f).is_file()]
    files += [str(p.relative_to(REPO)) for d in ("curate", "filters", "annotation") for p in (REPO / d).rglob("*.py")]
    src = tmp_path / "src"
    for f in set(files):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "would be ignored" not in res.stdout + res.stderr
    (wheel,) = (tmp_path / "whl").glob("mmcurate-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f for f in set(files) if f.startswith(("curate/", "filters/", "annotation/", "data/"))}
    assert wanted - shipped == set()
    assert {"curate/formats/vlmevalkit.py", "filters/backends/llamacpp.py", "data/demo/images/14.png"} <= shipped
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) or "__pycache__" in n for n in shipped)
