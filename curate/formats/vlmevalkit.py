"""VLMEvalKit's MCQ TSV: base64 images, option columns A..J, image sharing by index.

Read row by row with the csv module (never the whole file), so memory does not grow with
file size. Image sharing (an ``image`` cell of 64 characters or fewer holds the index of
the row whose image it reuses -- MMBench's rotated copies) needs the referenced rows'
payloads, so a first cheap pass collects which indices are referenced and the second pass
keeps only those payloads.
"""

from __future__ import annotations

import ast
import csv
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from curate.errors import RowError, UserError
from curate.formats import ImageRef, ReadOptions, SourceRow

IMAGE_COLUMNS = ("image",)
REF_MAX_LEN = 64

csv.field_size_limit(sys.maxsize)


def _open(path: Path):
    # surrogateescape: undecodable bytes survive to the row check, which names row and field.
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _header(path: Path, delimiter: str) -> list[str]:
    try:
        with _open(path) as fh:
            header = next(csv.reader(fh, delimiter=delimiter), None)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc
    if not header:
        raise UserError(f"{path}: empty file, no header row")
    if any("\udc80" <= ch <= "\udcff" for h in header for ch in h) or "\x00" in "".join(header):
        raise UserError(f"{path}: not a text table (header is not UTF-8 text)")
    return [h.strip() for h in header]


def _is_ref(cell: str) -> bool:
    return 0 < len(cell) <= REF_MAX_LEN


def _split_images(cell: str) -> list[str]:
    cell = cell.strip()
    if cell.startswith("[") and cell.endswith("]"):
        try:
            values = ast.literal_eval(cell)
        except (ValueError, SyntaxError) as exc:
            raise RowError("bad_image_list", "image", f"field 'image' looks like a list of images but is not a valid list literal ({exc})") from exc
        return [str(v) for v in values]
    return [cell] if cell else []


def read_tsv(path: Path, opts: ReadOptions, *, delimiter: str = "\t") -> Iterator[SourceRow]:
    header = _header(path, delimiter)
    image_col = next((c for c in (opts.column_map.get("image"), *IMAGE_COLUMNS) if c and c in header), None)
    index_col = opts.column_map.get("index") or ("index" if "index" in header else None)

    shared = _SharedPayloads(path, delimiter, image_col, index_col) if image_col else None
    try:
        yield from _rows(path, delimiter, header, image_col, shared)
    finally:
        if shared is not None:
            shared.close()


def _rows(path: Path, delimiter: str, header: list[str], image_col: str | None, shared) -> Iterator[SourceRow]:
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        next(reader)
        for row_no, fields in enumerate(reader, 1):
            where = f"line {reader.line_num}"
            if len(fields) != len(header):
                if not fields or fields == [""]:
                    continue  # blank trailing line
                missing = header[len(fields):] if len(fields) < len(header) else []
                yield SourceRow(
                    row_no,
                    {},
                    where=where,
                    error=RowError(
                        "wrong_field_count",
                        missing[0] if missing else None,
                        f"row has {len(fields)} fields, the header has {len(header)}"
                        + (f" (no value for: {', '.join(missing[:5])})" if missing else "")
                        + " -- truncated or mis-quoted",
                    ),
                    has_image_column=image_col is not None,
                )
                continue
            rec = dict(zip(header, fields))
            images: list[ImageRef] = []
            error = None
            if image_col is not None:
                cell = rec.pop(image_col).strip()
                try:
                    if _is_ref(cell):
                        images = [ImageRef("ref", cell, image_col)]
                    else:
                        images = [ImageRef("b64", p, image_col) for p in _split_images(cell)]
                    images = [r for ref in images for r in _resolve_ref(ref, shared)]
                except RowError as exc:
                    error, images = exc, []
            yield SourceRow(row_no, rec, images, where=where, error=error, has_image_column=image_col is not None)


class _SharedPayloads:
    """Image cells that other rows point at, kept in a temporary SQLite file, not in memory.

    MMBench-style files share about a quarter of their images; holding those payloads in a
    dict would make memory grow with file size.
    """

    def __init__(self, path: Path, delimiter: str, image_col: str, index_col: str | None):
        self._db = None
        referenced: set[str] = set()
        with _open(path) as fh:
            for rec in csv.DictReader(fh, delimiter=delimiter):
                cell = (rec.get(image_col) or "").strip()
                if _is_ref(cell):
                    referenced.add(cell)
        if not referenced or index_col is None:
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="mmcurate-tsv-")
        self._db = sqlite3.connect(Path(self._tmp.name) / "shared.sqlite")
        self._db.execute("CREATE TABLE payload (idx TEXT PRIMARY KEY, cell TEXT)")
        with _open(path) as fh:
            rows = (
                ((rec.get(index_col) or "").strip(), (rec.get(image_col) or "").strip())
                for rec in csv.DictReader(fh, delimiter=delimiter)
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO payload VALUES (?, ?)",
                ((i, c) for i, c in rows if i in referenced and not _is_ref(c)),
            )
        self._db.commit()

    def get(self, index: str) -> str | None:
        if self._db is None:
            return None
        row = self._db.execute("SELECT cell FROM payload WHERE idx = ?", (index,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._tmp.cleanup()
            self._db = None


def _resolve_ref(ref: ImageRef, shared: _SharedPayloads) -> list[ImageRef]:
    if ref.kind != "ref":
        return [ref]
    cell = shared.get(ref.value)
    if cell is None:
        raise RowError("image_ref_missing", ref.field, f"field {ref.field!r} = {ref.value!r} names no row with its own image (VLMEvalKit image sharing)")
    return [ImageRef("b64", p, ref.field) for p in _split_images(cell)]


def read_csv(path: Path, opts: ReadOptions) -> Iterator[SourceRow]:
    """A comma-separated table with a header; same columns as the TSV."""
    return read_tsv(path, opts, delimiter=",")
