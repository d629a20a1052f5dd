"""Ingest: benchmark files -> ``items.parquet`` + ``ledger.parquet``, accounting for every input row.

Every source row ends in exactly one ledger row of stage ``ingest``: kept (it is an item),
dropped (valid but out of scope, e.g. an open question) or quarantined (bad: the ledger
names the field and what is wrong). ``kept + dropped + quarantined == input rows`` always.

Items are written in batches by a streaming parquet writer, so memory does not grow with
the size of the source; the stage file appears atomically when the run completes.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from curate.errors import RowError, UserError
from curate.formats import ReadOptions, detect_format, get_reader
from curate.images import DEFAULT_MAX_PIXELS
from curate.normalize import Dropped, NormalizeOptions, normalize_row
from curate.schema import ITEM_SCHEMA, LEDGER_SCHEMA, validate_items
from curate.taxonomy import default_taxonomy
from curate.workspace import StreamingParquetWriter, Workspace

BATCH_ROWS = 500
CANONICAL_FIELDS = (
    "index", "question", "hint", "options", "answer", "image", "category", "l2_category",
    "split", "source_category", "source_l2_category",
)


@dataclass
class SourceSummary:
    source: str
    path: str
    format: str
    rows: int = 0
    counts: Counter = field(default_factory=Counter)  # status -> n
    reasons: Counter = field(default_factory=Counter)  # (status, reason) -> n


@dataclass
class IngestResult:
    workdir: Path
    sources: list[SourceSummary]
    items: int

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sources)


def parse_column_map(pairs: Iterable[str]) -> dict[str, str]:
    """``["question=Question", "answer=label"]`` -> mapping, validated against the canonical names."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--map {pair!r}: expected CANONICAL=COLUMN, e.g. --map question=Question")
        key, col = (p.strip() for p in pair.split("=", 1))
        if key not in CANONICAL_FIELDS:
            raise UserError(f"--map {pair!r}: unknown field {key!r}; map one of {', '.join(CANONICAL_FIELDS)}")
        mapping[key] = col
    return mapping


def _check_question_column(path: Path, data: dict, column_map: dict[str, str]) -> None:
    """A file without any question column is not a benchmark we can read: fail the file, not every row."""
    from curate.normalize import FIELD_ALIASES

    wanted = [column_map["question"]] if "question" in column_map else list(FIELD_ALIASES["question"])
    if not any(c in data for c in wanted):
        cols = ", ".join(list(data)[:12])
        raise UserError(f"{path}: no question column (looked for {', '.join(wanted)}; the file has: {cols}); map one with --map question=COLUMN")


def source_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def ingest_to_workspace(
    sources: Iterable[str | Path],
    out: str | Path,
    *,
    name: str | None = None,
    column_map: dict[str, str] | None = None,
    image_root: str | Path | None = None,
    open_to_mcq: bool = False,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_row: Callable[[str, int], None] | None = None,
) -> IngestResult:
    """Ingest ``sources`` into the workspace ``out`` (streaming; the CLI and benchmarks use this).

    Re-ingesting a file replaces its items and ledger rows; items from other files stay.
    ``on_row(source, n)`` is called as rows are read (for progress bars).
    """
    paths = [Path(s) for s in sources]
    if not paths:
        raise UserError("no sources given")
    if name and len(paths) > 1:
        raise UserError("--name names one source; give one SOURCE per ingest call, or drop --name")
    formats = [detect_format(p) for p in paths]  # fail fast on a missing/unknown file
    ws = Workspace(out, create=True)
    new_files = {str(p) for p in paths}
    taxonomy = default_taxonomy()
    opts_read = ReadOptions(image_root=Path(image_root) if image_root else None, column_map=column_map or {})

    ledger_rows: list[dict] = []
    summaries: list[SourceSummary] = []
    seen: set[str] = set()
    writer = StreamingParquetWriter(ws.path("items"), ITEM_SCHEMA)
    try:
        if ws.has("items"):  # keep items of files not re-ingested now
            old = ws.read("items").filter(~pl.col("source_file").is_in(list(new_files)))
            seen.update(old["item_id"].to_list())
            writer.write(old)
        for path, fmt in zip(paths, formats):
            src = SourceSummary(name or source_name(path), str(path), fmt)
            summaries.append(src)
            nopts = NormalizeOptions(src.source, str(path), column_map or {}, taxonomy, open_to_mcq, seed, max_pixels)
            batch: list[dict] = []
            for srow in get_reader(fmt)(path, opts_read):
                if src.rows == 0 and srow.error is None:
                    _check_question_column(path, srow.data, column_map or {})
                src.rows += 1
                status, reason, fld, detail, item_id = "kept", None, None, None, None
                try:
                    item = normalize_row(srow, nopts)
                    item_id = item["item_id"]
                    if item_id in seen:
                        raise RowError("duplicate_id", "index", f"item_id {item_id!r} already exists (index repeated in the file, or the same source ingested under this name)")
                    seen.add(item_id)
                    batch.append(item)
                except RowError as exc:
                    status, reason, fld, detail = "quarantined", exc.reason, exc.field, exc.detail
                except Dropped as exc:
                    status, reason, detail = "dropped", exc.reason, exc.detail
                if detail is not None:
                    where = f"row {srow.row}" + (f" ({srow.where})" if srow.where else "")
                    detail = f"{path}: {where}" + (f", field {fld!r}" if fld else "") + f": {detail}"
                ledger_rows.append(
                    {"source_file": str(path), "row": srow.row, "item_id": item_id, "status": status, "reason": reason, "field": fld, "detail": detail}
                )
                src.counts[status] += 1
                if reason:
                    src.reasons[(status, reason)] += 1
                if len(batch) >= BATCH_ROWS:
                    writer.write_arrow(_arrow_batch(batch, writer))
                    batch.clear()
                if on_row is not None:
                    on_row(src.source, src.rows)
            writer.write_arrow(_arrow_batch(batch, writer))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    ws.record("ingest", pl.DataFrame(ledger_rows, schema=LEDGER_SCHEMA), replace=pl.col("source_file").is_in(list(new_files)))
    return IngestResult(ws.root, summaries, writer.rows)


def _arrow_batch(batch: list[dict], writer: StreamingParquetWriter) -> pa.Table:
    """Items built column-wise straight into Arrow (polars' per-row list construction was the
    bottleneck of text-only ingest, and a polars frame would only be converted back)."""
    return pa.Table.from_pydict({k: [r[k] for r in batch] for k in ITEM_SCHEMA}, schema=writer.arrow_schema)


def ingest(sources: str | Path | Iterable[str | Path], out: str | Path | None = None, **kwargs) -> pl.DataFrame:
    """Ingest benchmark files and return the items table (polars).

    With ``out`` the workspace keeps ``items.parquet`` and ``ledger.parquet``; without it a
    temporary workspace is used and discarded. Keyword options as ``ingest_to_workspace``.

    >>> ingest("MMBench_samples.tsv").select("item_id", "answer").head(1)  # doctest: +SKIP
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if out is not None:
        ingest_to_workspace(sources, out, **kwargs)
        return validate_items(Workspace(out).read("items"))
    with tempfile.TemporaryDirectory(prefix="mmcurate-ingest-") as tmp:
        ingest_to_workspace(sources, tmp, **kwargs)
        return validate_items(Workspace(tmp).read("items"))
