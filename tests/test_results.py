"""One rule matches result-file keys to items (issue #14, D2): ``metrics --items``, ``difficulty`` and
``item-stats`` read the same real MMStar result file against the same items and must agree."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest

from curate.difficulty import add_difficulty, solver_counts
from curate.errors import UserError
from curate.item_stats import answers_table
from curate.results import item_key_column, match_items, read_predictions
from curate.workspace import Workspace

RESULT = Path(__file__).parent / "data" / "mmstar" / "vila_13b_MMStar.xlsx"


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> pl.DataFrame:
    from curate.ingest import ingest_to_workspace

    ws_dir = tmp_path_factory.mktemp("results") / "ws"
    ingest_to_workspace([RESULT], out=ws_dir)
    ws = Workspace(ws_dir)
    return ws.read(ws.newest()).head(400)


@pytest.fixture(scope="module")
def run():
    return read_predictions(RESULT)


def _matched_by_each(run, items: pl.DataFrame) -> dict[str, list[str]]:
    """The item_ids each of the three users matched the run's keys to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1,100 keys name items outside the 400: warned, not the point here
        joined = read_predictions(RESULT, items=items).table
        diff, _ = add_difficulty(items, solver_counts([run]))
        long = answers_table([run], items)
    by_key = dict(match_items(joined["key"], items).iter_rows())
    return {
        "metrics": sorted(by_key[k] for k in joined["key"].to_list()),
        "difficulty": sorted(diff.filter(pl.col("difficulty").is_not_null())["item_id"].to_list()),
        "item_stats": sorted(long["item_id"].to_list()),
    }


def test_source_index_keys_match_the_same_items_everywhere(run, items):
    assert item_key_column(items, run.table["key"]) == "orig_index"  # VLMEvalKit's `index`, kept as orig_index
    matched = _matched_by_each(run, items)
    assert len(matched["metrics"]) == 400
    assert matched["metrics"] == matched["difficulty"] == matched["item_stats"] == sorted(items["item_id"].to_list())


def test_item_id_keys_win_over_source_indices(items):
    ids = items["item_id"].head(5)
    keyed = pl.Series("key", [*ids.to_list(), "1"])  # "1" is a source index, but item_ids name the items here
    assert item_key_column(items, keyed) == "item_id"
    m = match_items(keyed, items)
    assert pl.DataFrame({"key": keyed}).join(m, on="key", how="left")["item_id"].to_list() == [*ids.to_list(), None]


def test_an_index_in_two_sources_is_refused_by_all_three(run, items):
    other = items.with_columns(source=pl.lit("copy"), item_id=pl.concat_str(pl.lit("copy:"), "orig_index"))
    both = pl.concat([items, other])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for call in (lambda: read_predictions(RESULT, items=both), lambda: add_difficulty(both, solver_counts([run])),
                     lambda: answers_table([run], both)):
            with pytest.raises(UserError, match="occurs in several sources"):
                call()
        # one source named: unambiguous again, and the same items as before
        assert sorted(answers_table([run], both, source=items["source"][0])["item_id"].to_list()) == sorted(items["item_id"].to_list())


def test_every_result_format_is_read_by_ingests_readers_alike(tmp_path, run):
    """TSV, CSV and JSONL copies of a real result file read to the xlsx's table, through ``curate.formats``:
    a reply holding a tab, a comma and a line break (a table in a reply) is a reply, not a stray quote."""
    raw = pl.read_excel(RESULT, infer_schema_length=0).head(60)
    table_reply = pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.col("prediction") + "\n| a\t| b, c |").otherwise(pl.col("prediction"))
    raw = raw.with_columns(table_reply.alias("prediction"))
    expected = run.table.head(60).with_columns(raw["prediction"])
    raw.write_csv(tmp_path / "r.tsv", separator="\t")
    raw.write_csv(tmp_path / "r.csv")
    raw.write_ndjson(tmp_path / "r.jsonl")
    for name in ("r.tsv", "r.csv", "r.jsonl"):
        got = read_predictions(tmp_path / name).table
        assert got.rows() == expected.rows(), name
    assert expected["prediction"].str.contains("\t").sum() == 9


def test_result_file_problems_are_named_by_line(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("index,prediction,answer\n1,A,A\n2,B\n")
    with pytest.raises(UserError, match=r"short\.csv line 3: row has 2 fields, the header has 3"):
        read_predictions(short)
    spaced = tmp_path / "spaced.tsv"  # header cells padded by a spreadsheet: ingest's reader strips them
    spaced.write_text(" index \tprediction \t answer\n1\tThe answer is (B).\tB\n")
    assert read_predictions(spaced).table.select("key", "answer", "prediction").rows() == [("1", "B", "The answer is (B).")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=r"empty\.jsonl: no predictions"):
        read_predictions(empty)
