"""Readers for the formats benchmarks ship in.

A reader turns one source (file or folder) into ``SourceRow`` objects: the row's fields by
column name plus its image payloads, not yet decoded. Everything format-specific stops here;
``curate.normalize`` turns a ``SourceRow`` into an item (or a reason it is not one) the same
way for every format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import RowError, UserError


@dataclass(frozen=True)
class ImageRef:
    """An image payload as the source stores it.

    kind: "b64" (base64 text), "bytes" (raw bytes, ``path`` may name where they came from),
    "path" (a file path relative to ``root``), "ref" (VLMEvalKit: the index of another row
    whose image this row shares).
    """

    kind: str
    value: Any
    field: str
    path: str | None = None
    root: Path | None = None


@dataclass
class SourceRow:
    row: int  # 1-based data row (header not counted)
    data: dict[str, Any]
    images: list[ImageRef] = field(default_factory=list)
    where: str = ""  # extra location, e.g. "line 12"
    error: RowError | None = None  # the reader already knows this row is bad
    has_image_column: bool = False  # the source has an image column at all


@dataclass(frozen=True)
class ReadOptions:
    image_root: Path | None = None  # JSONL/JSON: folder image paths are relative to
    column_map: dict[str, str] = field(default_factory=dict)  # canonical name -> source column


Reader = Callable[[Path, ReadOptions], Iterator[SourceRow]]


def storable_name(name: str) -> str:
    """A column name as the ledger can store it: bytes that were not UTF-8 (or a lone surrogate
    from a JSON escape) written as ``\\udcXX`` instead of crashing the parquet writer."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8") if not name.isascii() else name


def detect_format(path: Path) -> str:
    """Name the format of ``path`` from its extension (and, for folders, their contents)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf_disk"
        if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
            return "parquet"
        raise UserError(f"{path}: a folder, but not a Hugging Face dataset saved with save_to_disk (no state.json / dataset_dict.json) nor a folder of parquet files")
    suffix = path.suffix.lower()
    formats = {
        ".tsv": "tsv",
        ".xlsx": "xlsx",
        ".parquet": "parquet",
        ".jsonl": "jsonl",
        ".json": "json",
        ".csv": "csv",
    }
    if suffix not in formats:
        raise UserError(f"{path}: unknown file type {suffix!r}; expected one of {sorted(formats)} or a save_to_disk folder")
    return formats[suffix]


def get_reader(fmt: str) -> Reader:
    from curate.formats import jsonfiles, tables, vlmevalkit

    readers: dict[str, Reader] = {
        "tsv": vlmevalkit.read_tsv,
        "csv": vlmevalkit.read_csv,
        "xlsx": tables.read_xlsx,
        "parquet": tables.read_parquet,
        "hf_disk": tables.read_hf_disk,
        "jsonl": jsonfiles.read_jsonl,
        "json": jsonfiles.read_json,
    }
    return readers[fmt]
