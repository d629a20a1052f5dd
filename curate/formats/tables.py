"""Columnar sources: VLMEvalKit result xlsx, parquet, and Hugging Face ``save_to_disk`` folders.

Parquet and Arrow are read in record batches so memory stays flat; an ``Image`` feature
arrives as a ``{bytes, path}`` struct (decoding is ours, in ``curate.images``).

A Hugging Face ``ClassLabel`` column (answer, category, l2_category in many Hub sets and in
our own ``hf`` export) stores integer ids; the names live in the features (``state.json``
for ``save_to_disk``, the ``huggingface`` schema metadata for parquet written by datasets).
Both readers turn the ids back into their names, else a category comes back as "3".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curate.errors import RowError, UserError
from curate.formats import ImageRef, ReadOptions, SourceRow

IMAGE_COLUMNS = ("image", "images", "decoded_image")
BATCH_ROWS = 256


def _image_refs(value: Any, field: str, root: Path | None = None) -> list[ImageRef]:
    """Image cell(s) of a columnar source: struct {bytes, path}, raw bytes, or base64 text.

    A struct with only ``path`` names a file relative to ``root`` (the dataset's folder; paths
    escaping it are refused like JSONL's). A value of any other type (an int "image" column) is
    not an image at all: a ``bad_image`` quarantine naming the type, not a silent ``no_image``.
    """
    if value is None:
        return []
    if isinstance(value, list):
        return [r for v in value for r in _image_refs(v, field, root)]
    if isinstance(value, dict):
        if value.get("bytes"):
            return [ImageRef("bytes", value["bytes"], field, path=value.get("path"))]
        if value.get("path"):
            return [ImageRef("path", value["path"], field, root=root)]
        return []
    if isinstance(value, (bytes, bytearray)):
        return [ImageRef("bytes", bytes(value), field)]
    if isinstance(value, str):
        return [ImageRef("b64", value.strip(), field)] if value.strip() else []
    raise RowError("bad_image", field, f"field {field!r} holds a {type(value).__name__} ({str(value)[:40]!r}), not an image (bytes, base64 text or a {{bytes, path}} struct)")


def _label_names(features: dict[str, Any]) -> dict[str, list[str]]:
    """Column -> names of its top-level ``ClassLabel`` feature (features as ``Features.to_dict()``).

    Identity labels (names "0".."n-1") are left out: the id is then the value itself, and
    ingest reads an integer answer as a 0-based option index -- a text "2" would be ambiguous.
    """
    out = {}
    for name, feat in features.items():
        if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
            names = [str(n) for n in feat["names"]]
            if names != [str(i) for i in range(len(names))]:
                out[name] = names
    return out


def _decode_labels(rec: dict, labels: dict[str, list[str]]) -> dict:
    """ClassLabel ids -> names in place (-1, None or an id out of range -> None)."""
    for col, names in labels.items():
        v = rec.get(col)
        if isinstance(v, int) and not isinstance(v, bool):
            rec[col] = names[v] if 0 <= v < len(names) else None
    return rec


def _parquet_labels(schema) -> dict[str, list[str]]:
    """ClassLabel names from the ``huggingface`` metadata that datasets writes into a parquet schema."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    feats = (info.get("info") or {}).get("features") if isinstance(info, dict) else None
    return _label_names(feats) if isinstance(feats, dict) else {}


def _source_row(row_no: int, rec: dict, image_col: str | None, root: Path | None = None) -> SourceRow:
    """A record as a SourceRow: the image column's payloads taken out of the fields."""
    try:
        images = _image_refs(rec.pop(image_col, None), image_col, root) if image_col else []
    except RowError as exc:
        return SourceRow(row_no, rec, error=exc, has_image_column=True)
    return SourceRow(row_no, rec, images, has_image_column=image_col is not None)


def _refuse_repeated_columns(path: Path, names: list[str]) -> None:
    """Two columns with one name: a record dict keeps only the last, silently; refuse the file."""
    seen = set()
    for name in names:
        if name in seen:
            raise UserError(f"{path}: column {name!r} appears twice; rename one")
        seen.add(name)


def _pick_image_column(columns: list[str], opts: ReadOptions) -> str | None:
    wanted = opts.column_map.get("image")
    if wanted:
        return wanted if wanted in columns else None
    return next((c for c in IMAGE_COLUMNS if c in columns), None)


def read_xlsx_frame(path: Path):
    """The first sheet as a polars frame of text cells (what both xlsx paths of ingest start from)."""
    import polars as pl

    try:
        df = pl.read_excel(path, infer_schema_length=0)
    except Exception as exc:  # fastexcel raises its own types for a broken zip
        raise UserError(f"{path}: not a readable xlsx workbook ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    _refuse_repeated_xlsx_header(path, df.columns)
    return df.select(pl.all().cast(pl.String))


def _refuse_repeated_xlsx_header(path: Path, columns: list[str]) -> None:
    """fastexcel renames a repeated header cell ("answer", "answer" -> "answer", "answer_1"): two
    answer columns would silently become one used and one ignored. A column named like such a
    rename is checked against the header row as written (read only then: normal files pay nothing)."""
    import re

    present = set(columns)
    suspects = [c for c in columns if (m := re.fullmatch(r"(.+)_\d+", c)) and m.group(1) in present]
    if not suspects:
        return
    import fastexcel

    try:
        head = fastexcel.read_excel(str(path)).load_sheet(0, header_row=None, n_rows=1).to_polars()
    except Exception as exc:  # fastexcel raises its own types; the whole sheet was just read, so rare
        raise UserError(f"{path}: cannot read the header row ({type(exc).__name__})") from exc
    names = [str(v).strip() for v in head.row(0) if v is not None] if head.height else []
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise UserError(f"{path}: column {repeated!r} appears twice in the header; rename one")


def rows_of_frame(df, opts: ReadOptions, rows: Iterator[int] | None = None) -> Iterator[SourceRow]:
    """SourceRows of a frame read whole (all rows, or the 1-based ``rows`` given, in order)."""
    image_col = _pick_image_column(df.columns, opts)
    records = enumerate(df.iter_rows(named=True), 1) if rows is None else ((r, df.row(r - 1, named=True)) for r in rows)
    for row_no, rec in records:
        yield _source_row(row_no, rec, image_col)


def read_xlsx(path: Path, opts: ReadOptions) -> Iterator[SourceRow]:
    """A VLMEvalKit result file (question columns + ``prediction``); no images."""
    yield from rows_of_frame(read_xlsx_frame(path), opts)


def read_parquet(path: Path, opts: ReadOptions) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    row_no = 0
    for file in files:
        try:
            pf = pq.ParquetFile(file)
        except Exception as exc:
            raise UserError(f"{file}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        _refuse_repeated_columns(file, pf.schema_arrow.names)
        image_col = _pick_image_column(pf.schema_arrow.names, opts)
        labels = _parquet_labels(pf.schema_arrow)
        split = _split_from_name(file) if path.is_dir() else None
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for rec in batch.to_pylist():
                    row_no += 1
                    _decode_labels(rec, labels)
                    if split and "split" not in rec:
                        rec["split"] = split
                    yield _source_row(row_no, rec, image_col, file.parent)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{file}: parquet data unreadable after row {row_no} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc


def _split_from_name(file: Path) -> str | None:
    stem = file.stem.split("-")[0]
    return stem if stem in {"train", "validation", "val", "test", "dev", "testmini"} else None


def read_hf_disk(path: Path, opts: ReadOptions) -> Iterator[SourceRow]:
    """A ``datasets`` folder written by ``save_to_disk`` (Dataset or DatasetDict)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"{path}: cannot load with datasets.load_from_disk ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    row_no = 0
    for split, ds in splits:
        image_col = _pick_image_column(ds.column_names, opts)
        labels = _label_names(ds.features.to_dict())
        for name, feature in ds.features.items():  # keep undecoded bytes: we validate them ourselves
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
            elif isinstance(feature, (datasets.Sequence, datasets.List)) and isinstance(getattr(feature, "feature", None), datasets.Image):
                ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
        arrow = ds.with_format("arrow")
        for start in range(0, len(ds), BATCH_ROWS):
            for rec in arrow[start : start + BATCH_ROWS].to_pylist():
                row_no += 1
                _decode_labels(rec, labels)
                if split and "split" not in rec:
                    rec["split"] = split
                yield _source_row(row_no, rec, image_col, path)
