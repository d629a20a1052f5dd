"""Export to hf / parquet / tsv / jsonl with real VLMEvalKit items: loadable, images embedded,
round trip through ingest, dataset card, and nothing overwritten on error."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import shutil

import polars as pl
import pytest
import yaml

from curate.errors import UserError
from curate.export import export, export_workspace
from curate.workspace import Workspace
from tests.export_fixture import real_items, releasable, run_cli


@pytest.fixture(scope="module")
def items(shared_data) -> pl.DataFrame:
    """Real items that pass the release check: MMBench samples (hints, Chinese text), AI2D, and
    MMMU rows with 2 and 4 images; one item per translation group, every item with a dimension."""
    return releasable(real_items(shared_data))


def _key(df: pl.DataFrame) -> list[dict]:
    """What must survive a round trip: text, options, key, and every image's content hash."""
    return df.select(
        "question", "options", "answer",
        pl.col("images").list.eval(pl.element().struct.field("sha256")).alias("sha"),
    ).to_dicts()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_hf_export_loads_with_load_from_disk_and_parquet_after_workspace_is_gone(items, tmp_path):
    import datasets

    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("balanced", items)
    stage, out = export_workspace(ws.root, tmp_path / "export" / "MyBench", fmt="hf")
    assert stage == "balanced"
    shutil.rmtree(ws.root)  # images must be embedded, not referenced

    dd = datasets.load_from_disk(str(out))
    ds = dd["test"]
    assert ds.num_rows == items.height
    f = ds.features
    assert isinstance(f["images"], datasets.List) and isinstance(f["images"].feature, datasets.Image)
    assert f["answer"].names == ["A", "B", "C", "D", "E", "F", "G", "H", "I"][: len(f["answer"].names)]
    assert "coarse perception" in f["category"].names and "image emotion" in f["l2_category"].names
    raw = ds.cast_column("images", datasets.List(datasets.Image(decode=False)))
    for row, (q, shas) in zip(raw, [(k["question"], k["sha"]) for k in _key(items)]):
        assert row["question"] == q
        assert [_sha(im["bytes"]) for im in row["images"]] == shas
    assert f["answer"].int2str(ds[0]["answer"]) == items["answer"][0]

    pq = datasets.load_dataset("parquet", data_files={"test": str(out / "data" / "*.parquet")},
                               cache_dir=str(tmp_path / "hf-cache"))["test"]
    assert pq.features == ds.features
    four = [r for r in pq.cast_column("images", datasets.List(datasets.Image(decode=False))) if len(r["images"]) == 4]
    assert len(four) == 2 and all(im["bytes"] for im in four[0]["images"])
    # The Hub-style folder (README configs -> data/*.parquet) loads as a whole too.
    by_folder = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache2"))
    assert by_folder["test"].num_rows == items.height


def test_single_image_items_get_an_image_column(items, tmp_path):
    import datasets

    single = items.filter(pl.col("n_images") == 1)
    out = export(single, tmp_path / "single", fmt="parquet")
    ds = datasets.load_dataset("parquet", data_files={"test": str(out / "data" / "*.parquet")},
                               cache_dir=str(tmp_path / "c"))["test"]
    assert isinstance(ds.features["image"], datasets.Image)
    img = ds[0]["image"]
    assert img.size == (single["images"][0][0]["width"], single["images"][0][0]["height"])


def test_dataset_card_yaml_and_counts(items, tmp_path):
    info = {
        "license": "cc-by-4.0",
        "screening": {"panel": "offline-3", "threshold": 1, "n_blind": 12,
                      "members": [{"name": "qwen-1.5b", "backend": "llama.cpp", "method": "loglik", "counted": True,
                                   "hit_rate": 0.31, "expected_chance_hit_rate": 0.25}]},
        "review": {"reviewers": 3, "agreement (Fleiss' kappa)": 0.71},
    }
    out = export(items, tmp_path / "carded", fmt="hf", card_info=info)
    text = (out / "README.md").read_text(encoding="utf-8")
    head = yaml.safe_load(text.split("---")[1])
    assert head["license"] == "cc-by-4.0"
    assert head["task_categories"] == ["multiple-choice", "visual-question-answering"]
    assert head["size_categories"] == ["n<1K"]
    assert head["configs"][0]["data_files"] == [{"split": "test", "path": "data/test-*"}]
    feats = {f["name"]: f for f in head["dataset_info"]["features"]}
    assert feats["images"] == {"name": "images", "list": "image"}
    assert feats["answer"]["dtype"]["class_label"]["names"]["0"] == "A"
    # num_bytes too: without it load_dataset(folder) logs that the YAML is malformed and ignores it.
    split_info = head["dataset_info"]["splits"]
    assert [(s["name"], s["num_examples"]) for s in split_info] == [("test", items.height)] and split_info[0]["num_bytes"] > 0
    assert head["dataset_info"]["download_size"] == sum(f.stat().st_size for f in (out / "data").glob("*.parquet"))
    n_ai2d = items.filter(pl.col("source") == "AI2D_TEST_sub309").height
    assert f"| AI2D_TEST_sub309 | {n_ai2d} |" in text
    n_easy = items.filter(pl.col("difficulty") == "easy").height
    assert f"| easy | {n_easy} |" in text
    n_diag = items.filter(pl.col("l2_category") == "diagram reasoning").height
    assert f"| diagram reasoning | {n_diag} |" in text
    assert "**threshold**: 1" in text and "| qwen-1.5b | llama.cpp | loglik |" in text
    assert "agreement (Fleiss' kappa)**: 0.71" in text


def test_tsv_is_vlmevalkit_mcq_and_round_trips_through_ingest(items, tmp_path):
    import pandas as pd
    from PIL import Image

    from curate.ingest import ingest

    out = export(items, tmp_path / "MyBench", fmt="tsv")
    tsv = out / "MyBench.tsv"
    first = tsv.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith('"index"\t"question"\t"hint"\t"A"\t"B"')  # every field quoted, tab separated
    # What VLMEvalKit's loader does: pandas read, images base64 or a list literal with image_path.
    data = pd.read_csv(tsv, sep="\t")
    assert {"index", "question", "answer", "image", "category", "l2-category"} <= set(data.columns)
    assert data["index"].is_unique and data["answer"].isin(list("ABCDEFGHI")).all()
    multi = [c.startswith("[") and c.endswith("]") for c in data["image"]]
    assert sum(multi) == items.filter(pl.col("n_images") > 1).height > 0  # both branches below are taken
    for cell, paths in zip(data["image"], data["image_path"]):
        if cell.startswith("[") and cell.endswith("]"):
            imgs, names = ast.literal_eval(cell), ast.literal_eval(paths)
            assert len(imgs) == len(names) > 1 and len(set(names)) == len(names)
        else:
            imgs = [cell]
        for b64 in imgs:
            Image.open(io.BytesIO(base64.b64decode(b64))).verify()
    # Round trip: ingest our own TSV back.
    back = ingest(tsv)
    assert back.height == items.height
    assert _key(back) == _key(items)
    assert back["hint"].to_list() == items["hint"].to_list()
    assert back["l2_category"].to_list() == items["l2_category"].to_list()
    assert back["category"].to_list() == items["category"].to_list()


def test_jsonl_round_trips_through_ingest(items, tmp_path):
    from curate.ingest import ingest

    out = export(items, tmp_path / "j", fmt="jsonl")
    back = ingest(out / "j.jsonl")
    assert _key(back) == _key(items)


def test_existing_export_dir_needs_overwrite_and_errors_leave_it_untouched(items, tmp_path):
    dest = tmp_path / "out"
    export(items.head(5), dest, fmt="tsv")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export(items, dest, fmt="tsv")
    # An error half way (an image without bytes) with --overwrite: old export intact, no temp left.
    broken = items.head(6).with_columns(
        pl.when(pl.col("row") == items["row"][5]).then(pl.lit(None)).otherwise(pl.col("images")).alias("images"))
    broken = broken.with_columns(pl.col("images").list.eval(
        pl.element().struct.with_fields(pl.when(pl.int_range(pl.len()) == 0).then(None)
                                        .otherwise(pl.element().struct.field("bytes")).alias("bytes"))))
    with pytest.raises(UserError, match="no embedded bytes"):
        export(broken, dest, fmt="tsv", overwrite=True, allow_no_image=True)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    export(items.head(7), dest, fmt="tsv", overwrite=True)
    assert (dest / "out.tsv").read_text(encoding="utf-8").count('\n"') == 7
    with pytest.raises(UserError, match="--format 'csv'"):
        export(items, tmp_path / "x", fmt="csv")


def test_export_of_a_corrupt_stage_and_the_cli(items, tmp_path, capsys, monkeypatch):
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("screened", items.head(10).with_columns(answer__m=pl.lit("A"), hits=pl.lit(0, pl.Int32), n_members=pl.lit(1, pl.Int32),
                                                      blind=pl.lit(False)))  # the verdict columns a screened file holds
    (ws.root / "balanced.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="balanced.parquet: not a readable parquet file"):
        export_workspace(ws.root, tmp_path / "e", fmt="jsonl")
    assert not (tmp_path / "e").exists()
    stage, _ = export_workspace(ws.root, tmp_path / "e", fmt="jsonl", stage="screened")
    assert stage == "screened"

    def cli(*args):
        return run_cli(capsys, monkeypatch, "export", *args)

    r = cli(str(ws.root), "--to", str(tmp_path / "e"), "--format", "tsv", "--stage", "screened")
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr and "Traceback" not in r.stderr
    r = cli(str(ws.root), "--to", str(tmp_path / "e"), "--format", "tsv", "--stage", "screened", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e" / "e.tsv").is_file() and not (tmp_path / "e" / "e.jsonl").exists()
