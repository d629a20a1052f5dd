"""The release check on real items: planted problems are found exactly, clean sets pass, exports
read back (TSV, JSONL, a save_to_disk folder with class labels) give the same findings."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import polars as pl
import pytest

from curate.check import (
    PANDAS_NA_TEXTS,
    Problem,
    check_export,
    check_folder,
    check_table,
    has_errors,
    letter_balance,
    summary,
)
from curate.errors import UserError
from curate.ingest import ingest
from curate.schema import LETTERS
from curate.workspace import Workspace

AI2D = "vlmevalkit/AI2D_TEST_sub309.tsv"


def found(problems: list[Problem]) -> dict[str, set[str]]:
    return {p.code: set(p.item_ids) for p in problems}


@pytest.fixture(scope="module")
def ai2d(shared_data) -> pl.DataFrame:
    """All kept AI2D items (real diagrams, 4 options each)."""
    return ingest(shared_data / AI2D)


@pytest.fixture(scope="module")
def clean(ai2d) -> pl.DataFrame:
    """40 AI2D items without the file's own flaws (an option 'NA', repeated '{}' options)."""
    normed = pl.col("options").list.eval(pl.element().str.strip_chars())
    ok = ~pl.col("options").list.eval(pl.element().is_in(list(PANDAS_NA_TEXTS))).list.any() & (
        normed.list.n_unique() == normed.list.len())
    return ai2d.filter(ok).head(40)


def plant(clean: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, set[str]]]:
    """The clean items with four planted problems; returns the table and what must be found."""
    ids = clean["item_id"].to_list()
    no_image, missing_cat, dup = ids[3], ids[7], ids[11]
    padded = clean.filter(pl.col("answer").is_in(["A", "B"]))["item_id"][2]  # key before the padding
    df = clean.with_columns(
        images=pl.when(pl.col("item_id") == no_image).then(pl.col("images").list.head(0)).otherwise("images"),
        n_images=pl.when(pl.col("item_id") == no_image).then(0).otherwise("n_images").cast(pl.Int32),
        category=pl.when(pl.col("item_id") == missing_cat).then(None).otherwise("category"),
        options=pl.when(pl.col("item_id") == padded)
        .then(pl.concat_list(pl.col("options").list.head(2), pl.lit(["nan"]), pl.col("options").list.slice(3)))
        .otherwise("options"),
    )
    copy = df.filter(pl.col("item_id") == dup).with_columns(item_id=pl.lit(f"{dup}-copy"), orig_index=pl.lit("copy"))
    df = pl.concat([df, copy])
    expected = {
        "no_image": {no_image},
        "padding_option": {padded},
        "missing_category": {missing_cat},
        "duplicate_image_question": {dup, f"{dup}-copy"},
    }
    return df, expected


def test_clean_real_items_pass(clean):
    problems = check_table(clean)
    assert problems == []
    assert not has_errors(problems)
    assert summary(problems) == {"ok": True, "errors": 0, "warnings": 0, "problems": []}


def test_planted_problems_are_found_exactly(clean, tmp_path):
    df, expected = plant(clean)
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", df)
    result = check_folder(ws.root)
    assert found(result.problems) == expected
    assert all(p.severity == "error" for p in result.problems)
    assert not result.ok and result.items == df.height
    assert result.as_dict()["errors"] == 4


def test_allow_no_image_lifts_only_the_no_image_error(clean):
    df, expected = plant(clean)
    del expected["no_image"]
    assert found(check_table(df, allow_no_image=True)) == expected


def test_duplicate_item_ids_and_keys_outside_the_options(clean):
    first = clean.head(1)
    df = pl.concat([clean, first]).with_columns(
        answer=pl.when(pl.col("item_id") == clean["item_id"][5]).then(pl.lit("E")).otherwise("answer"))
    got = found(check_table(df))
    assert got["duplicate_id"] == {first["item_id"][0]}
    assert got["answer_not_in_options"] == {clean["item_id"][5]}
    assert got["duplicate_image_question"] == {first["item_id"][0]}


def test_real_file_flaws_are_reported(ai2d):
    """AI2D's own options: 'NA' (pandas reads it as missing) and '{}' twice: warnings, not errors."""
    problems = check_table(ai2d)
    assert not has_errors(problems)
    got = found(problems)
    assert set(got) == {"na_option", "duplicate_options"}
    assert len(got["na_option"]) == 5 and len(got["duplicate_options"]) == 4
    na = ai2d.filter(pl.col("item_id").is_in(list(got["na_option"])))
    assert all("NA" in opts for opts in na["options"].to_list())


def test_translation_pairs_are_one_group(shared_data):
    """MMBench samples: the Chinese copy of an English question on the same image is the same item twice."""
    df = ingest(shared_data / "vlmevalkit/MMBench_samples.tsv")
    sg = next(p for p in check_table(df, allow_no_image=True) if p.code == "same_group")
    assert sg.severity == "error" and "translation" in sg.message
    assert len(sg.item_ids) == 40  # 20 pairs
    assert sg.message.count("translation") >= 3


def test_dimension_must_belong_to_its_capability(clean):
    item = clean["item_id"][0]
    df = clean.with_columns(l2_category=pl.when(pl.col("item_id") == item).then(pl.lit("geometry")).otherwise("l2_category"))
    problems = check_table(df)
    assert found(problems) == {"unknown_dimension": {item}}
    assert "'logical reasoning / geometry'" in problems[0].message and not has_errors(problems)


def test_ambiguous_key_when_the_keys_text_repeats(clean):
    row = clean.filter(pl.col("answer") == "A").head(1)
    item = row["item_id"][0]
    df = clean.with_columns(options=pl.when(pl.col("item_id") == item)
                            .then(pl.concat_list(pl.col("options").list.head(3), pl.col("options").list.head(1)))
                            .otherwise("options"))
    got = found(check_table(df))
    assert got == {"ambiguous_key": {item}}


def test_letter_imbalance_is_a_warning(clean):
    """Every key rotated to A: a warning naming the items keyed A; the real spread gives none."""
    def rotate(opts: list[str], answer: str) -> list[str]:
        k = LETTERS.index(answer)
        return opts[k:] + opts[:k]

    rows = clean.select("options", "answer").rows()
    skewed = clean.with_columns(options=pl.Series([rotate(o, a) for o, a in rows], dtype=pl.List(pl.String)),
                                answer=pl.lit("A"))
    problems = check_table(skewed)
    assert [p.code for p in problems] == ["answer_imbalance"]
    assert problems[0].severity == "warning" and not has_errors(problems)
    assert set(problems[0].item_ids) == set(clean["item_id"])
    assert "A 100% (expected 25%)" in problems[0].message


def test_letter_balance_expects_each_items_own_option_count():
    df = pl.DataFrame({"options": [["x", "y"], ["x", "y", "z", "w"]], "answer": ["A", "D"]})
    bal = dict((L, e) for L, _, e in letter_balance(df).rows())
    assert bal == {"A": 0.75, "B": 0.75, "C": 0.25, "D": 0.25}


def test_message_shows_a_few_ids_and_item_ids_holds_all(clean):
    df = clean.with_columns(category=pl.lit(None, pl.String))
    p = next(p for p in check_table(df) if p.code == "missing_category")
    assert len(p.item_ids) == clean.height
    assert p.message.count(":") >= 1 and f"(+{clean.height - 5} more)" in p.message
    assert sum(i in p.message for i in clean["item_id"].to_list()) == 5


def test_missing_columns_and_empty_table():
    assert [p.code for p in check_table(pl.DataFrame({"item_id": ["a"]}))] == ["missing_column"]
    assert [p.code for p in check_table(pl.DataFrame(schema={c: pl.String for c in ("item_id", "question", "options", "answer")}))] == ["empty"]


# --------------------------------------------------------------------------------------
# Exports read back with our own readers
# --------------------------------------------------------------------------------------
def _b64(images) -> list[str]:
    return [base64.b64encode(im["bytes"]).decode() for im in images or []]


def write_tsv(df: pl.DataFrame, path: Path) -> Path:
    """A VLMEvalKit TSV the way export writes one (QUOTE_ALL, base64 images, item_id column)."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2_category", "image", "item_id"]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(header)
        for i, r in enumerate(df.iter_rows(named=True)):
            opts = list(r["options"]) + [""] * (4 - len(r["options"]))
            imgs = _b64(r["images"])
            w.writerow([i, r["question"], r["hint"] or "", *opts, r["answer"], r["category"] or "", r["l2_category"] or "",
                        imgs[0] if imgs else "", r["item_id"]])
    return path


def write_jsonl(df: pl.DataFrame, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i, r in enumerate(df.iter_rows(named=True)):
            rec = {k: r[k] for k in ("item_id", "question", "options", "answer", "category", "l2_category")}
            rec["index"] = i
            rec["images"] = ["data:image/png;base64," + b for b in _b64(r["images"])]
            fh.write(json.dumps(rec) + "\n")
    return path


def write_hf(df: pl.DataFrame, path: Path) -> Path:
    """save_to_disk with class labels for answer / category / l2_category, as a Hub dataset has."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

    cats = sorted(set(df["category"].drop_nulls()))
    l2s = sorted(set(df["l2_category"].drop_nulls()))
    feats = Features({"index": Value("int64"), "item_id": Value("string"), "question": Value("string"),
                      "options": List(Value("string")), "answer": ClassLabel(names=list("ABCD")), "image": Image(),
                      "category": ClassLabel(names=cats), "l2_category": ClassLabel(names=l2s)})
    rows = df.to_dicts()
    data = {"index": list(range(len(rows))), "item_id": [r["item_id"] for r in rows],
            "question": [r["question"] for r in rows], "options": [r["options"] for r in rows],
            "answer": [r["answer"] for r in rows],
            "image": [{"bytes": r["images"][0]["bytes"], "path": None} if r["images"] else None for r in rows],
            "category": [r["category"] for r in rows], "l2_category": [r["l2_category"] for r in rows]}
    DatasetDict({"test": Dataset.from_dict(data, features=feats)}).save_to_disk(str(path))
    return path


WRITERS = {"tsv": lambda df, d: write_tsv(df, d / "set.tsv"), "jsonl": lambda df, d: write_jsonl(df, d / "set.jsonl"),
           "hf": lambda df, d: write_hf(df, d)}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_export_read_back_finds_the_same_problems(clean, tmp_path, fmt):
    df, expected = plant(clean)
    folder = tmp_path / "export"
    folder.mkdir()
    WRITERS[fmt](df, folder)
    result = check_folder(folder)
    assert found(result.problems) == expected, result.problems
    assert result.items == df.height
    assert "export" in result.what


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_clean_export_passes_with_its_class_labels_decoded(clean, tmp_path, fmt):
    """hf: category / l2_category are ClassLabel ids in the file; read back as ids they would be
    reported as unknown dimensions."""
    folder = tmp_path / "export"
    folder.mkdir()
    WRITERS[fmt](clean, folder)
    result = check_export(folder)
    assert result.problems == [] and result.ok and result.items == clean.height


def test_stage_option_and_unknown_folders(clean, tmp_path):
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", clean)
    ws.write("balanced", clean.head(10))
    assert check_folder(ws.root).items == 10
    assert check_folder(ws.root, stage="items").items == clean.height
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a workspace"):
        check_folder(tmp_path / "empty")
    with pytest.raises(UserError, match="no such"):
        check_folder(tmp_path / "missing")
