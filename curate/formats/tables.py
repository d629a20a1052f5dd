"""Columnar sources: VLMEvalKit result xlsx, parquet, and Hugging Face ``save_to_disk`` folders.

Parquet and Arrow are read in record batches so memory stays flat; an ``Image`` feature
arrives as a ``{bytes, path}`` struct (decoding is ours, in ``curate.images``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.formats import ImageRef, ReadOptions, SourceRow

IMAGE_COLUMNS = ("image", "images", "decoded_image")
BATCH_ROWS = 256


def _image_refs(value: Any, field: str) -> list[ImageRef]:
    """Image cell(s) of a columnar source: struct {bytes, path}, raw bytes, or base64 text."""
    if value is None:
        return []
    if isinstance(value, list):
        return [r for v in value for r in _image_refs(v, field)]
    if isinstance(value, dict):
        if value.get("bytes"):
            return [ImageRef("bytes", value["bytes"], field, path=value.get("path"))]
        if value.get("path"):
            return [ImageRef("path", value["path"], field)]
        return []
    if isinstance(value, (bytes, bytearray)):
        return [ImageRef("bytes", bytes(value), field)]
    if isinstance(value, str) and value.strip():
        return [ImageRef("b64", value.strip(), field)]
    return []


def _source_row(row_no: int, rec: dict, image_col: str | None) -> SourceRow:
    """A record as a SourceRow: the image column's payloads taken out of the fields."""
    images = _image_refs(rec.pop(image_col, None), image_col) if image_col else []
    return SourceRow(row_no, rec, images, has_image_column=image_col is not None)


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
    return df.select(pl.all().cast(pl.String))


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
        image_col = _pick_image_column(pf.schema_arrow.names, opts)
        split = _split_from_name(file) if path.is_dir() else None
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for rec in batch.to_pylist():
                    row_no += 1
                    if split and "split" not in rec:
                        rec["split"] = split
                    yield _source_row(row_no, rec, image_col)
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
        for name, feature in ds.features.items():  # keep undecoded bytes: we validate them ourselves
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
            elif isinstance(feature, (datasets.Sequence, datasets.List)) and isinstance(getattr(feature, "feature", None), datasets.Image):
                ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
        arrow = ds.with_format("arrow")
        for start in range(0, len(ds), BATCH_ROWS):
            for rec in arrow[start : start + BATCH_ROWS].to_pylist():
                row_no += 1
                if split and "split" not in rec:
                    rec["split"] = split
                yield _source_row(row_no, rec, image_col)
