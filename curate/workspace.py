"""A workspace is a folder of parquet files, one per stage, plus ``ledger.parquet``.

Why files and not a database: a user can open any stage's output with any parquet reader,
a run can stop after any stage and resume, and a stage's output is one atomic rename away
from being either complete or absent -- never half written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.schema import LEDGER_SCHEMA, conform, empty_ledger, validate_ledger

#: Stage name -> file name. Order is pipeline order; later stages are "newer".
STAGE_FILES: dict[str, str] = {
    "items": "items.parquet",
    "screened": "screened.parquet",
    "reviewed": "reviewed.parquet",
    "balanced": "balanced.parquet",
}
LEDGER_FILE = "ledger.parquet"
PARQUET_OPTS = {"compression": "zstd", "compression_level": 3, "statistics": True}


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` via a temporary file in the same folder and a rename.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.write_parquet(tmp, **PARQUET_OPTS)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fsync(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class StreamingParquetWriter:
    """Write a parquet file batch by batch (memory stays flat), renamed into place on close.

    Used by ingest so a 50,000-image TSV never sits in memory at once.
    """

    def __init__(self, path: Path, schema: dict[str, pl.DataType]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._schema = schema
        self.arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        self._writer = pq.ParquetWriter(self._tmp, self.arrow_schema, compression="zstd", compression_level=3)
        self.rows = 0

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        table = conform(df, self._schema).select(list(self._schema)).to_arrow()
        self.write_arrow(pa.Table.from_batches(table.cast(self.arrow_schema).to_batches(), self.arrow_schema))

    def write_arrow(self, table: pa.Table) -> None:
        """Write a table already in ``arrow_schema`` (ingest builds its batches straight in Arrow)."""
        if table.num_rows == 0:
            return
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        _fsync(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self) -> StreamingParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Workspace:
    """One folder holding every stage's parquet file and the ledger."""

    def __init__(self, root: str | Path, *, create: bool = False):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise UserError(f"{self.root}: no such workspace folder (run `mmcurate ingest ... --out {self.root}` first)")

    # -- stage files -------------------------------------------------------------------
    def path(self, stage: str) -> Path:
        if stage not in STAGE_FILES:
            raise UserError(f"unknown stage {stage!r}; expected one of {list(STAGE_FILES)}")
        return self.root / STAGE_FILES[stage]

    def has(self, stage: str) -> bool:
        return self.path(stage).is_file()

    def read(self, stage: str) -> pl.DataFrame:
        path = self.path(stage)
        if not path.is_file():
            raise UserError(f"{path}: stage file missing (the {stage!r} stage has not run in this workspace)")
        return read_parquet_checked(path)

    def write(self, stage: str, df: pl.DataFrame) -> Path:
        return atomic_write_parquet(df, self.path(stage))

    def newest(self, stages: Iterable[str] = ("reviewed", "screened", "items")) -> str:
        """The newest stage present among ``stages`` (given newest first)."""
        for stage in stages:
            if self.has(stage):
                return stage
        raise UserError(f"{self.root}: none of the stage files {[STAGE_FILES[s] for s in stages]} exist")

    # -- ledger ------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER_FILE

    def ledger(self) -> pl.DataFrame:
        if not self.ledger_path.is_file():
            return empty_ledger()
        return read_parquet_checked(self.ledger_path)

    def record(self, stage: str, rows: pl.DataFrame, *, replace: pl.Expr | None = None) -> pl.DataFrame:
        """Add ledger rows for ``stage``.

        Rows of the same stage that match ``replace`` (default: all rows of that stage) are
        removed first, so re-running a stage never double-counts. Returns the new ledger.
        """
        rows = validate_ledger(conform(rows.with_columns(pl.lit(stage).alias("stage")), LEDGER_SCHEMA).select(list(LEDGER_SCHEMA)))
        old = self.ledger()
        drop = pl.col("stage") == stage
        if replace is not None:
            drop = drop & replace
        ledger = pl.concat([old.filter(~drop), rows], how="vertical")
        atomic_write_parquet(ledger, self.ledger_path)
        return ledger


def read_parquet_checked(path: Path) -> pl.DataFrame:
    """Read a parquet file, turning a corrupt or truncated file into one clear line."""
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a torn file
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
