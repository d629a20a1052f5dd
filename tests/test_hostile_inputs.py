"""Hostile inputs (issue 13): no wrong key, no lost row, no crash.

Every case of ``tests/hostile/corpus.py`` is written into ``tmp_path`` from real benchmark rows
and ingested. A row-level case must account for every input row (rows 1..n in the ledger,
kept + dropped + quarantined == n, kept == items), name the bad row's reason and field, and
keep every other row exactly as ingesting the clean copy does (same id, question, options,
key). A file-level case must be refused by the real CLI with one line naming the file and exit
code 2 -- never a traceback. A property test throws random TSV and JSONL rows at the readers.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.errors import UserError
from curate.ingest import ingest_to_workspace
from tests.hostile import corpus

CASES = corpus.cases()
ROW_CASES = [c for c in CASES if not c.file_error]
FILE_CASES = [c for c in CASES if c.file_error]
FORMATS = {"tsv", "plain_tsv", "csv", "plain_csv", "xlsx", "parquet", "hf_disk", "jsonl", "json"}


def test_corpus_is_large_and_covers_every_format():
    assert len(CASES) >= 60
    assert {c.fmt for c in CASES} == FORMATS
    assert len(FILE_CASES) >= 8 and sum(bool(c.bad) for c in ROW_CASES) >= 50


def _outcome(src: Path, ws: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    ingest_to_workspace([src], ws)
    ledger = pl.read_parquet(ws / "ledger.parquet").filter(pl.col("stage") == "ingest").sort("row")
    items = pl.read_parquet(ws / "items.parquet").sort("row")
    return ledger, items


def _content(items: pl.DataFrame) -> dict[int, tuple]:
    return {r["row"]: (r["orig_index"], r["question"], tuple(r["options"]), r["answer"]) for r in items.iter_rows(named=True)}


@pytest.fixture(scope="module")
def clean_outcomes(tmp_path_factory, shared_data):
    """The clean copy's ledger and item content per (format, clean mutation): built once each."""
    cache: dict = {}

    def get(case: corpus.Case):
        key = (case.fmt, case.clean_mutate)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"clean_{case.fmt}")
            src = corpus.build(case, shared_data, folder / "in", clean=True)
            ledger, items = _outcome(src, folder / "ws")
            assert ledger.height == len(corpus.base_records(case.fmt, shared_data))
            assert items.height == ledger.height, ledger.select("row", "status", "reason")  # the good rows are good
            cache[key] = (ledger, _content(items))
        return cache[key]

    return get


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.name for c in ROW_CASES])
def test_bad_rows_are_named_and_good_rows_unchanged(case, shared_data, tmp_path, clean_outcomes):
    src = corpus.build(case, shared_data, tmp_path / "in")
    ledger, items = _outcome(src, tmp_path / "ws")
    clean_ledger, clean_items = clean_outcomes(case)
    n = clean_ledger.height

    # every input row accounted for, once
    assert ledger["row"].to_list() == list(range(1, n + 1)), ledger.select("row", "status", "reason")
    assert ledger["source_file"].unique().to_list() == [str(src)]
    assert ledger.filter(pl.col("status") == "kept").height == items.height
    assert set(ledger["status"]) <= {"kept", "dropped", "quarantined"}

    got = {r["row"]: r for r in ledger.iter_rows(named=True)}
    for row, (reason, field) in case.bad.items():
        r = got[row]
        reasons = reason if isinstance(reason, frozenset) else {reason}
        assert (r["status"], r["field"]) == (case.status, field) and r["reason"] in reasons, r
        assert r["detail"].startswith(f"{src}: row {row}"), r["detail"]

    # every other row: as from the clean copy (same status; when kept, same id, question, options, key)
    content = _content(items)
    clean_rows = {r["row"]: r for r in clean_ledger.iter_rows(named=True)}
    for row in range(1, n + 1):
        if row in case.bad:
            continue
        assert (got[row]["status"], got[row]["reason"]) == (clean_rows[row]["status"], clean_rows[row]["reason"]), (row, got[row])
        if got[row]["status"] == "kept":
            if row in case.kept_question:
                assert content[row][1] == case.kept_question[row]
                assert content[row][2:] == clean_items[row][2:]
            else:
                assert content[row] == clean_items[row], row

    if case.fmt == "xlsx":  # the columnar fast path and the row path decide every row alike
        ingest_to_workspace([src], tmp_path / "ws_rows", columnar_path=False)
        by_rows = pl.read_parquet(tmp_path / "ws_rows" / "ledger.parquet").sort("row")
        cols = ["row", "item_id", "status", "reason", "field", "detail"]
        assert by_rows.select(cols).equals(ledger.select(cols))
        assert _content(pl.read_parquet(tmp_path / "ws_rows" / "items.parquet")) == content


def _cli_driver(sources: list[Path], ws: Path) -> list[dict]:
    """Run ``mmcurate ingest SRC`` through the CLI's entry point for every source, in one process
    (a process per file would cost seconds each); exit code and everything printed, per source."""
    script = f"""
import contextlib, io, json, sys, traceback
from curate import cli
out = []
for src in {json.dumps([str(s) for s in sources])}:
    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        sys.argv = ["mmcurate", "ingest", src, "--out", {json.dumps(str(ws))}]
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            code = "crash"
            buf.write(traceback.format_exc())
    out.append({{"src": src, "code": code, "output": buf.getvalue()}})
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_unreadable_files_one_line_exit_2(shared_data, tmp_path):
    sources = [corpus.build(c, shared_data, tmp_path / c.name) for c in FILE_CASES]
    for case, src in zip(FILE_CASES, sources):  # the library raises the one-line UserError ...
        with pytest.raises(UserError) as err:
            ingest_to_workspace([src], tmp_path / f"ws_{case.name}")
        assert "\n" not in str(err.value) and src.name in str(err.value), (case.name, str(err.value))
    for case, res in zip(FILE_CASES, _cli_driver(sources, tmp_path / "ws_cli")):  # ... and the CLI prints it so
        assert res["code"] == 2, (case.name, res)
        assert "Traceback" not in res["output"], (case.name, res["output"][-2000:])
        lines = res["output"].strip().splitlines()
        assert lines[0].startswith("error:") and len(lines) <= 3, (case.name, res["output"])
        assert Path(res["src"]).name in " ".join(res["output"].split()).replace(" ", ""), (case.name, res["output"])
    assert not (tmp_path / "ws_cli" / "items.parquet").exists()


def test_mathvista_numbers_as_options_keep_the_text_key(shared_data, tmp_path):
    """The real MathVista file: an answer that is an option's text is keyed by that text, never
    read as a 0-based index (pid 198: options 1..4 and answer "1" is A, not B)."""
    ledger, items = _outcome(shared_data / corpus.MATHVISTA, tmp_path / "ws")
    assert ledger.height == 1000
    by_pid = {r["orig_index"]: r for r in items.iter_rows(named=True)}
    raw = json.loads((shared_data / corpus.MATHVISTA).read_text(encoding="utf-8"))
    # every multiple-choice row is kept (the 460 free-form ones are not items), so each check below runs 540 times
    with_choices = sorted(pid for pid, rec in raw.items() if rec.get("choices"))
    assert len(with_choices) == 540 and sorted(by_pid) == with_choices
    for pid in with_choices:
        item, want = by_pid[pid], str(raw[pid]["answer"]).strip()
        assert item["answer_text"] == want, pid
        assert item["options"]["ABCDEFGHIJ".index(item["answer"])] == want, pid
    assert (by_pid["198"]["options"], by_pid["198"]["answer"]) == (["1", "2", "3", "4"], "A")


# --- property tests: random rows keep the ledger invariant ----------------------------------

_CELL = st.text(alphabet=st.sampled_from(list('ab A"\t\n\r,;\\é中\u200b\ufeff\x00[]{}')), max_size=12) | st.sampled_from(["nan", "None", "x"])


def _accounted(ws: Path, n_rows: int | None) -> pl.DataFrame:
    ledger = pl.read_parquet(ws / "ledger.parquet").filter(pl.col("stage") == "ingest").sort("row")
    items = pl.read_parquet(ws / "items.parquet")
    assert ledger["row"].to_list() == list(range(1, ledger.height + 1))
    assert ledger.filter(pl.col("status") == "kept").height == items.height
    if n_rows is not None:
        assert ledger.height == n_rows
    return ledger


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(_CELL, _CELL, _CELL, _CELL, st.sampled_from(["A", "B", "C", "", "b", "(A)", "7"])), min_size=1, max_size=8))
def test_random_tsv_rows_are_all_accounted(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("prop_tsv")
    lines = ["index\tquestion\tA\tB\tC\tanswer"] + [f"{i}\t" + "\t".join(r) for i, r in enumerate(rows)]
    src = folder / "random.tsv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        ingest_to_workspace([src], folder / "ws")
    except UserError as exc:  # a whole-file refusal is allowed, as one line
        assert "\n" not in str(exc)
        return
    text = src.read_text(encoding="utf-8")
    # without quotes every physical data line that holds anything is exactly one ledger row
    # (a line break inside a cell makes two lines, two rows); with quotes, rows stay 1..n
    data_lines = [ln for ln in re.split(r"\r\n|\r|\n", text)[1:] if ln.strip()]
    _accounted(folder / "ws", len(data_lines) if '"' not in text else None)


_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | _CELL,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_CELL, inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(records=st.lists(st.dictionaries(st.sampled_from(["question", "A", "B", "C", "options", "answer", "image", "category", "index"]), _VALUE, max_size=8), min_size=1, max_size=8))
def test_random_jsonl_rows_are_all_accounted(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("prop_jsonl")
    src = folder / "random.jsonl"
    src.write_text(json.dumps({"question": "Which?", "A": "x", "B": "y", "answer": "A"}) + "\n"
                   + "\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    ingest_to_workspace([src], folder / "ws")
    _accounted(folder / "ws", len(records) + 1)


def test_columnar_visible_class_agrees_with_the_row_rule():
    """The fast path accepts a question as non-empty only by characters that the row path's
    ``_invisible`` also counts as visible, so both paths quarantine the same invisible questions."""
    import unicodedata

    from curate.columnar import _SURELY_VISIBLE
    from curate.normalize import _invisible

    rx = re.compile(_SURELY_VISIBLE)
    surely = [chr(c) for c in range(0x10000) if rx.match(chr(c))]
    assert len(surely) > 30_000
    assert not [ch for ch in surely if _invisible(ch) or unicodedata.category(ch)[0] in "CZ"]
    assert _invisible("\u200b\ufeff \u2060") and not _invisible("a\u200b")


# --- quoted cells over several lines vs rows glued by a stray quote ---------------------------

MMSTAR_RESULT = Path(__file__).parent / "data" / "mmstar" / "vila_8b_MMStar.xlsx"
#: A question and a hint over several lines holding commas and tabs, as a table pasted into a cell.
TABLE_QUESTION = "Read the table.\nshape, sides\tcolour\n3, triangle\tred\nWhich shape has 3 sides?"
TABLE_HINT = "Options: A: a, B: b\n12\t7, 8"


@pytest.mark.parametrize("delimiter", [",", "\t"], ids=["csv", "tsv"])
def test_quoted_multiline_cells_holding_the_delimiter_are_kept(shared_data, tmp_path, delimiter):
    """Quoted the way pandas and the csv module write (only cells that need it), a question and a
    hint with line breaks and the delimiter are one good row each, read back to the character."""
    rows = corpus.mmbench_rows(shared_data)
    rows[1]["question"], rows[3]["hint"] = TABLE_QUESTION, TABLE_HINT
    src = tmp_path / ("multi.csv" if delimiter == "," else "multi.tsv")
    with open(src, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        w.writerow(rows[0])
        w.writerows([list(r.values()) for r in rows])
    assert src.read_text(encoding="utf-8").count("\n") == 1 + 5 + 3 + 1  # header, rows, the cells' line breaks
    ledger, items = _outcome(src, tmp_path / "ws")
    assert ledger.select("row", "status").rows() == [(i, "kept") for i in range(1, 6)], ledger.select("row", "status", "reason")
    by_row = {r["row"]: r for r in items.iter_rows(named=True)}
    assert (by_row[2]["question"], by_row[4]["hint"]) == (TABLE_QUESTION, TABLE_HINT)
    assert [by_row[i]["question"] for i in (1, 3, 4, 5)] == [rows[i - 1]["question"] for i in (1, 3, 4, 5)]


def test_csv_copy_of_a_real_mmstar_file_keeps_every_row(tmp_path):
    """MMStar questions carry "Options: A: .., B: .." lines: in a CSV copy of a real result file
    every one of them is a quoted cell holding line breaks and commas, and none is lost."""
    raw = pl.read_excel(MMSTAR_RESULT, infer_schema_length=0)
    src = tmp_path / "mmstar.csv"
    raw.write_csv(src)
    ledger, items = _outcome(src, tmp_path / "ws")
    multiline = raw.filter(pl.col("question").str.contains("\n") & pl.col("question").str.contains(","))
    assert multiline.height > 300 and ledger.height == raw.height == 1500
    assert set(ledger["status"]) == {"kept"}, ledger.filter(pl.col("status") != "kept").head(3)
    assert dict(items.select("orig_index", "question").rows()) == dict(raw.select("index", "question").rows())


def _glued(shared_data: Path, folder: Path, delimiter: str, closing: str) -> tuple[Path, list[dict]]:
    """Real rows, unquoted: row 2's question opens with a stray quote and row 4's question holds
    the quote that ends it, at the end of the cell or the start -- rows 2-4 read as one record of
    the header's length, the reader's view of three rows glued by a stray quote."""
    rows = corpus.mmbench_rows(shared_data)
    rows[1]["question"] = '"' + rows[1]["question"]
    rows[3]["question"] = rows[3]["question"] + ' 5"' if closing == "end" else '"' + rows[3]["question"]
    src = corpus.write_plain_tsv(folder / ("glued.csv" if delimiter == "," else "glued.tsv"), rows, delimiter=delimiter)
    with open(src, encoding="utf-8", newline="") as fh:  # the premise: one record of the right length over 3 lines
        records = list(csv.reader(fh, delimiter=delimiter))
    assert len(records) == 4 and {len(r) for r in records} == {len(rows[0])}
    return src, rows


@pytest.mark.parametrize("closing", ["end", "start"])
@pytest.mark.parametrize("delimiter", [",", "\t"], ids=["csv", "tsv"])
def test_rows_glued_by_a_stray_quote_are_still_split_and_named(shared_data, tmp_path, delimiter, closing):
    """The stray quote's row is quarantined naming file, row and field; the rows it swallowed are
    rows again (the one whose quote closed the run is quarantined too when that quote opens its cell)."""
    src, rows = _glued(shared_data, tmp_path, delimiter, closing)
    ledger, items = _outcome(src, tmp_path / "ws")
    bad = {2: "question"} | ({4: "question"} if closing == "start" else {})
    got = {r["row"]: r for r in ledger.iter_rows(named=True)}
    assert sorted(got) == [1, 2, 3, 4, 5]
    for row, r in got.items():
        if row in bad:
            assert (r["status"], r["reason"], r["field"]) == ("quarantined", "unbalanced_quote", bad[row]), r
            assert r["detail"].startswith(f"{src}: row {row} (line {row + 1})"), r["detail"]
        else:
            assert r["status"] == "kept", r
    kept = {r["row"]: r["question"] for r in items.iter_rows(named=True)}
    assert kept == {i: rows[i - 1]["question"] for i in range(1, 6) if i not in bad}


@pytest.mark.parametrize("text, glued", [
    ('1,"Options: A: x, B: y\nso, which?"\n', False),  # a well-quoted cell: line break and comma
    ('1,"a\nso,b"\n', False),  # both lines split in two, but the second opens with text, not a key
    ('1,"a, b\n2,c\n', True),  # the quote never closes (only well-formedness tells)
    ('1,"a, b\n2,"c\n', True),  # a quote "closes" with text after it (only well-formedness tells)
    ('1,"a\n2,b"\n', True),  # closed at a cell's end: whole rows, the second opening with a key
])
def test_swallowed_needs_one_mark_of_a_stray_quote(text, glued):
    """Each mark of ``_swallowed`` on its own, on one two-column record as the csv reader sees it."""
    from curate.formats.vlmevalkit import _swallowed

    lines = text.splitlines(keepends=True)
    fields = next(csv.reader(lines, delimiter=","))
    assert len(fields) == 2
    assert _swallowed(fields, lines, 2, ",") is glued
