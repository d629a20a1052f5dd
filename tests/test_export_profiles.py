"""Exports that other tools run unchanged: the mmstar profile under lmms-eval's own `mmstar` task,
the default hf card, VLMEvalKit's custom-MCQ TSV conventions, the release check before export, and
an hf export read back by our own ingest (ClassLabel ids -> names)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import warnings
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest
import yaml

from curate.errors import UserError
from curate.export import TILE_GAP, export, tile_images
from curate.schema import LETTERS
from curate.workspace import Workspace
from tests.export_fixture import real_items, releasable, run_cli

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"


@pytest.fixture(scope="module")
def raw(shared_data) -> pl.DataFrame:
    """As ingested: MMBench EN/CN translation pairs, items without a dimension, 2- and 4-image MMMU rows."""
    return real_items(shared_data, max_options=4)


@pytest.fixture(scope="module")
def clean(raw) -> pl.DataFrame:
    """The same items as a set the release check passes (one per group, every item with a dimension)."""
    return releasable(raw)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---")[1]), text


def _mmstar_task(export_dir: Path, tmp_path: Path, monkeypatch):
    """lmms-eval's ConfigurableTask built from the yaml the card tells a user to write."""
    lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is installed by scripts/setup.sh (--no-deps)")
    from lmms_eval.api.task import ConfigurableTask
    from lmms_eval.utils import load_yaml_config

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    _, text = _card(export_dir)
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    block = block.replace("/absolute/path/to/this/folder", str(export_dir)).replace("LMMS_EVAL", lmms_eval.__path__[0])
    task_file = tmp_path / "tasks" / "mine.yaml"
    task_file.parent.mkdir()
    task_file.write_text(block, encoding="utf-8")
    cfg = load_yaml_config(str(task_file))
    assert cfg["dataset_path"] == str(export_dir) and cfg["test_split"] == "val"
    return ConfigurableTask(config=cfg)


def _prediction(i: int, answer: str, n_options: int) -> tuple[str, bool]:
    """A known reply per item and whether it is right: three styles of right answers, one wrong."""
    wrong = LETTERS[(LETTERS.index(answer) + 1) % n_options]
    return [(answer, True), (f"The answer is ({answer}).", True), (wrong, False), (f"{answer}. ", True)][i % 4]


@pytest.mark.slow  # lmms-eval's task module imports evaluate -> transformers.pipelines -> torch: ~8 s CPU, 25-35 s
# wall on the shared 2 cores, most of the fast suite's budget for one import; CI runs it with the slow tests
def test_mmstar_profile_runs_under_lmms_eval_and_gives_the_exact_score(clean, tmp_path, monkeypatch):
    out = export(clean, tmp_path / "mystar", fmt="hf", profile="mmstar", multi_image="concat")
    head, text = _card(out)
    assert head["configs"] == [{"config_name": "val", "data_files": [{"split": "val", "path": "data/val-*"}]}]
    assert [f["name"] for f in head["dataset_info"]["features"]] == [
        "index", "question", "image", "answer", "category", "l2_category", "meta_info"]
    assert "tiled side by side" in text  # the card says what happened to the 2- and 4-image items

    task = _mmstar_task(out, tmp_path, monkeypatch)
    docs = task.test_docs()
    assert len(docs) == clean.height
    rows = clean.with_row_index("index").to_dicts()
    by_dim: dict[str, list[bool]] = {}
    results: dict[str, list] = {}
    for doc, item in zip(docs, rows):
        assert doc["index"] == item["index"] and doc["answer"] == item["answer"]
        assert (doc["category"], doc["l2_category"]) == (item["category"], item["l2_category"])
        assert doc["meta_info"] == {"source": item["source"], "split": item["split"], "image_path": doc["meta_info"]["image_path"]}
        opts = ", ".join(f"{L}: {o}" for L, o in zip(LETTERS, item["options"]))
        body = f"Hint: {item['hint']}\nQuestion: {item['question']}" if item["hint"] else item["question"]
        assert task.doc_to_text(doc) == f"{body}\nOptions: {opts}{POST_PROMPT}"
        (image,) = task.doc_to_visual(doc)
        sizes = [(im["width"], im["height"]) for im in item["images"]]
        assert image.mode == "RGB" and image.size == (sum(w for w, _ in sizes) + TILE_GAP * (len(sizes) - 1),
                                                      max(h for _, h in sizes))
        reply, right = _prediction(item["index"], item["answer"], len(item["options"]))
        for metric, value in task.process_results(doc, [reply]).items():
            results.setdefault(metric, []).append(value)
        by_dim.setdefault(item["l2_category"], []).append(right)
    assert any(r["hint"] for r in rows) and max(len(r["images"]) for r in rows) == 4

    # lmms-eval's score: mean over dimensions of each dimension's accuracy (computed here independently).
    expected = sum(Fraction(sum(h), len(h)) for h in by_dim.values()) / len(by_dim)
    agg = task.aggregation()
    assert agg["average"](results["average"]) == pytest.approx(float(expected), abs=1e-12)
    micro = Fraction(sum(sum(h) for h in by_dim.values()), clean.height)
    assert expected != micro  # the plain hit rate differs here: the test tells the two averages apart
    for cap in set(clean["category"]):
        dims = {d: h for d, h in by_dim.items() if d in set(clean.filter(pl.col("category") == cap)["l2_category"])}
        want = sum(Fraction(sum(h), len(h)) for h in dims.values()) / len(dims)
        assert agg[cap](results[cap]) == pytest.approx(float(want), abs=1e-12)


def test_mmstar_profile_refuses_what_lmms_eval_cannot_score(raw, clean, tmp_path):
    multi = clean.filter(pl.col("n_images") > 1)["item_id"].to_list()
    with pytest.raises(UserError, match=r"4 item\(s\) have several images.*--multi-image first.*concat") as e:
        export(clean, tmp_path / "a", fmt="hf", profile="mmstar")
    assert all(i in str(e.value) for i in multi)
    with pytest.raises(UserError, match=r"have no MMStar capability \(category\) or dimension"):
        export(raw, tmp_path / "b", fmt="hf", profile="mmstar", multi_image="first")
    five = clean.head(1).with_columns(pl.col("options").list.concat(pl.lit(["extra"])))
    with pytest.raises(UserError, match=r"1 item\(s\) have more than 4 options.*A-D"):
        export(five, tmp_path / "c", fmt="hf", profile="mmstar")
    with pytest.raises(UserError, match="use it with --format hf or parquet"):
        export(clean, tmp_path / "d", fmt="tsv", profile="mmstar")
    assert not any(tmp_path.iterdir())  # nothing written, no temp folder left

    import datasets

    out = export(clean, tmp_path / "first", fmt="parquet", profile="mmstar", multi_image="first")
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c1"))["val"].cast_column("image", datasets.Image(decode=False))
    firsts = [_sha(imgs[0]["bytes"]) for imgs in clean["images"].to_list()]
    assert [_sha(r["image"]["bytes"]) for r in ds] == firsts  # the first image, its original bytes
    assert "only the first is kept" in (out / "README.md").read_text(encoding="utf-8")


def test_tiles_keep_each_image_left_to_right_on_white():
    from PIL import Image

    def png(color, size):
        buf = io.BytesIO()
        Image.new("RGB", size, color).save(buf, format="PNG")
        return buf.getvalue()

    clear = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(clear, format="PNG")
    tiled = Image.open(io.BytesIO(tile_images([png("red", (20, 10)), png("blue", (30, 40)), clear.getvalue()])))
    assert tiled.size == (20 + 30 + 4 + 2 * TILE_GAP, 40)
    px = tiled.convert("RGB").load()
    assert px[0, 20] == (255, 0, 0) and px[19, 15] == (255, 0, 0)  # red, centred vertically
    assert px[0, 0] == (255, 255, 255) and px[20 + TILE_GAP // 2, 20] == (255, 255, 255)  # padding and gap
    assert px[20 + TILE_GAP, 0] == (0, 0, 255) and px[20 + TILE_GAP + 29, 39] == (0, 0, 255)
    assert px[20 + 30 + 2 * TILE_GAP, 20] == (255, 255, 255)  # a transparent image is pasted over white


def test_default_hf_card_names_the_licence_and_languages_and_loads_without_a_warning(clean, tmp_path):
    import datasets

    out = export(clean, tmp_path / "rich", fmt="hf")
    head, text = _card(out)
    assert (head["license"], head["license_name"], head["license_link"]) == ("other", "source-benchmark-terms", "LICENSE.md")
    terms = (out / "LICENSE.md").read_text(encoding="utf-8")
    for source, n in clean.group_by("source").len().iter_rows():
        assert f"| {source} | {n} |" in terms
    n_zh = clean.filter(pl.col("question").str.contains("[\u4e00-\u9fff]")).height
    assert 0 < n_zh < clean.height / 2 and head["language"] == ["en", "zh"]  # what is there, most items first
    assert {"images", "category", "l2_category", "options", "item_id", "difficulty"} <= {f["name"] for f in head["dataset_info"]["features"]}

    caught = io.StringIO()
    handler = logging.StreamHandler(caught)
    handler.setLevel(logging.WARNING)
    logging.getLogger("datasets").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    finally:
        logging.getLogger("datasets").removeHandler(handler)
    assert caught.getvalue() == "" and [str(w.message) for w in warned] == []
    assert ds["test"].num_rows == clean.height and ds["test"].info.splits["test"].num_bytes > 0

    other = export(clean.head(3), tmp_path / "cc", fmt="parquet", card_info={"license": "cc-by-4.0", "language": ["en"]})
    head, _ = _card(other)
    assert head["license"] == "cc-by-4.0" and "license_name" not in head and not (other / "LICENSE.md").exists()


def _round_trip_key(df: pl.DataFrame) -> list[dict]:
    return df.select("question", "options", "answer", "category", "l2_category",
                     pl.col("images").list.eval(pl.element().struct.field("sha256")).alias("sha")).to_dicts()


def test_hf_export_read_back_by_ingest_keeps_category_and_dimension(clean, tmp_path):
    from curate.ingest import ingest

    out = export(clean, tmp_path / "hf", fmt="hf")
    want = _round_trip_key(clean)
    assert _round_trip_key(ingest(out)) == want  # save_to_disk folder: ClassLabel names from the features
    assert _round_trip_key(ingest(out / "data")) == want  # parquet shards: names from the schema metadata


def test_identity_class_labels_stay_option_indexes(clean, tmp_path):
    """A Hub set whose answer is ClassLabel(num_classes=4) ("0".."3"): the id is the option index."""
    import datasets

    from curate.ingest import ingest

    image = clean["images"][0][0]["bytes"]
    feats = datasets.Features({"question": datasets.Value("string"), "options": datasets.List(datasets.Value("string")),
                               "answer": datasets.ClassLabel(num_classes=4), "image": datasets.Image()})
    ds = datasets.Dataset.from_dict({"question": ["How many?"], "options": [["1", "2", "3", "4"]], "answer": [2],
                                     "image": [{"bytes": image, "path": None}]}, features=feats)
    ds.save_to_disk(str(tmp_path / "hub"))
    back = ingest(tmp_path / "hub")
    assert back["answer"].to_list() == ["C"]  # index 2, not the option whose text is "2"


def test_tsv_follows_vlmevalkit_custom_mcq_conventions(raw, clean, tmp_path):
    import pandas as pd

    uncategorized = raw.filter(pl.col("category").is_null())["item_id"].to_list()
    with pytest.raises(UserError, match=rf"{len(uncategorized)} item\(s\) have no capability.*--allow-uncategorized") as e:
        export(raw, tmp_path / "a", fmt="tsv")
    assert uncategorized[0] in str(e.value)
    no_image = clean.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("images")).alias("images"))
    with pytest.raises(UserError, match=rf"1 item\(s\) have no image.*--allow-no-image.*\): {clean['item_id'][2]}"):
        export(no_image, tmp_path / "b", fmt="tsv")
    assert not any(tmp_path.iterdir())

    out = export(raw, tmp_path / "MyBench", fmt="tsv", allow_uncategorized=True)
    data = pd.read_csv(out / "MyBench.tsv", sep="\t")
    assert "l2-category" in data.columns and "l2_category" not in data.columns
    assert (data["category"] == "uncategorized").sum() == len(uncategorized)
    # What VLMEvalKit's report_acc does with the columns: sort each one's values (NaN among strings raises).
    for col in ("l2-category", "category"):
        assert sorted(set(data[col])) and not data[col].isna().any()
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "--data MyBench" in readme and "$LMUData" in readme and "`l2-category`" in readme

    allowed = export(no_image, tmp_path / "c", fmt="tsv", allow_no_image=True)
    assert pd.read_csv(allowed / "c.tsv", sep="\t")["image"].isna().sum() == 1


def test_export_command_runs_the_release_check_and_prints_a_json_summary(raw, clean, tmp_path, capsys, monkeypatch):
    def _cli(*args: str):
        return run_cli(capsys, monkeypatch, "export", *args)

    bad = Workspace(tmp_path / "bad", create=True)
    bad.write("balanced", raw)
    good = Workspace(tmp_path / "good", create=True)
    good.write("balanced", clean)

    r = _cli(str(bad.root), "--to", str(tmp_path / "out"), "--json")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    summary = json.loads(r.stdout)
    assert summary["written"] is False and summary["ok"] is False and summary["items"] == raw.height
    assert {"same_group", "missing_category"} <= {p["code"] for p in summary["problems"]}
    assert not (tmp_path / "out").exists()

    r = _cli(str(bad.root), "--to", str(tmp_path / "out"), "--format", "jsonl", "--ignore-check", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["written"], summary["path"], summary["format"], summary["profile"], summary["items"]) == (
        True, str(tmp_path / "out"), "jsonl", "default", raw.height)
    assert summary["errors"] > 0 and (tmp_path / "out" / "out.jsonl").is_file()

    r = _cli(str(good.root), "--to", str(tmp_path / "mm"), "--profile", "mmstar", "--multi-image", "concat")
    assert r.returncode == 0, r.stderr
    printed = " ".join(r.stdout.split())  # rich wraps long lines when not on a terminal
    assert "multi-image items: 4 item(s) have several images: tiled side by side" in printed
    assert f"profile mmstar, {clean.height} items" in printed
