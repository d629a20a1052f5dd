"""Ingest on real benchmark files and on corrupted copies: every row accounted for, bad rows named."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from curate.errors import UserError
from curate.ingest import ingest, ingest_to_workspace, parse_column_map
from curate.schema import ITEM_SCHEMA, validate_items
from curate.workspace import Workspace

VLM = "vlmevalkit"


def ledger_of(ws: Path) -> pl.DataFrame:
    return pl.read_parquet(ws / "ledger.parquet")


def assert_accounted(ws: Path, source_rows: dict[str, int]) -> None:
    """kept + dropped + quarantined == input rows, per file; kept rows == items."""
    ledger = ledger_of(ws).filter(pl.col("stage") == "ingest")
    for file, n in source_rows.items():
        got = ledger.filter(pl.col("source_file") == file)
        assert got.height == n, f"{file}: ledger has {got.height} rows, file has {n}"
        assert sorted(got["row"].to_list()) == list(range(1, n + 1))
    items = pl.read_parquet(ws / "items.parquet")
    assert ledger.filter(pl.col("status") == "kept").height == items.height


def tsv_rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def write_tsv(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    header = header or list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, delimiter="\t", quoting=csv.QUOTE_ALL, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def png_b64(color: str = "red", size: tuple[int, int] = (8, 8)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --- real files, every format -------------------------------------------------------------


def test_vlmevalkit_tsv_real_file(shared_data, tmp_path):
    src = shared_data / VLM / "MMBench_samples.tsv"
    items = ingest(src, out=tmp_path)
    assert items.height == 54
    validate_items(items)
    first = items.row(0, named=True)
    assert first["item_id"] == f"MMBench_samples:{first['orig_index']}"
    assert first["hint"] is None or isinstance(first["hint"], str)
    assert first["n_images"] == 1 and first["images"][0]["width"] > 0 and len(first["images"][0]["sha256"]) == 64
    # MMBench's "Coarse Perception: Image Style" maps to MMStar's dimension via the taxonomy
    mapped = items.filter(pl.col("source_category").str.contains("Image Style"))
    assert set(mapped["l2_category"]) == {"image style & quality"}
    assert set(mapped["category"]) == {"coarse perception"}
    assert_accounted(tmp_path, {str(src): 54})


def test_multi_image_rows_and_open_questions(shared_data, tmp_path):
    src = shared_data / VLM / "MMMU_DEV.tsv"
    ingest_to_workspace([src], tmp_path)
    items = pl.read_parquet(tmp_path / "items.parquet")
    assert items["n_images"].max() > 1, "MMMU rows with several images (a list literal) must keep them all"
    multi = items.filter(pl.col("n_images") > 1).row(0, named=True)
    assert len({img["sha256"] for img in multi["images"]}) == multi["n_images"]
    ledger = ledger_of(tmp_path)
    dropped = ledger.filter(pl.col("status") == "dropped")
    assert set(dropped["reason"]) == {"open_question"}
    assert dropped.height == 9  # the file's question_type=open rows
    assert_accounted(tmp_path, {str(src): 150})


def test_rows_without_image_are_dropped_with_reason(shared_data, tmp_path):
    """MathVista's real rows with the image cell of three multiple-choice rows emptied: exactly those
    three are dropped as ``no_image`` (VLMEvalKit skips them too); nothing else changes."""
    src = shared_data / VLM / "MathVista_MINI_sub100.tsv"
    rows = tsv_rows(src)
    mcq = [i for i, r in enumerate(rows, 1) if r.get("A", "").strip() and r.get("answer", "").strip()]
    emptied = mcq[:3]
    for i in emptied:
        rows[i - 1]["image"] = ""
    path = write_tsv(tmp_path / "MathVista_holes.tsv", rows)
    ws = tmp_path / "ws"
    ingest_to_workspace([path], ws)
    ledger = ledger_of(ws)
    reasons = dict(ledger.group_by("reason").len().iter_rows())
    assert reasons.get("open_question") == 46  # free_form rows have no options
    no_image = ledger.filter(pl.col("reason") == "no_image")
    assert no_image["row"].sort().to_list() == emptied and set(no_image["status"]) == {"dropped"}
    items = pl.read_parquet(ws / "items.parquet")
    assert items.height == 54 - 3 and (items["n_images"] >= 1).all()
    assert not set(items["row"].to_list()) & set(emptied)
    assert_accounted(ws, {str(path): 100})


def test_xlsx_result_file_text_only(shared_data, tmp_path):
    src = shared_data / "text_pools" / "SEEDBench_IMG_vila13b.xlsx"
    items = ingest(src, out=tmp_path)
    assert_accounted(tmp_path, {str(src): 14232})
    assert items["n_images"].sum() == 0
    assert items.height == 14232
    # VLMEvalKit's xlsx lost SEED's option text "None" (pandas NaN) in 192 rows: restored, never shifted,
    # each named in the ledger
    restored = ledger_of(tmp_path).filter(pl.col("reason") == "restored_none_option")
    assert restored.height == 192 and restored["detail"][0].startswith(str(src))
    assert set(restored["status"]) == {"kept"}
    fixed = items.filter(pl.col("item_id").is_in(restored["item_id"].implode()))
    assert fixed["options"].list.contains("None").all() and fixed["options"].list.len().min() == 4
    meta = json.loads(items["meta"][0])
    assert "prediction" in meta  # the original row travels along as metadata
    assert items.filter(pl.col("l2_category").is_null()).height == 0  # every SEED category maps


def test_mathvista_json_and_open_to_mcq(shared_data, tmp_path):
    src = shared_data / "text_pools" / "MathVista_testmini.json"
    plain = ingest(src, out=tmp_path / "a")
    assert plain.height == 540  # every multi_choice row (3 repeat a choice: kept with a ledger note)
    # the answer is given as the choice text: mapped to its letter
    row = plain.row(0, named=True)
    assert row["answer_text"] == row["options"]["ABCDEFGHIJ".index(row["answer"])]
    mcq = ingest(src, out=tmp_path / "b", open_to_mcq=True, seed=7)
    again = ingest(src, out=tmp_path / "c", open_to_mcq=True, seed=7)
    assert mcq.height > 990
    assert mcq.select("item_id", "options", "answer").equals(again.select("item_id", "options", "answer"))
    free = mcq.filter(pl.col("meta").str.contains('"question_type": "free_form"'))
    for r in free.head(50).iter_rows(named=True):
        assert len(r["options"]) == 4 and len(set(r["options"])) == 4
        assert float(r["answer_text"]) == float(json.loads(r["meta"])["answer"])
    other_seed = ingest(src, out=tmp_path / "d", open_to_mcq=True, seed=8)
    assert not mcq.select("options").equals(other_seed.select("options"))


def _mmbench_records(shared_data: Path, n: int = 12) -> list[dict]:
    return tsv_rows(shared_data / VLM / "MMBench_samples.tsv")[:n]


def test_hf_save_to_disk_and_parquet_with_image_feature(shared_data, tmp_path):
    import datasets

    rows = _mmbench_records(shared_data)
    feats = datasets.Features(
        {"index": datasets.Value("int64"), "question": datasets.Value("string"), "choices": datasets.List(datasets.Value("string")),
         "answer": datasets.Value("int64"), "image": datasets.Image()}
    )
    ds = datasets.Dataset.from_dict(
        {
            "index": [int(r["index"]) for r in rows],
            "question": [r["question"] for r in rows],
            "choices": [[r[L] for L in "ABCD" if r.get(L)] for r in rows],
            "answer": ["ABCD".index(r["answer"]) for r in rows],
            "image": [{"bytes": base64.b64decode(r["image"]), "path": None} for r in rows],
        },
        features=feats,
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    items = ingest(tmp_path / "hf")
    assert items.height == len(rows)
    assert set(items["split"]) == {"test"}
    assert items["answer"].to_list() == [r["answer"] for r in rows]  # integer labels -> letters
    assert items["images"].list.get(0).struct.field("sha256")[0] == __import__("hashlib").sha256(base64.b64decode(rows[0]["image"])).hexdigest()

    ds.to_parquet(str(tmp_path / "mm.parquet"))
    from_parquet = ingest(tmp_path / "mm.parquet")
    assert from_parquet.select("question", "options", "answer").equals(items.select("question", "options", "answer"))
    assert from_parquet["n_images"].to_list() == [1] * len(rows)


def _easy_vqa_jsonl(shared_data: Path, dest: Path, n: int = 20) -> Path:
    qs = json.loads((shared_data / "easy_vqa" / "test" / "questions.json").read_text())
    lines = []
    for i, (question, answer, image_id) in enumerate(qs[:n]):
        options = sorted({answer, "circle", "rectangle", "triangle"} - ({answer} if answer in {"yes", "no"} else set()))
        if answer in {"yes", "no"}:
            options = ["yes", "no"]
        lines.append({"id": i, "question": question, "options": options, "answer": answer, "image": f"images/{image_id}.png"})
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return dest


def test_jsonl_with_image_folder_and_escape_refused(shared_data, tmp_path):
    img_root = shared_data / "easy_vqa" / "test"
    jl = _easy_vqa_jsonl(shared_data, tmp_path / "q.jsonl")
    lines = jl.read_text().splitlines()
    evil = json.loads(lines[0]) | {"id": 999, "image": "../../../../etc/passwd"}
    missing = json.loads(lines[0]) | {"id": 998, "image": "images/nope.png"}
    jl.write_text("\n".join(lines + [json.dumps(evil), json.dumps(missing)]) + "\n")
    ingest_to_workspace([jl], tmp_path / "ws", image_root=img_root)
    items = pl.read_parquet(tmp_path / "ws" / "items.parquet")
    assert items.height == 20 and items["n_images"].min() == 1
    led = ledger_of(tmp_path / "ws")
    bad = {r["reason"]: r for r in led.filter(pl.col("status") == "quarantined").iter_rows(named=True)}
    assert bad["image_path_outside_root"]["row"] == 21 and "line 21" in bad["image_path_outside_root"]["detail"]
    assert bad["image_missing"]["field"] == "image"
    assert_accounted(tmp_path / "ws", {str(jl): 22})


def test_column_mapping(shared_data, tmp_path):
    rows = _mmbench_records(shared_data, 5)
    renamed = [{"qid": r["index"], "Prompt text": r["question"], "A": r["A"], "B": r["B"], "gold": r["answer"] if r["answer"] in "AB" else "A", "image": r["image"]} for r in rows]
    src = write_tsv(tmp_path / "renamed.tsv", renamed)
    with pytest.raises(UserError, match="no question column"):
        ingest(src)
    items = ingest(src, column_map=parse_column_map(["question=Prompt text", "answer=gold", "index=qid"]))
    assert items.height == 5 and items["question"].to_list() == [r["question"] for r in rows]
    with pytest.raises(UserError, match="unknown field 'questoin'"):
        parse_column_map(["questoin=x"])


def test_image_reuse_by_index(shared_data, tmp_path):
    rows = _mmbench_records(shared_data, 3)
    rows[1]["image"] = rows[0]["index"]  # VLMEvalKit: short cell = index of the row whose image it shares
    rows[2]["image"] = "123456789"  # points at no row
    src = write_tsv(tmp_path / "shared.tsv", rows)
    ingest_to_workspace([src], tmp_path / "ws")
    items = pl.read_parquet(tmp_path / "ws" / "items.parquet")
    h = items["images"].list.get(0).struct.field("sha256").to_list()
    assert len(h) == 2 and h[0] == h[1]
    q = ledger_of(tmp_path / "ws").filter(pl.col("status") == "quarantined").row(0, named=True)
    assert q["reason"] == "image_ref_missing" and q["row"] == 3


# --- bad rows are quarantined with file, row and field; the rest goes on ------------------


def test_bad_rows_quarantined_each_kind(shared_data, tmp_path):
    rows = _mmbench_records(shared_data, 10)
    good = [dict(r) for r in rows]
    rows[0]["image"] = "!!!not base64!!!" * 10  # undecodable base64
    rows[1]["image"] = base64.b64encode(b"GIF89a but not really an image" * 5).decode()  # Pillow can't open
    rows[2]["answer"] = "F"  # answer not among options
    rows[3]["index"] = rows[4]["index"]  # duplicate id (the later row is quarantined)
    rows[5]["question"] = "   "  # empty question
    rows[6]["B"] = rows[6]["A"]  # duplicated options
    rows[7]["image"] = png_b64(size=(2000, 2000))  # over the pixel limit set below
    src = write_tsv(tmp_path / "bad.tsv", rows)
    # wrong encoding: a latin-1 byte inside row 9's question
    raw = src.read_bytes().replace(rows[8]["question"].encode(), rows[8]["question"].encode() + b" caf\xe9", 1)
    src.write_bytes(raw)
    ingest_to_workspace([src], tmp_path / "ws", max_pixels=3_000_000)
    led = ledger_of(tmp_path / "ws").sort("row")
    by_row = {r["row"]: r for r in led.iter_rows(named=True)}
    expect = {
        1: ("bad_base64", "image"),
        2: ("bad_image", "image"),
        3: ("answer_not_in_options", "answer"),
        5: ("duplicate_id", "index"),
        6: ("empty_question", "question"),
        8: ("image_too_large", "image"),
        9: ("bad_encoding", "question"),
    }
    for row, (reason, field) in expect.items():
        got = by_row[row]
        assert (got["status"], got["reason"], got["field"]) == ("quarantined", reason, field), got
        assert got["detail"].startswith(f"{src}: row {row} (line ") and f"field {field!r}" in got["detail"]
    assert by_row[4]["status"] == "kept" and by_row[10]["status"] == "kept"
    # duplicated options: an item of the source all the same, kept with the reason (the malformed filter judges it)
    assert (by_row[7]["status"], by_row[7]["reason"], by_row[7]["field"]) == ("kept", "duplicate_options", "A")
    assert_accounted(tmp_path / "ws", {str(src): 10})
    assert good  # the untouched copy is still a valid file
    ok = ingest(write_tsv(tmp_path / "good.tsv", good))
    assert ok.height == 10


def test_truncated_tsv_last_row_quarantined(shared_data, tmp_path):
    src = tmp_path / "trunc.tsv"
    full = (shared_data / VLM / "MMBench_samples.tsv").read_bytes()
    src.write_bytes(full[: int(len(full) * 0.55)])
    ingest_to_workspace([src], tmp_path / "ws")
    led = ledger_of(tmp_path / "ws")
    last = led.sort("row").row(-1, named=True)
    assert last["status"] == "quarantined" and last["reason"] in {"wrong_field_count", "bad_base64", "bad_image"}
    assert led.filter(pl.col("status") == "kept").height == led.height - 1


# --- bad files fail with one line, exit != 0, no traceback --------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["missing", "not_a_table", "truncated_xlsx", "truncated_parquet", "no_question", "unknown_ext"])
def test_bad_file_one_clear_line(shared_data, tmp_path, kind):
    if kind == "missing":
        src = tmp_path / "nope.tsv"
    elif kind == "not_a_table":
        src = tmp_path / "picture.tsv"
        Image.new("RGB", (10, 10)).save(src, format="PNG")
    elif kind == "truncated_xlsx":
        src = tmp_path / "cut.xlsx"
        data = (shared_data / "text_pools" / "ScienceQA_TEST_vila13b.xlsx").read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_parquet":
        good = tmp_path / "good.parquet"
        pl.DataFrame({"question": ["q"] * 100, "A": ["a"] * 100, "B": ["b"] * 100, "answer": ["A"] * 100}).write_parquet(good)
        src = tmp_path / "cut.parquet"
        src.write_bytes(good.read_bytes()[:-40])
    elif kind == "no_question":
        src = write_tsv(tmp_path / "noq.tsv", [{"index": "1", "A": "x", "B": "y", "answer": "A"}])
    else:
        src = tmp_path / "data.docx"
        src.write_text("x")
    res = run_cli("ingest", str(src), "--out", str(tmp_path / "ws"))
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert len(err.splitlines()) <= 2, err  # rich may wrap one long line
    assert err.startswith("error:") and src.name in err
    assert not (tmp_path / "ws" / "items.parquet").exists()


# --- the workspace contract ---------------------------------------------------------------


def test_reingest_replaces_and_other_sources_stay(shared_data, tmp_path):
    a = shared_data / VLM / "MMBench_samples.tsv"
    b = shared_data / VLM / "MMMU_DEV_VAL_8rows_upstream.tsv"
    ingest_to_workspace([a], tmp_path)
    ingest_to_workspace([b], tmp_path)
    ingest_to_workspace([a], tmp_path)
    items = pl.read_parquet(tmp_path / "items.parquet")
    assert items.height == 54 + 8 and items["item_id"].is_unique().all()
    assert_accounted(tmp_path, {str(a): 54, str(b): 8})


def test_crash_mid_ingest_leaves_previous_stage_file(shared_data, tmp_path):
    a = shared_data / VLM / "MMBench_samples.tsv"
    ingest_to_workspace([a], tmp_path)
    before = (tmp_path / "items.parquet").read_bytes()

    def boom(source: str, n: int) -> None:
        if n == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_to_workspace([shared_data / VLM / "AI2D_TEST_sub309.tsv"], tmp_path, on_row=boom)
    assert (tmp_path / "items.parquet").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_deterministic_bytes(shared_data, tmp_path):
    a = shared_data / VLM / "MMMU_DEV_VAL_8rows_upstream.tsv"
    ingest_to_workspace([a], tmp_path / "x")
    ingest_to_workspace([a], tmp_path / "y")
    assert (tmp_path / "x" / "items.parquet").read_bytes() == (tmp_path / "y" / "items.parquet").read_bytes()


def test_status_cli_counts(shared_data, tmp_path):
    src = shared_data / VLM / "MMMU_DEV.tsv"
    res = run_cli("ingest", str(src), "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "MMMU_DEV" in res.stdout and "150" in res.stdout
    st = run_cli("status", str(tmp_path), "--rows")
    assert st.returncode == 0
    assert "open_question" in st.stdout and "items.parquet" in st.stdout
    assert "row 84" in st.stdout.replace("\n", " ")  # the duplicate-options row (kept with its note) is listed


def test_schema_is_the_documented_one(shared_data, tmp_path):
    items = ingest(shared_data / VLM / "MMMU_DEV_VAL_8rows_upstream.tsv")
    assert list(items.columns) == list(ITEM_SCHEMA)
    ws = Workspace(tmp_path, create=True)
    with pytest.raises(UserError, match="not a readable parquet"):
        (tmp_path / "items.parquet").write_bytes(b"PAR1garbage")
        ws.read("items")
    shutil.rmtree(tmp_path)


# --- the columnar path for whole text tables agrees with the row path ------------------------


@pytest.mark.parametrize("name", ["SEEDBench_IMG_vila13b.xlsx", "MMBench_DEV_llava13b.xlsx", "ScienceQA_TEST_vila13b.xlsx"])
def test_columnar_path_equals_row_path_on_real_xlsx(shared_data, tmp_path, name):
    src = shared_data / "text_pools" / name
    ingest_to_workspace([src], tmp_path / "columnar")
    ingest_to_workspace([src], tmp_path / "rows", columnar_path=False)
    for file in ("items.parquet", "ledger.parquet"):
        a, b = pl.read_parquet(tmp_path / "columnar" / file), pl.read_parquet(tmp_path / "rows" / file)
        assert a.equals(b), f"{name}: {file} differs between the columnar and the row path"


def test_columnar_path_accepts_only_rows_the_row_path_keeps_identically():
    """Tricky cells: each row either takes the row path, or gives exactly normalize_row's item."""
    from curate import columnar
    from curate.formats import SourceRow
    from curate.normalize import Dropped, NormalizeOptions, normalize_row
    from curate.taxonomy import default_taxonomy
    from curate.errors import RowError

    rows = [
        # question, hint, A, B, C, D, answer, index, category
        ("\x85\u3000How many cars?\u2003", None, "One", "Two", None, None, " b ", "7", "Instances Counting"),  # Python-only whitespace
        ('Say "hi"\\ back\nnow\tplease', 'a "quoted" hint', "x", "y", "z", None, "c", "", "Scene Understanding"),  # JSON escapes, blank index
        ("Which colour?", None, "Red  car", "red car", "blue", "green", "A", "9", None),  # duplicate after case/space folding
        ("Which one?", None, "café", "Café", "tea", "milk", "A", "10", None),  # non-ASCII options
        ("Bell\x07?", None, "a", "b", None, None, "A", "11", None),  # control character: JSON \u0007
        ("Gap?", None, "a", None, "c", None, "A", "12", None),  # B empty, C present
        ("   ", None, "a", "b", None, None, "A", "13", None),  # blank question
        ("Out of range?", None, "a", "b", "c", "d", "E", "14", None),
        ("Spelled out?", None, "a", "b", "c", "d", "(B)", "15", None),  # decorated letter: row path's job
        ("Plain?", "", "yes", "no", "", "", "B", "16", "Instance Location"),
    ]
    names = ["question", "hint", "A", "B", "C", "D", "answer", "index", "category"]
    df = pl.DataFrame([dict(zip(names, r)) for r in rows], schema={n: pl.String for n in names})
    opts = NormalizeOptions("seed_tricky", "tricky.xlsx", {}, default_taxonomy())
    assert columnar.applicable(df, opts)
    fast, slow = columnar.normalize_frame(df, opts)
    by_row = {d["row"]: d for d in fast.to_dicts()}
    assert slow.to_list() == [False, False, True, True, True, True, True, True, True, False]
    for i, rec in enumerate(df.iter_rows(named=True), 1):
        try:
            expected = normalize_row(SourceRow(i, rec), opts)
        except (RowError, Dropped):
            expected = None
        if not slow[i - 1]:
            assert expected is not None and by_row[i] == expected, f"row {i}"
    assert by_row[1]["question"] == "How many cars?" and by_row[1]["answer"] == "B"
    assert by_row[2]["orig_index"] == "2" and json.loads(by_row[2]["meta"])["question"].endswith("now\tplease")
    assert by_row[10]["options"] == ["yes", "no"] and by_row[10]["l2_category"] == "localization"
    # the columnar strip uses exactly the characters Python's str.strip() removes
    assert set(columnar.PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_columnar_path_duplicate_ids_match_row_path(shared_data, tmp_path):
    """A second copy of a file under the same source name: every id is taken, so every row is a duplicate_id."""
    src = shared_data / "text_pools" / "ScienceQA_TEST_vila13b.xlsx"
    (tmp_path / "copy").mkdir()
    copy = shutil.copy(src, tmp_path / "copy" / src.name)
    ingest_to_workspace([src, copy], tmp_path / "columnar")
    ingest_to_workspace([src, copy], tmp_path / "rows", columnar_path=False)
    ledger = ledger_of(tmp_path / "columnar")
    assert ledger.filter(pl.col("source_file") == str(copy))["reason"].unique().to_list() == ["duplicate_id"]
    for file in ("items.parquet", "ledger.parquet"):
        assert pl.read_parquet(tmp_path / "columnar" / file).equals(pl.read_parquet(tmp_path / "rows" / file)), file


# --- normalisation rules, one decision each (mutation testing found these untested) ------------


def test_embedded_options_edges():
    from curate.normalize import split_embedded_options

    # MMStar's style; a trailing comma is not part of the last option (an option may end in X)
    assert split_embedded_options("Which genotype?\nOptions: A: XAXa, B: XaY, C: XAX,") == (
        ["XAXa", "XaY", "XAX"], "Which genotype?", "question")
    # MathVista's style: the question loses the whitespace before its choices, keeps its own start
    assert split_embedded_options("  Which is larger? \nChoices:\n(A) 1\n(B) 2") == (["1", "2"], "  Which is larger?", "question")
    # not options: no question before them, letters with a gap, nothing embedded -> the field is "options"
    for q in ("\nOptions: A: x, B: y", "Which?\nOptions: A: x, C: y", "Which?\n(A) x\n(C) y", "Plain question?"):
        assert split_embedded_options(q) == ([], q, "options"), q


def test_option_cells_padding_and_restored_none():
    from curate.normalize import RESTORED_NA_TEXT, _settle_options

    assert _settle_options([None, None, None], None, "A") == ([], None)  # no option at all: nothing to pad
    assert _settle_options(["x", "y", None, None], "B", "A") == (["x", "y"], None)  # trailing NA: padding
    opts, note = _settle_options(["x", None, "z", None], "A", "A")  # an NA before a real option is restored,
    assert opts == ["x", RESTORED_NA_TEXT, "z"] and "option(s) B empty" in note  # the trailing one is still padding
    opts, note = _settle_options(["x", "y", None, None], "D", "A")  # ... and so is the key, past the last text
    assert opts == ["x", "y", RESTORED_NA_TEXT, RESTORED_NA_TEXT] and "C, D" in note


@pytest.mark.parametrize(
    "raw, options, text_first, expected",
    [
        ("b", ["x", "y"], False, "B"),
        ("(B).", ["x", "y"], False, "B"),
        ("y", ["x", "y"], False, "B"),  # an option's text
        (1, ["x", "y"], False, "B"),  # typed as an integer: a 0-based index (ClassLabel)
        ("2", ["1", "2", "3", "4"], True, "B"),  # options came as a list: the text wins (MathVista)
        ("18", ["9", "12", "18", "18"], True, "C"),  # the same text twice: the first, as MMStar keyed it
        # quarantines: (reason, field, part of the detail)
        ("", ["x", "y"], False, ("missing_answer", "answer", "field 'answer' is empty: no answer key")),
        ("C", ["x", "y"], False, ("answer_not_in_options", "answer", "not among the 2 options (A-B)")),
        ("(E).", ["w", "x", "y", "z"], False, ("answer_not_in_options", "answer", "not among the 4 options (A-D)")),
        ("2", ["1", "2", "3", "4"], False, ("ambiguous_answer", "answer", "option B's text and, as a 0-based index, option C")),
        ("z", ["x", "y"], False, ("answer_not_in_options", "answer", "neither an option letter nor the text")),
    ],
)
def test_answer_key_rules(raw, options, text_first, expected):
    from curate.errors import RowError
    from curate.normalize import _answer_letter

    if isinstance(expected, str):
        assert _answer_letter(raw, options, "answer", text_first=text_first) == expected
        return
    with pytest.raises(RowError) as err:
        _answer_letter(raw, options, "answer")  # the default rule (text_first=False): a text answer is ambiguous
    assert (err.value.reason, err.value.field) == expected[:2] and expected[2] in err.value.detail
