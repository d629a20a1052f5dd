"""JSON sources: JSONL + an image folder, and MathVista's own ``testmini.json`` (a dict by pid).

Image paths are relative to the image folder (``--images DIR``, default: the JSON file's
folder); a path that escapes that folder is refused for its row, never read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curate.errors import RowError, UserError
from curate.formats import ImageRef, ReadOptions, SourceRow, storable_name

IMAGE_FIELDS = ("image", "images", "image_path", "image_paths")


def _refs(value: Any, field: str, root: Path) -> list[ImageRef]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [r for v in value for r in _refs(v, field, root)]
    if isinstance(value, str):
        if value.startswith("data:"):
            return [ImageRef("b64", value, field)]
        return [ImageRef("path", value, field, root=root)]
    raise RowError("bad_image_field", field, f"field {field!r} must be a path or a list of paths, got {type(value).__name__}")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: an object with one key twice (two "answer"s) would keep the last
    silently; the row is quarantined instead (``_RepeatedKey`` carries the key out of json)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_repeated_keys)


def _record_row(row_no: int, rec: Any, opts: ReadOptions, root: Path, where: str) -> SourceRow:
    if not isinstance(rec, dict):
        return SourceRow(row_no, {}, where=where, error=RowError("not_an_object", None, f"expected a JSON object, got {type(rec).__name__}"))
    field = opts.column_map.get("image") or next((f for f in IMAGE_FIELDS if f in rec), None)
    try:
        images = _refs(rec.pop(field, None), field, root) if field else []
    except RowError as exc:
        return SourceRow(row_no, rec, where=where, error=exc, has_image_column=True)
    return SourceRow(row_no, rec, images, where=where, has_image_column=field is not None)


def read_jsonl(path: Path, opts: ReadOptions) -> Iterator[SourceRow]:
    root = opts.image_root or path.parent
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc
    with fh:
        row_no = 0
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            row_no += 1
            where = f"line {line_no}"
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark is not part of the first record
            try:
                rec = _loads(raw.decode("utf-8"))
            except _RepeatedKey as exc:
                yield SourceRow(row_no, {}, where=where, error=RowError("repeated_key", storable_name(exc.key), f"key {exc.key!r} appears twice in the object; which value is meant cannot be known"))
                continue
            except RecursionError:
                yield SourceRow(row_no, {}, where=where, error=RowError("too_deeply_nested", None, "the JSON nests lists/objects too deeply to read"))
                continue
            except UnicodeDecodeError as exc:
                yield SourceRow(row_no, {}, where=where, error=RowError("bad_encoding", None, f"not valid UTF-8 at byte {exc.start}"))
                continue
            except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
                if not isinstance(exc, json.JSONDecodeError):
                    yield SourceRow(row_no, {}, where=where, error=RowError("bad_json", None, f"not readable JSON ({str(exc)[:120]})"))
                    continue
                if row_no == 1 and line_no == 1:
                    raise UserError(f"{path}: line 1 is not JSON ({exc.msg}); expected one JSON object per line") from exc
                yield SourceRow(row_no, {}, where=where, error=RowError("bad_json", None, f"not valid JSON ({exc.msg} at column {exc.colno}) -- truncated line?"))
                continue
            yield _record_row(row_no, rec, opts, root, where)


def read_json(path: Path, opts: ReadOptions) -> Iterator[SourceRow]:
    """MathVista's dict-of-records (``{pid: {...}}``) or a plain list of records."""
    root = opts.image_root or path.parent
    try:
        obj = _loads(path.read_bytes().decode("utf-8-sig"))
    except _RepeatedKey as exc:
        raise UserError(f"{path}: key {exc.key!r} appears twice in one object; which value is meant cannot be known") from exc
    except RecursionError as exc:
        raise UserError(f"{path}: JSON nested too deeply to read") from exc
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError, a 5,000-digit integer
        raise UserError(f"{path}: not a readable JSON file ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if isinstance(obj, dict):
        records = list(obj.values())
        if not all(isinstance(r, dict) for r in records):
            raise UserError(f"{path}: a JSON object whose values are not records; expected {{id: {{question, ...}}}} (MathVista) or a list of records")
    elif isinstance(obj, list):
        records = obj
    else:
        raise UserError(f"{path}: JSON top level is {type(obj).__name__}; expected a list of records or a dict of records")
    if root.resolve() == path.parent.resolve() and records and isinstance(records[0], dict):
        first = records[0].get("image")
        if isinstance(first, str) and not (root / first).exists() and not (root / Path(first).name).exists():
            # e.g. MathVista's testmini.json without its images/ folder: text-only items
            root = None  # type: ignore[assignment]
    for row_no, rec in enumerate(records, 1):
        if root is None and isinstance(rec, dict):
            rec = {k: v for k, v in rec.items() if k not in IMAGE_FIELDS} | {"_image_unavailable": rec.get("image")}
        yield _record_row(row_no, rec, opts, root or path.parent, f"record {row_no}")
