"""The stage registry (curate/stages.py) as the workspace uses it: file names, the item contract on
every write, and annotations -- the one visible way to add columns to another stage's file."""

from __future__ import annotations

import polars as pl
import pytest

from curate.errors import UserError
from curate.ingest import ingest_to_workspace
from curate.stages import ANNOTATIONS, STAGES, missing_columns, newest_first, stage
from curate.workspace import Workspace


def by_hand(items: pl.DataFrame) -> pl.DataFrame:
    """Items with the columns every screened file holds (one member that always answers A), no model run."""
    return items.with_columns(answer__a=pl.lit("A"), hits=(pl.col("answer") == "A").cast(pl.Int32),
                              n_members=pl.lit(1, pl.Int32)).with_columns(blind=pl.col("hits") > 0)


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
    items = by_hand(ws.read("items"))
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
    ws.write("screened", by_hand(items))
    ids = items["item_id"].to_list()
    cols = pl.DataFrame({"item_id": ids[:3][::-1], "n_solvers": [3, 2, 1], "n_models": [3, 3, 3],
                         "difficulty": ["easy", "moderate", "tough"]})
    stage, path = ws.annotate("difficulty", cols)
    assert stage == "screened" and path == ws.path("screened")
    out = ws.read("screened")
    assert out["item_id"].to_list() == ids  # order and rows kept
    assert out["n_solvers"].to_list()[:3] == [1, 2, 3] and out["n_solvers"].null_count() == len(ids) - 3
    assert ws.read("items").columns == items.columns  # the older stage is untouched
    assert out.columns == [*by_hand(items).columns, "n_solvers", "n_models", "difficulty"]
    # A second annotation of the same name replaces its columns instead of adding n_solvers_right.
    ws.annotate("difficulty", cols.with_columns(n_solvers=pl.lit(0)))
    again = ws.read("screened")
    assert again.columns == out.columns and again["n_solvers"].to_list()[:3] == [0, 0, 0]


def test_annotate_refuses_columns_it_does_not_own(ws):
    items = ws.read("items")
    before = ws.path("items").read_bytes()
    with pytest.raises(UserError, match=r"annotation 'difficulty' may not add column\(s\) \['answer'\]: it declares only "
                                        r"\['n_solvers', 'n_models', 'difficulty'\]"):
        ws.annotate("difficulty", items.select("item_id", "answer"))
    with pytest.raises(UserError, match="may not add column\\(s\\) \\['suggested_l2_category'\\]"):
        ws.annotate("difficulty", items.select("item_id").with_columns(difficulty=pl.lit("easy"), suggested_l2_category=pl.lit("x")))
    with pytest.raises(UserError, match="joins by item_id"):
        ws.annotate("suggest", items.select(suggested_by=pl.lit("knn")))
    assert ws.path("items").read_bytes() == before


def test_annotate_with_the_callers_table_reads_nothing_twice(ws, monkeypatch):
    base = ws.annotation_base("suggest")
    assert base[0] == "items" and base[1].equals(ws.read("items"))
    cols = base[1].select("item_id", suggested_by=pl.lit("knn"))
    calls = []
    monkeypatch.setattr(Workspace, "read", lambda self, stage: calls.append(stage) or pytest.fail("read again"))
    stage, _ = ws.annotate("suggest", cols, base=base)
    monkeypatch.undo()
    assert stage == "items" and calls == []
    assert ws.read("items").drop("suggested_by").equals(base[1]) and ws.read("items")["suggested_by"].unique().to_list() == ["knn"]
    # A stale or altered table is refused, never written over the file.
    with pytest.raises(ValueError, match="base is not the current items.parquet"):
        ws.annotate("suggest", cols, base=("items", base[1].head(3)))
    with pytest.raises(ValueError, match="base is not the current items.parquet"):
        ws.annotate("suggest", cols, base=base)  # the file gained suggested_by since
    ws.write("screened", by_hand(ws.read("items")))
    with pytest.raises(ValueError, match="base is not the current screened.parquet"):
        ws.annotate("suggest", cols, base=("items", ws.read("items")))  # no longer the newest stage


def test_write_checks_the_columns_the_stage_declares(ws):
    items = ws.read("items")
    with pytest.raises(UserError, match=r"screened.parquet \(stage 'screened'\) lacks the column\(s\) "
                                        r"\['answer__<member>', 'hits', 'n_members', 'blind'\] that stage adds"):
        ws.write("screened", items)
    with pytest.raises(UserError, match=r"lacks the column\(s\) \['blind'\]"):
        ws.write("screened", by_hand(items).drop("blind"))
    with pytest.raises(UserError, match=r"reviewed.parquet \(stage 'reviewed'\) lacks the column\(s\) \['review_n', "):
        ws.write("reviewed", by_hand(items))
    assert not ws.has("screened") and not ws.has("reviewed")
    ws.write("screened", by_hand(items))  # the screen's optional columns (older files, rules off) are not required
    ws.write("balanced", items.head(5))  # balance selects rows and declares no column of its own


def test_missing_columns_reads_member_prefixes_per_member():
    adds = ("answer__*", "hit__*", "hits")
    assert missing_columns(adds, ["answer__a", "hit__a", "answer__b", "hits"]) == ["hit__b"]
    assert missing_columns(adds, ["hit__a"]) == ["answer__<member>", "hit__<member>", "hits"]
    assert missing_columns(stage("balanced").adds, []) == []
    for s in STAGES:  # a column is either always written or declared optional, never both
        assert not set(s.adds) & set(s.may_add), s.name
