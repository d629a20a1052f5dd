"""The whole pipeline as a user runs it: `mmcurate demo`, `mmcurate run config.toml`, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest

from curate.errors import UserError
from curate.pipeline import load_config

REPO = Path(__file__).resolve().parents[1]


def mmcurate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    res = mmcurate("demo", "--quick", "--workdir", "demo", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ws = tmp_path / "demo"
    for name in ("items.parquet", "screened.parquet", "balanced.parquet", "ledger.parquet", "screen_report.json"):
        assert (ws / name).is_file(), name
    ledger = pl.read_parquet(ws / "ledger.parquet")
    ingest = ledger.filter(pl.col("stage") == "ingest")
    demo_rows = sum(1 for f in (REPO / "data" / "demo").glob("*.jsonl") for _ in f.open()) + 54
    assert ingest.height == demo_rows  # every input row accounted for
    screened = pl.read_parquet(ws / "screened.parquet")
    assert {"hits", "n_members", "blind", "rule_drop"} <= set(screened.columns)
    assert ledger.filter(pl.col("stage") == "screen").height == screened.height
    balanced = pl.read_parquet(ws / "balanced.parquet")
    assert 0 < balanced.height <= 60
    assert not balanced["blind"].any() and not balanced["rule_drop"].any()  # only survivors are selected
    assert set(balanced["category"]) <= {"coarse perception", "fine-grained perception", "instance reasoning", "logical reasoning", "science & technology", "math"}
    hf = datasets.load_from_disk(str(ws / "export" / "hf"))
    assert hf["test"].num_rows == balanced.height
    assert (ws / "export" / "tsv" / "tsv.tsv").is_file()
    assert "what happened to every input row" in res.stdout

    before = {p.name: p.stat().st_mtime_ns for p in ws.glob("*.parquet")}
    again = mmcurate("demo", "--quick", "--workdir", "demo", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "items.parquet exists: skipped" in again.stdout
    assert "screened.parquet is up to date: skipped" in again.stdout
    assert "balanced.parquet is up to date: skipped" in again.stdout
    after = {p.name: p.stat().st_mtime_ns for p in ws.glob("*.parquet") if p.name != "ledger.parquet"}
    assert all(after[k] == before[k] for k in after)


def test_run_config_errors_are_one_line(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('workdir = "ws"\n[ingest]\nsources = ["a.tsv"]\n[balanse]\ntotal = 10\n')
    with pytest.raises(UserError, match=r"unknown key 'balanse'"):
        load_config(cfg)
    cfg.write_text('workdir = "ws"\n[ingest]\nsources = ["a.tsv"]\n[balance]\ntotl = 10\n')
    with pytest.raises(UserError, match=r"unknown key 'totl' in \[balance\] \(did you mean 'total'\?\)"):
        load_config(cfg)
    res = mmcurate("run", str(cfg), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:")


@pytest.mark.parametrize("top, section, message", [
    ('seed = "x"\n', "", r"run.toml: seed = 'x' is invalid; it must be an integer >= 0"),
    ("seed = -1\n", "", r"run.toml: seed = -1 is out of range; it must be an integer >= 0"),
    ("balance = 3\n", "", r"balance = 3 is invalid; write it as a \[balance\] section"),
    ("", '[balance]\ntotal = "1500"\n', r"balance.total = '1500' is invalid; it must be an integer >= 1"),
    ("", '[balance]\nstrict = "yes"\n', r"balance.strict = 'yes' is invalid; it must be a boolean \(true/false\)"),
    ("", '[export]\nformats = "hf"\n', r"export.formats = 'hf' is invalid; it must be a list of str"),
    ("", "[export]\nformats = [1]\n", r"export.formats = \[1\] is invalid"),
])
def test_run_config_values_are_checked_with_the_fix(tmp_path, top, section, message):
    """Every config error names the file, the parameter, the value and what it must be -- never a bare ValueError."""
    cfg = tmp_path / "run.toml"
    cfg.write_text('workdir = "ws"\n' + top + '[ingest]\nsources = ["a.tsv"]\n' + section)
    with pytest.raises(UserError, match=message):
        load_config(cfg)


def test_run_config_syntax_error_is_one_line(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("workdir = \n")
    with pytest.raises(UserError, match=r"run.toml: not valid TOML"):
        load_config(cfg)


def test_run_config_paths_are_relative_to_the_file(tmp_path, shared_data):
    cfg = tmp_path / "conf" / "run.toml"
    cfg.parent.mkdir()
    src = shared_data / "vlmevalkit" / "MMBench_samples.tsv"
    cfg.write_text(f'workdir = "../ws"\n[ingest]\nsources = ["{src}"]\n[balance]\ntotal = 12\n[export]\nto = "out"\nformats = ["jsonl"]\n')
    conf = load_config(cfg)
    assert conf.workdir == tmp_path / "ws" and conf.export_dir == cfg.parent / "out" and conf.total == 12
    res = mmcurate("run", str(cfg), "--until", "ingest", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert pl.read_parquet(tmp_path / "ws" / "items.parquet").height == 54
    assert not (tmp_path / "ws" / "screened.parquet").exists()


def test_pipeline_yields_each_stage_and_prints_nothing(tmp_path, capsys):
    """The library runs the stages and reports them as events (the CLI prints them): nothing reaches stdout or
    stderr from curate.pipeline itself, a rerun reports the skip, and the closing ledger summary is the same
    every run (ties among the top reasons broken by name)."""
    import dataclasses

    from curate.pipeline import Finished, Ingested, Note, StageStarted, demo_config, pipeline_steps

    demo = demo_config(tmp_path / "ws")
    cfg = dataclasses.replace(demo, sources=tuple(s for s in demo.sources if s.name in ("mmbench_samples.tsv", "flawed_rows.jsonl")))
    events = list(pipeline_steps(cfg, until="ingest"))
    assert [type(e) for e in events] == [StageStarted, Ingested, Finished]
    assert events[0] == StageStarted(1, "ingest") and events[1].result.items == 55
    summary = events[2].ledger
    assert summary.columns == ["stage", "kept", "dropped", "quarantined", "top_reasons"]
    # five flawed rows, each with its own reason (one count each): the first three by name
    assert summary.rows() == [("ingest", 55, 1, 4, "answer_not_in_options 1, empty_question 1, image_missing 1")]
    again = list(pipeline_steps(cfg, until="ingest"))
    assert again[1] == Note("items.parquet exists: skipped (--fresh starts over)")
    assert again[2].ledger.equals(summary)
    assert capsys.readouterr() == ("", "")
