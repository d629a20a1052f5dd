"""Exact round trips: every export format, read back by our ingest and by the format's own reader
(``datasets``, polars, pandas / csv, json), equals its source row by row -- question, hint, options,
key, answer text, capability, dimension, the source's own categories, difficulty, split and the
bytes of every image. Where a reader cannot give the item back exactly, the difference is
asserted here, so it stays documented:

* our ingest makes the export a new source: ``item_id``, ``source``, ``row`` are the export's, the
  original ``item_id`` and ``difficulty`` (not an item column) are kept in ``meta``;
* TSV cells that a spreadsheet would run as a formula are written with a leading ``'`` (OWASP);
* pandas' default NA parsing (what VLMEvalKit uses) reads option texts such as ``NA`` as missing.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import json

import polars as pl
import pytest

from curate.export import export
from curate.ingest import ingest
from curate.schema import LETTERS
from tests.export_fixture import real_items, releasable

FIELDS = ("question", "hint", "options", "answer", "answer_text", "category", "l2_category", "source_category",
          "source_l2_category", "difficulty", "split")
FORMULA = "=1+1 names which part of the figure?"  # a question a spreadsheet would run as a formula
FORMULA_ROW = 1


@pytest.fixture(scope="module")
def items(shared_data) -> pl.DataFrame:
    """74 real items (MMBench with hints and Chinese text, AI2D, MMMU with 1, 2 and 4 images),
    every field filled somewhere, one question that starts like a formula."""
    df = releasable(real_items(shared_data))
    q = pl.when(pl.int_range(pl.len()) == FORMULA_ROW).then(pl.lit(FORMULA)).otherwise(pl.col("question"))
    return df.with_columns(q.alias("question"))


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _expected(df: pl.DataFrame) -> list[dict]:
    """The source rows as plain values; images as hashes of their bytes (not the stored sha256 field)."""
    out = []
    for r in df.iter_rows(named=True):
        row = {f: (list(r[f]) if f == "options" else r[f]) for f in FIELDS}
        row["images"] = [_sha(im["bytes"]) for im in r["images"]]
        out.append(row)
    return out


def _blank_none(v):
    return None if v is None or v == "" else v


def test_the_fixture_exercises_every_field(items):
    """A round trip over columns that are all null would prove nothing."""
    for f in FIELDS:
        assert items[f].null_count() < items.height, f
    assert items["hint"].null_count() > 0  # None must come back None, not ""
    assert sorted(set(items["n_images"].to_list())) == [1, 2, 4]
    assert items["source_category"].to_list() != items["category"].to_list()


# ------------------------------------------------------------------ our ingest, every format
def _from_ingest(path) -> tuple[list[dict], pl.DataFrame]:
    back = ingest(path)
    rows = []
    for r in back.iter_rows(named=True):
        meta = json.loads(r["meta"])
        row = {f: (list(r[f]) if f == "options" else r.get(f)) for f in FIELDS if f != "difficulty"}
        row["difficulty"] = meta["difficulty"]  # not an item column: kept in meta
        row["images"] = [_sha(im["bytes"]) for im in r["images"]]
        rows.append(row)
    return rows, back


@pytest.mark.parametrize("fmt", ["hf", "hf-parquet", "parquet", "jsonl", "tsv"])
def test_ingest_reads_every_export_back_exactly(items, tmp_path, fmt):
    kind = "hf" if fmt.startswith("hf") else fmt
    out = export(items, tmp_path / "rt", fmt=kind)
    path = {"hf": out, "hf-parquet": out / "data", "parquet": out / "data", "jsonl": out / "rt.jsonl",
            "tsv": out / "rt.tsv"}[fmt]
    got, back = _from_ingest(path)
    want = _expected(items)
    if fmt == "tsv":  # the documented TSV differences: a formula-like cell gets a leading ', and `split`
        # (VLMEvalKit's own column) is written only when every item has one -- MMBench's samples have none
        assert got[FORMULA_ROW]["question"] == "'" + FORMULA
        got[FORMULA_ROW]["question"] = FORMULA
        assert items["split"].null_count() > 0 and {g.pop("split") for g in got} == {None}
        want = [{k: v for k, v in w.items() if k != "split"} for w in want]
    assert len(got) == len(want) == 74
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"row {i}"
    # The export is a new source; the original identity travels in meta.
    assert [json.loads(m)["item_id"] for m in back["meta"]] == items["item_id"].to_list()
    assert set(back["source"]) == {path.stem}


# ------------------------------------------------------------------ the formats' own readers
def test_hf_load_from_disk_gives_the_rows_back(items, tmp_path):
    import datasets

    out = export(items, tmp_path / "hf", fmt="hf")
    ds = datasets.load_from_disk(str(out))["test"]
    ds = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    f = ds.features
    got = []
    for r in ds:
        row = {k: r[k] for k in FIELDS if k not in ("answer", "category", "l2_category")}
        row["options"] = list(r["options"])
        for k in ("answer", "category", "l2_category"):  # ClassLabel ids -> names, by the dataset's own features
            row[k] = f[k].int2str(r[k]) if r[k] is not None and r[k] >= 0 else None
        row["images"] = [_sha(im["bytes"]) for im in r["images"]]
        got.append(row)
    assert got == _expected(items)
    widest = items["options"].list.len().max()
    assert f["answer"].names == list(LETTERS[:widest])


def _label_names(parquet_file) -> dict[str, list[str]]:
    """ClassLabel names datasets writes into the parquet schema (what a polars user must map by hand)."""
    import pyarrow.parquet as pq

    feats = json.loads(pq.read_schema(parquet_file).metadata[b"huggingface"])["info"]["features"]
    return {k: v["names"] for k, v in feats.items() if v.get("_type") == "ClassLabel"}


def test_parquet_read_by_polars_gives_the_rows_back(items, tmp_path):
    out = export(items, tmp_path / "pq", fmt="parquet")
    files = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in files] == ["test-00000-of-00001.parquet"]
    df = pl.read_parquet(files[0])
    names = _label_names(files[0])
    assert set(names) == {"answer", "category", "l2_category"}
    assert df.schema["answer"] == pl.Int64  # polars sees the ids; names live in the metadata
    got = []
    for r in df.iter_rows(named=True):
        row = {k: r[k] for k in FIELDS}
        row["options"] = list(r["options"])
        for k, ns in names.items():
            row[k] = ns[r[k]] if r[k] is not None and r[k] >= 0 else None
        row["images"] = [_sha(im["bytes"]) for im in r["images"]]
        got.append(row)
    assert got == _expected(items)


def _tsv_images(cell: str) -> list[bytes]:
    if not cell:
        return []
    cells = ast.literal_eval(cell) if cell.startswith("[") and cell.endswith("]") else [cell]
    return [base64.b64decode(c) for c in cells]


def _tsv_row(r: dict, letters: list[str]) -> dict:
    options = [r[L] for L in letters if r[L] not in ("", None)]
    return {
        "question": r["question"], "hint": _blank_none(r["hint"]), "options": options, "answer": r["answer"],
        "answer_text": options[LETTERS.index(r["answer"])], "category": r["category"], "l2_category": r["l2-category"],
        "source_category": _blank_none(r["source_category"]), "source_l2_category": _blank_none(r["source_l2_category"]),
        "difficulty": r["difficulty"], "images": [_sha(b) for b in _tsv_images(r["image"])],
    }


def test_tsv_read_by_csv_and_pandas_gives_the_rows_back(items, tmp_path):
    import pandas as pd

    out = export(items, tmp_path / "tsv", fmt="tsv")
    path = out / "tsv.tsv"
    letters = list(LETTERS[:items["options"].list.len().max()])
    want = [{k: v for k, v in w.items() if k != "split"} for w in _expected(items)]  # split: see above
    want[FORMULA_ROW]["question"] = "'" + FORMULA  # the documented difference (OWASP CSV injection)
    with open(path, encoding="utf-8", newline="") as fh:
        by_csv = [_tsv_row(r, letters) for r in csv.DictReader(fh, delimiter="\t")]
    assert by_csv == want
    exact = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    assert [_tsv_row(r, letters) for r in exact.to_dict("records")] == want

    # VLMEvalKit reads with pandas' default NA parsing: option texts like "NA" come back missing,
    # and VLMEvalKit's prompt then leaves that option out. Which items that hits, independently:
    na_texts = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
    hit = [i for i, r in enumerate(want) if any(o in na_texts for o in r["options"])]
    default = pd.read_csv(path, sep="\t")
    lost = [i for i, r in enumerate(default.to_dict("records"))
            if sum(not pd.isna(r[L]) for L in letters) < len(want[i]["options"])]
    assert lost == hit and len(hit) >= 1  # AI2D's "D: NA" item is among the fixture's rows

    # `split` is written when every item has one (VLMEvalKit reports one row per split value).
    with_split = items.filter(pl.col("split").is_not_null())
    assert 0 < with_split.height < items.height
    out = export(with_split, tmp_path / "s", fmt="tsv")
    with open(out / "s.tsv", encoding="utf-8", newline="") as fh:
        assert [r["split"] for r in csv.DictReader(fh, delimiter="\t")] == with_split["split"].to_list()


def test_jsonl_read_by_json_gives_the_rows_back(items, tmp_path):
    out = export(items, tmp_path / "j", fmt="jsonl")
    got = []
    for line in (out / "j.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        row = {k: r.get(k) for k in FIELDS}
        row["images"] = [_sha(base64.b64decode(uri.split(",", 1)[1])) for uri in r["images"]]
        got.append(row)
    assert got == _expected(items)
    assert all(uri.startswith("data:image/") for uri in json.loads((out / "j.jsonl").read_text().splitlines()[0])["images"])


def test_mmstar_profile_embeds_the_options_and_ingest_splits_them_back(items, tmp_path):
    """The mmstar layout keeps only MMStar's columns: options go inside the question and come back out."""
    four = items.filter((pl.col("options").list.len() <= 4) & (pl.col("n_images") == 1))
    out = export(four, tmp_path / "ms", fmt="hf", profile="mmstar")
    back = ingest(out)
    assert back.height == four.height
    # A hint goes into the question as "Hint: ...\nQuestion: ..." (MMStar's own items with a context do so).
    want_q = [q if h is None else f"Hint: {h}\nQuestion: {q}" for q, h in zip(four["question"], four["hint"])]
    assert back["question"].to_list() == want_q
    for col in ("options", "answer", "answer_text", "category", "l2_category"):
        assert back[col].to_list() == four[col].to_list(), col
    assert [[_sha(im["bytes"]) for im in r] for r in back["images"]] == \
        [[_sha(im["bytes"]) for im in r] for r in four["images"]]
    assert back["hint"].null_count() == back.height


def test_hf_export_of_items_without_mmstar_categories_keeps_the_sources_own(shared_data, tmp_path):
    """The issue's case: MathVista rows have no MMStar capability, only the source's categories;
    before source_category was read back first, the export's empty `category` replaced them."""
    src = ingest(shared_data / "vlmevalkit" / "MathVista_MINI_sub100.tsv")
    assert src["category"].null_count() == src.height == 54
    out = export(src, tmp_path / "mv", fmt="hf", allow_no_image=True)
    for path in (out, out / "data"):
        back = ingest(path)
        for col in ("source_category", "source_l2_category", "category", "l2_category", "options", "answer"):
            assert back[col].to_list() == src[col].to_list(), (path.name, col)
    assert sorted(set(src["source_category"])) == ["general-vqa", "math-targeted-vqa"]
