"""The stage registry (curate/stages.py) as the workspace uses it: file names, the item contract on
every write, and annotations -- the one visible way to add columns to another stage's file."""

from __future__ import annotations

import polars as pl
import pytest

from curate.errors import UserError
from curate.ingest import ingest_to_workspace
from curate.stages import ANNOTATIONS, STAGES, newest_first
from curate.workspace import Workspace


@pytest.fixture()
def ws(tmp_path, shared_data) -> Workspace:
    ingest_to_workspace([shared_data / "vlmevalkit" / "MMBench_samples.tsv"], tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_registry_is_in_pipeline_order_and_each_stage_reads_earlier_ones():
    names = [s.name for s in STAGES]
    assert names == ["items", "screened", "reviewed", "balanced"]
    for k, s in enumerate(STAGES):
        assert set(s.reads) <= set(names[:k]), s
        assert s.file == f"{s.name}.parquet"
    assert newest_first() == ("balanced", "reviewed", "screened", "items")
    assert newest_first(("items", "reviewed")) == ("reviewed", "items")
    assert {a.name for a in ANNOTATIONS} == {"difficulty", "suggest", "item_stats"}


def test_write_refuses_a_table_that_breaks_the_item_contract(ws):
    items = ws.read("items")
    before = ws.path("items").read_bytes()
    for broken, why in [
        (items.drop("answer"), "answer"),
        (pl.concat([items, items.head(1)]), "item_id must be unique"),
        (items.with_columns(answer=pl.lit("AB")), "options/answer contract"),
    ]:
        with pytest.raises(UserError, match=why):
            ws.write("screened", broken)
    assert not ws.has("screened")
    assert ws.path("items").read_bytes() == before


def test_annotate_adds_columns_to_the_newest_stage_by_item_id(ws):
    items = ws.read("items")
    ws.write("screened", items)
    ids = items["item_id"].to_list()
    cols = pl.DataFrame({"item_id": ids[:3][::-1], "n_solvers": [3, 2, 1], "n_models": [3, 3, 3],
                         "difficulty": ["easy", "moderate", "tough"]})
    stage, path = ws.annotate("difficulty", cols)
    assert stage == "screened" and path == ws.path("screened")
    out = ws.read("screened")
    assert out["item_id"].to_list() == ids  # order and rows kept
    assert out["n_solvers"].to_list()[:3] == [1, 2, 3] and out["n_solvers"].null_count() == len(ids) - 3
    assert ws.read("items").columns == items.columns  # the older stage is untouched
    # A second annotation of the same name replaces its columns instead of adding n_solvers_right.
    ws.annotate("difficulty", cols.with_columns(n_solvers=pl.lit(0)))
    again = ws.read("screened")
    assert again.columns == out.columns and again["n_solvers"].to_list()[:3] == [0, 0, 0]


def test_annotate_refuses_columns_it_does_not_own(ws):
    items = ws.read("items")
    with pytest.raises(UserError, match="annotation 'difficulty' adds"):
        ws.annotate("difficulty", items.select("item_id", "answer"))
