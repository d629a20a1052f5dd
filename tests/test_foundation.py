"""The package itself: taxonomy strings, shipped assets in the wheel, workspace contract."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest

from curate.errors import UserError
from curate.schema import LEDGER_SCHEMA, SchemaError, conform, validate_items, ITEM_SCHEMA
from curate.taxonomy import EXPECTED, default_taxonomy, load_taxonomy
from curate.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def test_taxonomy_has_mmstar_released_strings():
    tax = default_taxonomy()
    assert [c.name for c in tax.capabilities] == list(EXPECTED)
    assert len(tax.dimensions) == 18
    assert tax.capability_of("electronics & energy & mechanical eng.") == "science & technology"
    assert tax.map_category("SEEDBench_IMG", "Instances Counting") == "object counting"
    assert tax.map_category("MMBench_DEV_EN", "Finegrained Perception (instance-level): OCR") == "recognition"
    assert tax.map_category("SEEDBench_IMG", "no such category") is None
    assert tax.map_category("unknown_bench", "Instances Counting") is None  # mappings are per source family


def test_taxonomy_typo_is_a_clear_error(tmp_path):
    text = (REPO / "data" / "taxonomy.toml").read_text()
    bad = tmp_path / "taxonomy.toml"
    bad.write_text(text.replace('"Instances Counting" = "object counting"', '"Instances Counting" = "object countng"'))
    with pytest.raises(UserError, match="unknown dimension 'object countng'"):
        load_taxonomy(bad)
    bad.write_text(text.replace("[[capability.dimension]]\n  name = \"recognition\"", "[[capability.dimension]]\n  nmae = \"recognition\"", 1))
    with pytest.raises(UserError, match="lacks field 'name'"):
        load_taxonomy(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[capability]\nname=")
    with pytest.raises(UserError, match="cannot read taxonomy"):
        load_taxonomy(broken)


def test_schema_validation_names_the_problem():
    df = conform(pl.DataFrame({"item_id": ["a", "a"], "options": [["x", "y"], ["x", "y"]], "answer": ["A", "B"]}), ITEM_SCHEMA)
    with pytest.raises(SchemaError, match="unique"):
        validate_items(df)
    with pytest.raises(SchemaError, match="lacks column"):
        validate_items(pl.DataFrame({"item_id": ["a"]}))


def test_ledger_record_replaces_rows_of_a_rerun(tmp_path):
    ws = Workspace(tmp_path, create=True)
    rows = pl.DataFrame({"source_file": ["f"], "row": [1], "item_id": ["s:1"], "status": ["kept"], "reason": [None], "field": [None], "detail": [None]}, schema_overrides={k: v for k, v in LEDGER_SCHEMA.items()})
    ws.record("screen", rows)
    ws.record("screen", rows)
    assert ws.ledger().height == 1
    with pytest.raises(SchemaError, match="unknown status"):
        ws.record("screen", rows.with_columns(pl.lit("maybe").alias("status")))
    with pytest.raises(UserError, match="stage file missing"):
        ws.read("balanced")
    with pytest.raises(UserError, match="no such workspace"):
        Workspace(tmp_path / "nope")


def test_wheel_ships_the_data_assets(tmp_path):
    """data/ (taxonomy, demo pool, panels) must be inside the wheel, not only in a checkout."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("mmcurate-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("data/taxonomy.toml", "data/demo/mmbench_samples.tsv", "data/demo/easy_vqa_mcq.jsonl", "curate/ingest.py", "filters/__init__.py", "annotation/__init__.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert any(n.startswith("data/demo/images/") and n.endswith(".png") for n in names)
    assert "mmcurate = curate.cli:main" in zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
