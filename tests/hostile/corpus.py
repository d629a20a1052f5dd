"""A corpus of hostile inputs for ingest, built at test time from real benchmark rows.

Each ``Case`` starts from the same few good rows of a real file (MMBench rows from
``vlmevalkit/MMBench_samples.tsv``, MathVista records from ``text_pools/MathVista_testmini.json``),
breaks one thing -- a cell, a header, the bytes of the file -- and says what ingest must make of
it: the bad row quarantined (or dropped) with a reason and a field, or the whole file refused
with one line. Everything else must come out exactly as from the clean copy written by the same
writer, so a case also catches a bad row that takes good rows down with it.

``python -m tests.hostile.corpus OUT_DIR`` writes every case's file (for trying the CLI by hand).
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image

csv.field_size_limit(sys.maxsize)

MMBENCH = "vlmevalkit/MMBench_samples.tsv"
MATHVISTA = "text_pools/MathVista_testmini.json"
TEXT_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category")
ZWSP = "\u200b"


# --- good rows from real files --------------------------------------------------------------


def mmbench_rows(data: Path, n: int = 5) -> list[dict]:
    """``n`` MMBench rows (both languages) whose cells hold no tab, newline or quote, so even the
    unquoted writer keeps them intact."""
    with open(data / MMBENCH, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    clean = [r for r in rows if not any(c in v for v in r.values() for c in '\t\n\r",')]
    cn = [r for r in clean if r["lang"] == "cn"][:2]
    en = [r for r in clean if r["lang"] == "en"][: n - len(cn)]
    return [{k: r[k] for k in (*TEXT_COLUMNS, "image")} for r in cn + en]


def mathvista_records(data: Path, n: int = 5) -> dict[str, dict]:
    """``n`` multiple-choice MathVista records, keyed by pid as in the real file."""
    obj = json.loads((data / MATHVISTA).read_text(encoding="utf-8"))
    return dict([(pid, rec) for pid, rec in obj.items() if rec.get("choices")][:n])


# --- image payloads ---------------------------------------------------------------------------


def png_bytes(size: tuple[int, int] = (16, 16), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def truncated_jpeg(b64: str) -> bytes:
    """A real JPEG cut in the middle of its scan data: headers read, pixels do not."""
    data = base64.b64decode(b64)
    return data[: len(data) // 2]


def corrupt_idat_png() -> bytes:
    """A PNG whose IDAT payload is garbage but whose chunk CRCs are right (``verify`` passes it)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    pos = data.find(b"IDAT")
    length = struct.unpack(">I", data[pos - 4 : pos])[0]
    body = bytes((b ^ 0x5A) for b in data[pos + 4 : pos + 4 + length])
    data[pos + 4 : pos + 4 + length] = body
    data[pos + 4 + length : pos + 8 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + body) & 0xFFFFFFFF)
    return bytes(data)


# --- writers: records -> a file (or folder) of one format --------------------------------------


def write_tsv(path: Path, rows: list[dict], *, delimiter: str = "\t", header: list[str] | None = None) -> Path:
    """VLMEvalKit's convention: every cell quoted."""
    header = header or list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter, quoting=csv.QUOTE_ALL)
        w.writerow(header)
        w.writerows([[r.get(h, "") for h in header] for r in rows])
    return path


def write_plain_tsv(path: Path, rows: list[dict], *, delimiter: str = "\t") -> Path:
    """No quoting at all (pandas ``to_csv(quoting=QUOTE_NONE)``): a ``"`` in a cell is just a character."""
    header = list(rows[0])
    lines = [delimiter.join(header)] + [delimiter.join(str(r[h]) for h in header) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_xlsx(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    """A minimal workbook (inline strings) -- enough for fastexcel, no writer library needed."""
    header = header or list(rows[0])

    def col(i: int) -> str:
        return chr(ord("A") + i) if i < 26 else "A" + chr(ord("A") + i - 26)

    def cell(ref: str, v: str) -> str:
        return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{escape(v)}</t></is></c>'

    body = []
    for r, values in enumerate([header] + [[str(row.get(h, "")) for h in header] for row in rows], 1):
        body.append(f'<row r="{r}">' + "".join(cell(f"{col(i)}{r}", v) for i, v in enumerate(values) if v != "") + "</row>")
    sheet = (
        '<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"<sheetData>{''.join(body)}</sheetData></worksheet>"
    )
    ns = "http://schemas.openxmlformats.org"
    files = {
        "[Content_Types].xml": f'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="{ns}/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        "</Types>",
        "_rels/.rels": f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml": f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}/spreadsheetml/2006/main" '
        f'xmlns:r="{ns}/officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels": f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>',
        "xl/worksheets/sheet1.xml": sheet,
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _image_struct_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        img = r.get("image")
        if isinstance(img, str):
            r["image"] = {"bytes": base64.b64decode(img), "path": None}
        out.append(r)
    return out


def write_parquet(path: Path, rows: list[dict], *, names: list[str] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if names is None:
        table = pa.Table.from_pylist(_image_struct_rows(rows))
    else:  # repeated column names: only the array constructor allows them
        table = pa.Table.from_arrays([pa.array([r[i] for r in rows]) for i in range(len(names))], names=names)
    pq.write_table(table, path)
    return path


def write_hf_disk(path: Path, rows: list[dict]) -> Path:
    import datasets

    rows = _image_struct_rows(rows)
    feats = {k: datasets.Value("string") for k in rows[0] if k != "image"}
    if any(isinstance(r.get("A"), list) for r in rows):
        feats["A"] = datasets.List(datasets.Value("string"))
    feats["image"] = datasets.Image()
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(feats))
    ds.save_to_disk(str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """JSONL with an image folder beside it (``images/<index>.jpg``, written from the base64 cell)."""
    folder = path.parent / "images"
    folder.mkdir(exist_ok=True)
    lines = []
    for r in rows:
        r = dict(r)
        raw = r.pop("_raw_line", None)  # a line written by hand (a callable gets the record as written)
        img = r.get("image")
        if isinstance(img, str) and not img.startswith(("images/", "../")) and len(img) > 200:
            name = f"images/{r.get('index', len(lines))}.jpg"
            (path.parent / name).write_bytes(base64.b64decode(img))
            r["image"] = name
        elif isinstance(img, bytes):
            name = f"images/{r.get('index', len(lines))}.bin"
            (path.parent / name).write_bytes(img)
            r["image"] = name
        lines.append(raw(r) if callable(raw) else raw if raw is not None else json.dumps(r, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_json(path: Path, records: dict | list) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


# --- cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    """One kind of bad input.

    ``fmt`` names the writer (and the clean copy the good rows are compared with); ``mutate``
    changes the records before writing, ``raw`` the file's bytes after; ``bad`` maps a 1-based
    row to (reason or reasons, field); ``file_error`` means the whole file must be refused with
    one line naming it. ``status`` is the bad rows' ledger status.
    """

    name: str
    fmt: str
    mutate: Callable[[list, Path], object] | None = None
    raw: Callable[[bytes], bytes] | None = None
    bad: dict[int, tuple[str | frozenset, str | None]] = field(default_factory=dict)
    file_error: bool = False
    status: str = "quarantined"
    clean_mutate: Callable[[list, Path], object] | None = None  # the clean copy's own change (e.g. ten option columns)
    kept_question: dict[int, str] = field(default_factory=dict)  # unusual but valid rows: the question as written


SUFFIX = {"tsv": ".tsv", "plain_tsv": ".tsv", "csv": ".csv", "plain_csv": ".csv", "xlsx": ".xlsx", "parquet": ".parquet",
          "hf_disk": "", "jsonl": ".jsonl", "json": ".json"}


def base_records(fmt: str, data: Path) -> list | dict:
    if fmt == "json":
        return mathvista_records(data)
    rows = mmbench_rows(data)
    if fmt == "xlsx":
        return [{k: v for k, v in r.items() if k != "image"} for r in rows]
    return rows


def write(fmt: str, path: Path, records) -> Path:
    if fmt in ("tsv", "csv"):
        return write_tsv(path, records, delimiter="\t" if fmt == "tsv" else ",")
    if fmt in ("plain_tsv", "plain_csv"):
        return write_plain_tsv(path, records, delimiter="\t" if fmt == "plain_tsv" else ",")
    writers = {"xlsx": write_xlsx, "parquet": write_parquet, "hf_disk": write_hf_disk, "jsonl": write_jsonl, "json": write_json}
    return writers[fmt](path, records)


def build(case: Case, data: Path, folder: Path, *, clean: bool = False) -> Path:
    """Write ``case``'s file (or, with ``clean``, the unbroken copy) into ``folder``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    records = copy.deepcopy(base_records(case.fmt, data))
    special = None
    mutate = case.clean_mutate if clean else case.mutate
    if mutate is not None:
        special = mutate(records, folder)
    stem = "clean" if clean else case.name
    path = folder / (stem + SUFFIX[case.fmt])
    if callable(special):  # the mutation writes the file itself (repeated names, ...)
        special(path)
    else:
        write(case.fmt, path, records)
    if not clean and case.raw is not None:
        path.write_bytes(case.raw(path.read_bytes()))
    return path


# mutation helpers ------------------------------------------------------------------------------


def setcell(row: int, col: str, value) -> Callable:
    def mutate(records, folder):
        records[row - 1][col] = value
    return mutate


def jcell(row: int, col: str, value) -> Callable:
    """MathVista records are a dict by pid: set a field of the ``row``-th."""
    def mutate(records, folder):
        list(records.values())[row - 1][col] = value
    return mutate


def replace_once(old: bytes, new: bytes, nth: int = 1) -> Callable[[bytes], bytes]:
    def raw(data: bytes) -> bytes:
        at = -1
        for _ in range(nth):
            at = data.index(old, at + 1)
        return data[:at] + new + data[at + len(old) :]
    return raw


def with_k_column(filled: bool) -> Callable:
    """Options A..K: J and K columns added (E..J filled for every row, K only for row 2 when ``filled``)."""
    def mutate(records, folder):
        for i, r in enumerate(records):
            image = r.pop("image", None)
            answer, category = r.pop("answer"), r.pop("category")
            for L in "EFGHIJ":
                r[L] = f"{L.lower()} option"
            r["K"] = "k option" if filled and i == 1 else ""
            r["answer"], r["category"] = answer, category
            if image is not None:
                r["image"] = image
    return mutate


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def cases() -> list[Case]:
    """Every kind in the corpus (names are unique; ``fmt`` says which writer)."""
    R = "dropped"
    long_text = "How many? " * 2_000  # 20,000 characters
    bad_b64 = "!!not base64!!" * 30

    def trunc_image(records, folder):
        records[2]["image"] = base64.b64encode(truncated_jpeg(records[2]["image"])).decode()

    def idat_image(records, folder):
        records[2]["image"] = base64.b64encode(corrupt_idat_png()).decode()

    def struct(records, folder, value):
        records[2]["image"] = value

    out = [
        # --- VLMEvalKit TSV (every cell quoted) ---
        Case("tsv_bom", "tsv", raw=lambda b: b"\xef\xbb\xbf" + b),
        Case("tsv_crlf", "tsv", raw=lambda b: b.replace(b"\n", b"\r\n")),
        Case("tsv_repeated_header", "tsv", raw=replace_once(b'"answer"', b'"answer"\t"answer"'), file_error=True),
        Case("tsv_k_column_filled", "tsv", mutate=with_k_column(True), clean_mutate=with_k_column(False), bad={2: ("too_many_options", "K")}),
        Case("tsv_latin1_category", "tsv", raw=lambda b: _latin1_in(b, 3, "category"), bad={3: ("bad_encoding", "category")}),
        Case("tsv_latin1_question", "tsv", raw=lambda b: _latin1_in(b, 2, "question"), bad={2: ("bad_encoding", "question")}),
        Case("tsv_latin1_hint", "tsv", raw=lambda b: _latin1_in(b, 4, "hint"), bad={4: ("bad_encoding", "hint")}),
        Case("tsv_zwsp_question", "tsv", mutate=setcell(2, "question", ZWSP), bad={2: ("empty_question", "question")}),
        Case("tsv_bom_char_question", "tsv", mutate=setcell(2, "question", "\ufeff\u200d\u2060"), bad={2: ("empty_question", "question")}),
        Case("tsv_blank_question", "tsv", mutate=setcell(3, "question", " \t "), bad={3: ("empty_question", "question")}),
        Case("tsv_question_too_long", "tsv", mutate=setcell(2, "question", long_text), bad={2: ("text_too_long", "question")}),
        Case("tsv_hint_too_long", "tsv", mutate=setcell(2, "hint", long_text), bad={2: ("text_too_long", "hint")}),
        Case("tsv_option_too_long", "tsv", mutate=setcell(2, "A", long_text), bad={2: ("text_too_long", "A")}),
        Case("tsv_zwsp_option", "tsv", mutate=setcell(2, "B", ZWSP), bad={2: ("empty_option", "A")}),
        Case("tsv_bad_base64", "tsv", mutate=setcell(2, "image", bad_b64), bad={2: ("bad_base64", "image")}),
        Case("tsv_truncated_jpeg", "tsv", mutate=trunc_image, bad={3: ("bad_image", "image")}),
        Case("tsv_corrupt_idat_png", "tsv", mutate=idat_image, bad={3: ("bad_image", "image")}),
        Case("tsv_not_an_image", "tsv", mutate=setcell(2, "image", base64.b64encode(b"GIF89a junk" * 20).decode()), bad={2: ("bad_image", "image")}),
        Case("tsv_answer_not_in_options", "tsv", mutate=setcell(2, "answer", "F"), bad={2: ("answer_not_in_options", "answer")}),
        Case("tsv_missing_answer", "tsv", mutate=setcell(2, "answer", ""), bad={2: ("missing_answer", "answer")}),
        Case("tsv_one_option", "tsv", mutate=lambda rs, f: rs[1].update(B="", C="", D="", answer="A"), bad={2: ("too_few_options", "A")}),
        Case("tsv_duplicate_index", "tsv", mutate=lambda rs, f: rs[3].update(index=rs[0]["index"]), bad={4: ("duplicate_id", "index")}),
        Case("tsv_missing_field", "tsv", raw=lambda b: _drop_tab(b, 3), bad={3: ("wrong_field_count", "image")}),
        Case("tsv_image_ref_missing", "tsv", mutate=setcell(2, "image", "424242"), bad={2: ("image_ref_missing", "image")}),
        Case("tsv_bad_image_list", "tsv", mutate=setcell(2, "image", "[" + "abc, def" * 20 + "]"), bad={2: ("bad_image_list", "image")}),
        Case("tsv_empty_image", "tsv", mutate=setcell(2, "image", ""), bad={2: ("no_image", None)}, status=R),
        Case("tsv_multiline_question_kept", "tsv", mutate=setcell(2, "question", "First line\nsecond line?"), kept_question={2: "First line\nsecond line?"}),
        Case("tsv_quoted_quote_kept", "tsv", mutate=setcell(2, "question", 'What does "X" say?'), kept_question={2: 'What does "X" say?'}),
        Case("tsv_text_list_option_kept", "tsv", mutate=setcell(2, "question", "[1]"), kept_question={2: "[1]"}),
        Case("tsv_nul_in_option", "tsv", mutate=lambda rs, f: rs[2].update(C=rs[2]["C"] + "\x00"), bad={3: ("bad_encoding", "C")}),
        Case("tsv_empty_file", "tsv", raw=lambda b: b"", file_error=True),
        Case("tsv_binary_file", "tsv", raw=lambda b: png_bytes(), file_error=True),
        # --- unquoted TSV / CSV (quotes are characters) ---
        Case("tsv_stray_quote", "plain_tsv", mutate=lambda rs, f: rs[1].update(question='"' + rs[1]["question"]), bad={2: ("unbalanced_quote", "question")}),
        Case("tsv_stray_quote_in_hint", "plain_tsv", mutate=lambda rs, f: rs[0].update(hint='"Note'), bad={1: ("unbalanced_quote", "hint")}),
        Case("tsv_stray_quote_last_row", "plain_tsv", mutate=lambda rs, f: rs[4].update(question='"' + rs[4]["question"]),
             bad={5: ("unbalanced_quote", "question")}),
        Case("tsv_two_stray_quotes", "plain_tsv", mutate=lambda rs, f: (rs[0].update(question='"' + rs[0]["question"]), rs[2].update(A='"' + rs[2]["A"])),
             bad={1: ("unbalanced_quote", "question"), 3: ("unbalanced_quote", "A")}),
        Case("csv_stray_quote", "plain_csv", mutate=lambda rs, f: rs[1].update(question='"' + rs[1]["question"]), bad={2: ("unbalanced_quote", "question")}),
        # --- CSV (quoted) ---
        Case("csv_bom", "csv", raw=lambda b: b"\xef\xbb\xbf" + b),
        Case("csv_latin1_question", "csv", raw=lambda b: _latin1_in(b, 2, "question", sep=b","), bad={2: ("bad_encoding", "question")}),
        Case("csv_repeated_header", "csv", raw=replace_once(b'"answer"', b'"answer","answer"'), file_error=True),
        Case("csv_zwsp_question", "csv", mutate=setcell(5, "question", ZWSP * 3), bad={5: ("empty_question", "question")}),
        # --- xlsx (text only: the columnar path decides clean rows) ---
        Case("xlsx_repeated_header", "xlsx", mutate=lambda rs, f: (lambda p: write_xlsx(p, rs, header=[*rs[0], "answer"])), file_error=True),
        Case("xlsx_k_column_filled", "xlsx", mutate=with_k_column(True), clean_mutate=with_k_column(False), bad={2: ("too_many_options", "K")}),
        Case("xlsx_zwsp_question", "xlsx", mutate=setcell(3, "question", ZWSP), bad={3: ("empty_question", "question")}),
        Case("xlsx_question_too_long", "xlsx", mutate=setcell(2, "question", long_text), bad={2: ("text_too_long", "question")}),
        Case("xlsx_answer_not_in_options", "xlsx", mutate=setcell(2, "answer", "E"), bad={2: ("answer_not_in_options", "answer")}),
        Case("xlsx_truncated", "xlsx", raw=lambda b: b[: len(b) // 2], file_error=True),
        # --- parquet ---
        Case("parquet_int_image", "parquet", mutate=lambda rs, f: [r.update(image=7) for r in rs], bad={i: ("bad_image", "image") for i in range(1, 6)}),
        Case("parquet_path_only_struct", "parquet", mutate=lambda rs, f: _path_only(rs, f, "img.png"), bad={}),
        Case("parquet_path_only_missing", "parquet", mutate=lambda rs, f: struct(rs, f, {"path": "nope.png"}), bad={3: ("image_missing", "image")}),
        Case("parquet_path_escapes", "parquet", mutate=lambda rs, f: struct(rs, f, {"bytes": None, "path": "../../etc/passwd"}), bad={3: ("image_path_outside_root", "image")}),
        Case("parquet_list_option", "parquet", mutate=lambda rs, f: [r.update(A=[r["A"]]) for r in rs] and None,
             bad={i: ("bad_options", "A") for i in range(1, 6)}),
        Case("parquet_list_question", "parquet", mutate=lambda rs, f: [r.update(question=[r["question"]]) for r in rs] and None, bad={i: ("bad_field_type", "question") for i in range(1, 6)}),
        Case("parquet_truncated_jpeg", "parquet", mutate=lambda rs, f: rs[1].update(image={"bytes": truncated_jpeg(rs[1]["image"]), "path": None}), bad={2: ("bad_image", "image")}),
        Case("parquet_corrupt_idat", "parquet", mutate=lambda rs, f: rs[1].update(image={"bytes": corrupt_idat_png(), "path": None}), bad={2: ("bad_image", "image")}),
        Case("parquet_repeated_column", "parquet", mutate=lambda rs, f: (lambda p: write_parquet(p, [[r["question"], r["A"], r["B"], r["answer"], "B"] for r in rs],
                                                                                                    names=["question", "A", "B", "answer", "answer"])), file_error=True),
        Case("parquet_zwsp_question", "parquet", mutate=setcell(4, "question", ZWSP), bad={4: ("empty_question", "question")}),
        Case("parquet_binary_index", "parquet", mutate=lambda rs, f: [r.update(index=r["index"].encode()) for r in rs] and None,
             bad={i: ("bad_field_type", "index") for i in range(1, 6)}),
        Case("parquet_truncated_file", "parquet", raw=lambda b: b[:-60], file_error=True),
        # --- save_to_disk ---
        Case("hf_disk_corrupt_image", "hf_disk", mutate=lambda rs, f: rs[1].update(image={"bytes": truncated_jpeg(rs[1]["image"]), "path": None}), bad={2: ("bad_image", "image")}),
        Case("hf_disk_zwsp_question", "hf_disk", mutate=setcell(3, "question", ZWSP + " "), bad={3: ("empty_question", "question")}),
        Case("hf_disk_list_option", "hf_disk", mutate=lambda rs, f: [r.update(A=[r["A"]]) for r in rs] and None, bad={i: ("bad_options", "A") for i in range(1, 6)}),
        # --- JSONL + image folder ---
        Case("jsonl_nul_in_image_path", "jsonl", mutate=setcell(2, "image", "images/a\x00b.jpg"), bad={2: ("bad_image_path", "image")}),
        Case("jsonl_deep_nesting", "jsonl", mutate=lambda rs, f: rs[1].update(_raw_line='{"question": "q", "x": ' + nested(100_000) + "}"),
             bad={2: ("too_deeply_nested", None)}),
        Case("jsonl_repeated_key", "jsonl", mutate=lambda rs, f: rs[2].update(_raw_line=lambda r: json.dumps(r)[:-1] + ', "answer": "A"}'),
             bad={3: ("repeated_key", "answer")}),
        Case("jsonl_bom", "jsonl", raw=lambda b: b"\xef\xbb\xbf" + b),
        Case("jsonl_path_traversal", "jsonl", mutate=setcell(2, "image", "../../../../etc/hostname"), bad={2: ("image_path_outside_root", "image")}),
        Case("jsonl_missing_image", "jsonl", mutate=setcell(2, "image", "images/none.jpg"), bad={2: ("image_missing", "image")}),
        Case("jsonl_truncated_jpeg_file", "jsonl", mutate=lambda rs, f: rs[1].update(image=truncated_jpeg(rs[1]["image"])), bad={2: ("bad_image", "image")}),
        Case("jsonl_not_json_line", "jsonl", mutate=lambda rs, f: rs[2].update(_raw_line='{"question": "cut'), bad={3: ("bad_json", None)}),
        Case("jsonl_latin1_line", "jsonl", raw=lambda b: _latin1_line(b, 4), bad={4: ("bad_encoding", None)}),
        Case("jsonl_array_line", "jsonl", mutate=lambda rs, f: rs[1].update(_raw_line="[1, 2]"), bad={2: ("not_an_object", None)}),
        Case("jsonl_lone_surrogate_category", "jsonl", mutate=lambda rs, f: rs[1].update(_raw_line=lambda r: json.dumps(r | {"category": "x"}).replace('"category": "x"', '"category": "x\\udce9"')),
             bad={2: ("bad_encoding", "category")}),
        Case("jsonl_int_image", "jsonl", mutate=setcell(2, "image", 5), bad={2: ("bad_image_field", "image")}),
        Case("jsonl_options_nested_list", "jsonl", mutate=lambda rs, f: rs[1].update(options=[["x"], "y", "z"], A="", B="", C="", D=""), bad={2: ("bad_options", "options")}),
        Case("jsonl_options_not_a_list", "jsonl", mutate=lambda rs, f: rs[1].update(options="x, y, z", A="", B="", C="", D=""), bad={2: ("bad_options", "options")}),
        Case("jsonl_question_object", "jsonl", mutate=setcell(2, "question", {"text": "q"}), bad={2: ("bad_field_type", "question")}),
        Case("jsonl_zwsp_question", "jsonl", mutate=setcell(2, "question", "\u200b\u200c\u2063"), bad={2: ("empty_question", "question")}),
        Case("jsonl_huge_integer", "jsonl", mutate=lambda rs, f: rs[1].update(_raw_line=lambda r: json.dumps(r)[:-1] + ', "n": ' + "9" * 5000 + "}"),
             bad={2: ("bad_json", None)}),
        Case("jsonl_list_index", "jsonl", mutate=setcell(3, "index", [3]), bad={3: ("bad_field_type", "index")}),
        Case("jsonl_nul_in_question", "jsonl", mutate=lambda rs, f: rs[1].update(question=rs[1]["question"] + "\x00"), bad={2: ("bad_encoding", "question")}),
        Case("jsonl_surrogate_key", "jsonl", mutate=lambda rs, f: rs[1].update(_raw_line=lambda r: json.dumps(r)[:-1] + ', "\\udce9": 1}'),
             bad={2: ("bad_encoding", "\\udce9")}),
        # --- MathVista JSON ---
        Case("json_bom", "json", raw=lambda b: b"\xef\xbb\xbf" + b),
        Case("json_repeated_key", "json", raw=replace_once(b'"question_type"', b'"question_type": "x", "question_type"'), file_error=True),
        Case("json_deep_nesting", "json", raw=lambda b: b[:-1] + b', "zz": ' + nested(100_000).encode() + b"}", file_error=True),
        Case("json_truncated", "json", raw=lambda b: b[: len(b) // 2], file_error=True),
        Case("json_zwsp_question", "json", mutate=jcell(2, "question", ZWSP), bad={2: ("empty_question", "question")}),
        Case("json_nested_choice", "json", mutate=jcell(3, "choices", [["1"], "2", "3"]), bad={3: ("bad_options", "choices")}),
        Case("json_question_too_long", "json", mutate=jcell(1, "question", long_text), bad={1: ("text_too_long", "question")}),
    ]
    names = [c.name for c in out]
    assert len(set(names)) == len(names), "case names repeat"
    return out


def _path_only(records, folder: Path, name: str):
    """Every image as a ``{path}`` struct naming a file beside the parquet file (HF ``Image`` with files)."""
    for i, r in enumerate(records):
        fname = f"img{i}.jpg"
        (folder / fname).write_bytes(base64.b64decode(r["image"]))
        r["image"] = {"path": fname}


def _latin1_in(data: bytes, row: int, column: str, sep: bytes = b"\t") -> bytes:
    """Put the byte 0xE9 (latin-1 'é') at the end of ``column``'s cell in data row ``row``."""
    lines = data.split(b"\n")
    header = [h.strip(b'"') for h in lines[0].split(sep)]
    cells = lines[row].split(sep)
    pos = header.index(column.encode())
    cells[pos] = cells[pos][:-1] + b"caf\xe9" + cells[pos][-1:]
    lines[row] = sep.join(cells)
    return b"\n".join(lines)


def _latin1_line(data: bytes, row: int) -> bytes:
    lines = data.split(b"\n")
    lines[row - 1] = lines[row - 1].replace(b"}", b', "note": "caf\xe9"}', 1)
    return b"\n".join(lines)


def _drop_tab(data: bytes, row: int) -> bytes:
    """Glue two cells of data row ``row`` (one field too few)."""
    lines = data.split(b"\n")
    lines[row] = lines[row].replace(b'"\t"', b"", 1)
    return b"\n".join(lines)


if __name__ == "__main__":  # write the corpus for a look by hand
    out_dir = Path(sys.argv[1])
    data = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[3] / "shared" / "data"
    for c in cases():
        print(build(c, data, out_dir / c.name))
