"""VLMEvalKit's MCQ TSV: base64 images, option columns A..J, image sharing by index.

Read row by row with the csv module (never the whole file), so memory does not grow with
file size. Image sharing (an ``image`` cell of 64 characters or fewer holds the index of
the row whose image it reuses -- MMBench's rotated copies) needs the referenced rows'
payloads: a quick byte scan lists the candidate indices, the one csv pass keeps their
payloads as it meets them, and only a reference the scan missed (or one pointing forward)
costs the exact two-pass collection. See ``_SharedPayloads``.
"""

from __future__ import annotations

import ast
import csv
import io
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from curate.errors import RowError, UserError
from curate.formats import ImageRef, ReadOptions, SourceRow

#: VLMEvalKit's TSV keeps its base64 image (or a shared-image reference) in this one column.
TSV_IMAGE_COLUMN = "image"
REF_MAX_LEN = 64
#: Shared payloads held in memory before older ones move to SQLite (characters of base64).
RECENT_PAYLOAD_CHARS = 32 * 2**20

csv.field_size_limit(sys.maxsize)


def _open(path: Path):
    # surrogateescape: undecodable bytes survive to the row check, which names row and field.
    # utf-8-sig: a byte-order mark (Excel's "UTF-8 CSV") would otherwise glue itself to the first
    # header cell, hide the ``index`` column and silently turn every id into a row number.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _raw_header(path: Path, delimiter: str) -> list[str]:
    """The header cells as written (``csv.DictReader`` keys rows by these, unstripped)."""
    try:
        with _open(path) as fh:
            header = next(csv.reader(fh, delimiter=delimiter), None)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc
    if not header:
        raise UserError(f"{path}: empty file, no header row")
    if any("\udc80" <= ch <= "\udcff" for h in header for ch in h) or "\x00" in "".join(header):
        raise UserError(f"{path}: not a text table (header is not UTF-8 text)")
    _refuse_repeated_columns(path, [h.strip() for h in header])
    return header


def _refuse_repeated_columns(path: Path, header: list[str]) -> None:
    """Two columns with one name (two ``answer`` columns): a row dict would keep only the last,
    silently. Which one is meant cannot be known, so the file is refused, naming both positions."""
    seen: dict[str, int] = {}
    for pos, name in enumerate(header, 1):
        if name in seen:
            raise UserError(f"{path}: column {name!r} appears twice in the header (columns {seen[name]} and {pos}); rename one")
        seen[name] = pos


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
    """Rows of a TSV (or, with ``delimiter=","``, CSV) file with a header.

    A properly quoted cell may hold line breaks and delimiters (a CSV question with a comma on its
    second line, a table in a model's reply); only rows glued by a stray quote are re-read line by
    line (see ``_swallowed``), so ingest and ``curate.results`` read the same way.
    """
    raw_header = _raw_header(path, delimiter)
    header = [h.strip() for h in raw_header]
    image_col = next((c for c in (opts.column_map.get("image"), TSV_IMAGE_COLUMN) if c and c in header), None)
    index_col = opts.column_map.get("index") or ("index" if "index" in header else None)

    shared = _SharedPayloads(path, delimiter, raw_header, image_col, index_col) if image_col else None
    try:
        yield from _rows(path, delimiter, header, image_col, shared)
    finally:
        if shared is not None:
            shared.close()


class _LineTap:
    """The physical lines the csv reader consumes, kept since the last ``take``.

    A stray ``"`` at the start of a cell opens a quoted field that runs on over tabs and line
    ends until the next quote: several lines become one record. Keeping the raw lines of each
    record lets ``_rows`` notice that and account for every line on its own.
    """

    def __init__(self, fh):
        self._fh = fh
        self.lines: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._fh)
        self.lines.append(line)
        return line

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def _swallowed(fields: list[str], lines: list[str], n_columns: int, delimiter: str) -> bool:
    """Whether one csv record over several lines is really several rows glued by an unbalanced quote.

    A record over several lines is normal when a quoted cell holds a line break, and such a cell
    may hold the delimiter too (a CSV question whose options line has commas): one good row. A
    stray ``"`` at the start of a cell instead opens a quote that runs over whole rows until some
    later ``"`` ends it. That leaves one of three marks, each impossible for a well-quoted cell:

    - the record's field count is not the header's (the closing quote sat in another column);
    - the record is not well-formed CSV: its quote never closes, or a quote ends the cell with
      more text after it (the closing ``"`` was another cell's stray one or a quote mid-text);
    - the quote closed at a cell's end in the same column: then the record's first and last
      lines are each a whole row (the header's field count when split on the delimiter) and
      every line after the first starts with an index-like cell -- rows, glued whole.
    """
    if len(lines) < 2:
        return False
    if len(fields) != n_columns or not _well_formed(lines, delimiter):
        return True
    return _rows_glued_whole(lines, n_columns, delimiter)


def _well_formed(lines: list[str], delimiter: str) -> bool:
    """Whether the raw record parses under strict CSV rules (every quote closed, and a closing
    quote followed only by the delimiter or the line end), as every CSV/TSV writer produces."""
    try:
        for _ in csv.reader(io.StringIO("".join(lines)), delimiter=delimiter, strict=True):
            pass
    except csv.Error:
        return False
    return True


def _rows_glued_whole(lines: list[str], n_columns: int, delimiter: str) -> bool:
    """Whether the physical lines of a record look like rows of their own: the first and last
    split into the header's field count and each later line opens with an index-like cell."""
    text = [ln.rstrip("\r\n") for ln in lines]
    if any(len(t.split(delimiter)) != n_columns for t in (text[0], text[-1])):
        return False
    return all(_index_like(t.split(delimiter, 1)[0]) for t in text[1:] if t.strip())


def _index_like(cell: str) -> bool:
    """A short token with a digit (``12``, ``"validation_Art_3"``): how a row's key cell looks,
    and how a continued line of question text (``Options: A: 1, B: 2``) rarely starts."""
    token = cell.strip().strip('"').strip()
    return 0 < len(token) <= REF_MAX_LEN and any(ch.isdigit() for ch in token) and not any(ch.isspace() for ch in token)


def _rows(path: Path, delimiter: str, header: list[str], image_col: str | None, shared) -> Iterator[SourceRow]:
    row_no = 0
    with _open(path) as fh:
        tap = _LineTap(fh)
        reader = csv.reader(tap, delimiter=delimiter)
        try:
            next(reader)
            tap.take()
            first_line = 2
            for fields in reader:
                lines = tap.take()
                start, first_line = first_line, first_line + len(lines)
                if len(fields) != len(header) and fields and fields != [""] or _swallowed(fields, lines, len(header), delimiter):
                    # every physical line on its own, so none is lost inside another's cell, and an
                    # unclosed quote is named as such rather than as a short row
                    for offset, line in enumerate(lines):
                        if not line.strip():
                            continue
                        row_no += 1
                        yield _line_row(row_no, line, start + offset, header, image_col, shared, delimiter)
                    continue
                if not fields or fields == [""]:
                    continue  # blank line
                row_no += 1
                where = f"line {start}" if len(lines) == 1 else f"lines {start}-{start + len(lines) - 1}"
                yield _record(row_no, fields, where, header, image_col, shared)
        except csv.Error as exc:
            raise UserError(f"{path}: not a readable table after data row {row_no} ({exc})") from exc


def _line_row(row_no: int, line: str, line_no: int, header: list[str], image_col: str | None, shared, delimiter: str) -> SourceRow:
    """One physical line of a record that did not parse: its own row when it parses alone, else
    quarantined as ``unbalanced_quote`` naming the cell whose quote never closes."""
    where = f"line {line_no}"
    text = line.rstrip("\r\n")
    if '"' in text and _unbalanced(text, delimiter):
        col = next((h for h, f in zip(header, text.split(delimiter)) if f.lstrip().startswith('"') and not _closed(f)), None)
        return SourceRow(row_no, {}, where=where, error=RowError(
            "unbalanced_quote", col,
            f"a quote opens a cell{'' if col is None else f' ({col!r})'} and is never closed on this line; "
            "read as CSV it would swallow the text after it -- fix or escape the quote (\"\")"),
            has_image_column=image_col is not None)
    return _record(row_no, next(csv.reader([text], delimiter=delimiter), []), where, header, image_col, shared)


def _closed(cell: str) -> bool:
    """A cell that opens with a quote is closed when the rest ends in an odd run of quotes
    (the closing one after any escaped pairs): ``""`` and ``"a"`` are closed, ``"a""`` is not."""
    inner = cell.strip()[1:]
    return (len(inner) - len(inner.rstrip('"'))) % 2 == 1


def _unbalanced(text: str, delimiter: str) -> bool:
    return any(f.lstrip().startswith('"') and not _closed(f) for f in text.split(delimiter))


def _record(row_no: int, fields: list[str], where: str, header: list[str], image_col: str | None, shared) -> SourceRow:
    if shared is not None:  # before any check: the exact rule reads short rows too
        shared.remember(fields)
    if len(fields) != len(header):
        missing = header[len(fields):] if len(fields) < len(header) else []
        return SourceRow(
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
    return SourceRow(row_no, rec, images, where=where, error=error, has_image_column=image_col is not None)


class _SharedPayloads:
    """Image cells that other rows point at: the newest few in memory, the rest in a temporary SQLite file.

    MMBench-style files share about a quarter of their images; holding all those payloads in
    a dict would make memory grow with file size.

    Which payload a reference gets is defined by ``_collect_all``: the first row of the file
    with that index whose own cell is not a reference, rows keyed as ``csv.DictReader`` keys
    them. That costs two extra csv passes over a file that is mostly base64, so it is only
    the fallback. Normally ``_candidate_refs`` (a byte scan, several times faster than csv
    parsing) lists the indices that look referenced, and ``remember`` stores those rows'
    payloads during the reader's own pass. A lookup that finds its payload there gets the
    same answer as the fallback (it is the first such row and lies before the referring
    row); a miss -- a forward reference, or a cell the rough scan misread -- runs the exact
    collection once and answers from it from then on. A rough scan can cost time, never
    change a result. Stored payloads wait in memory first (a copy usually follows soon after
    its original) and move to SQLite, oldest first, past ``RECENT_PAYLOAD_CHARS``.
    """

    def __init__(self, path: Path, delimiter: str, raw_header: list[str], image_col: str, index_col: str | None):
        self._path, self._delimiter = path, delimiter
        self._image_col, self._index_col = image_col, index_col
        self._image_pos = _dictreader_position(raw_header, image_col)
        self._index_pos = _dictreader_position(raw_header, index_col)
        # The reader keys cells by the stripped header; the fast path is exact only when that
        # picks the same image cell as DictReader (true unless headers differ by spaces or repeat).
        reader_pos = max(i for i, h in enumerate(raw_header) if h.strip() == image_col)
        fast = index_col is not None and reader_pos == self._image_pos
        self._candidates = _candidate_refs(path, delimiter, self._image_pos) if fast else set()
        self._recent: dict[str, str] = {}  # index -> payload, oldest first
        self._recent_chars = 0
        self._stored: set[str] = set()  # indices whose first payload is kept (memory or SQLite)
        self._tmp = None
        self._db = None  # older payloads, or all of them once the fallback has run
        self._exact = False  # True once the fallback has collected every referenced payload

    def remember(self, fields: list[str]) -> None:
        """Store this row's payload if its index looks referenced and is not stored yet."""
        if not self._candidates or self._exact:
            return
        index = _cell(fields, self._index_pos)
        if index not in self._candidates or index in self._stored:
            return  # the first row with its own payload wins, as in the exact rule
        cell = _cell(fields, self._image_pos)
        if _is_ref(cell):
            return
        self._stored.add(index)
        self._recent[index] = cell
        self._recent_chars += len(cell)
        while self._recent_chars > RECENT_PAYLOAD_CHARS:
            old = next(iter(self._recent))
            old_cell = self._recent.pop(old)
            self._recent_chars -= len(old_cell)
            self._connect().execute("INSERT INTO payload VALUES (?, ?)", (old, old_cell))

    def get(self, index: str) -> str | None:
        if self._index_col is None:
            return None
        cell = self._lookup(index)
        if cell is None and not self._exact:
            self._collect_all()
            cell = self._lookup(index)
        return cell

    def _lookup(self, index: str) -> str | None:
        if index in self._recent:
            return self._recent[index]
        if self._db is None:
            return None
        row = self._db.execute("SELECT cell FROM payload WHERE idx = ?", (index,)).fetchone()
        return row[0] if row else None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mmcurate-tsv-")
            self._db = sqlite3.connect(Path(self._tmp.name) / "shared.sqlite")
            self._db.execute("CREATE TABLE payload (idx TEXT PRIMARY KEY, cell TEXT)")
        return self._db

    def _collect_all(self) -> None:
        """The exact rule: every referenced index -> its first row with its own image cell."""
        self._exact = True
        self._recent.clear()
        if self._db is not None:
            self._db.execute("DELETE FROM payload")
        referenced: set[str] = set()
        with _open(self._path) as fh:
            for rec in csv.DictReader(fh, delimiter=self._delimiter):
                cell = (rec.get(self._image_col) or "").strip()
                if _is_ref(cell):
                    referenced.add(cell)
        if not referenced:
            return
        db = self._connect()
        with _open(self._path) as fh:
            rows = (
                ((rec.get(self._index_col) or "").strip(), (rec.get(self._image_col) or "").strip())
                for rec in csv.DictReader(fh, delimiter=self._delimiter)
            )
            db.executemany(
                "INSERT OR IGNORE INTO payload VALUES (?, ?)",
                ((i, c) for i, c in rows if i in referenced and not _is_ref(c)),
            )
        db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._tmp.cleanup()
            self._db = None


def _dictreader_position(raw_header: list[str], col: str | None) -> int | None:
    """Where ``csv.DictReader`` takes ``rec[col]`` from: the last header cell spelled exactly so."""
    positions = [i for i, h in enumerate(raw_header) if h == col]
    return positions[-1] if positions else None


def _cell(fields: list[str], pos: int | None) -> str:
    """``(rec.get(col) or "").strip()`` of a DictReader row, from the plain field list."""
    return fields[pos].strip() if pos is not None and pos < len(fields) else ""


def _candidate_refs(path: Path, delimiter: str, image_pos: int | None) -> set[str]:
    """Short image cells of the raw lines: a rough, fast guess at the referenced indices.

    It ignores quoting (a quoted tab or newline can misplace a cell); that is safe because
    ``_SharedPayloads`` falls back to the exact collection whenever a guess misses. Cells are
    located with ``bytes.find`` so the large base64 cells are never copied.
    """
    found: set[str] = set()
    if image_pos is None:
        return found
    sep = delimiter.encode()
    with open(path, "rb") as fh:
        for line in fh:
            start = 0
            for _ in range(image_pos):  # find the cell's bounds without copying the big cells
                start = line.find(sep, start) + 1
                if start == 0:
                    break
            else:
                end = line.find(sep, start)
                end = len(line) if end < 0 else end
                if end - start <= REF_MAX_LEN + 8:  # room for quotes and spaces
                    cell = line[start:end].strip().strip(b'"').strip()
                    if 0 < len(cell) <= REF_MAX_LEN:
                        found.add(cell.decode("utf-8", "surrogateescape"))
    return found


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
