"""Ingest: benchmark files -> ``items.parquet`` + ``ledger.parquet``, accounting for every input row.

Every source row ends in exactly one ledger row of stage ``ingest``: kept (it is an item),
dropped (valid but out of scope, e.g. an open question) or quarantined (bad: the ledger
names the field and what is wrong). ``kept + dropped + quarantined == input rows`` always.

Items are written in batches by a streaming parquet writer, so memory does not grow with
the size of the source; the stage file appears atomically when the run completes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from curate.errors import RowError, UserError
from curate import columnar
from curate.formats import ReadOptions, SourceRow, detect_format, get_reader, tables
from curate.images import DEFAULT_MAX_PIXELS
from curate.normalize import NOTE_KEY, Dropped, NormalizeOptions, normalize_row
from curate.schema import ITEM_SCHEMA, LEDGER_SCHEMA, conform, validate_items
from curate.taxonomy import default_taxonomy
from curate.workspace import StreamingParquetWriter, Workspace, workspace_command

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


@workspace_command("ingest", arg="out", create=True)
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
    columnar_path: bool = True,
) -> IngestResult:
    """Ingest ``sources`` into the workspace ``out`` (streaming; the CLI and benchmarks use this).

    Re-ingesting a file replaces its items and ledger rows; items from other files stay. A file is
    the same source when it is the same file however its path is spelt (relative, absolute, through
    a symlink), or has the same content under the same source name (moved); see ``_same_sources``.
    The run holds the workspace lock and commits items and ledger together (``curate.workspace``).
    ``on_row(source, n)`` is called as rows are read (for progress bars).
    ``columnar_path=False`` normalises whole text tables row by row too (same output, slower;
    for checking the columnar path, see ``curate.columnar``).
    """
    paths = [Path(s) for s in sources]
    if not paths:
        raise UserError("no sources given")
    if name and len(paths) > 1:
        raise UserError("--name names one source; give one SOURCE per ingest call, or drop --name")
    formats = [detect_format(p) for p in paths]  # fail fast on a missing/unknown file
    ws = Workspace(out, create=True)
    identities = {str(p): source_identity(p, name or source_name(p)) for p in paths}
    with ws.transaction() as tx:
        sources = dict(ws.manifest().get("sources", {}))
        old_files = _old_source_files(ws)
        new_files = {str(p) for p in paths} | _same_sources(old_files, sources, identities)
        tx.manifest_updates["sources"] = {**{k: v for k, v in sources.items() if k not in new_files}, **identities}
        return _ingest_into(ws, tx, paths, formats, new_files, name=name, column_map=column_map, image_root=image_root,
                            open_to_mcq=open_to_mcq, seed=seed, max_pixels=max_pixels, on_row=on_row,
                            columnar_path=columnar_path)


def source_identity(path: Path, source: str) -> dict:
    """What makes a source file the same one again: its resolved path, and its content (size and
    sha256; folders by path only) under its source name."""
    ident: dict = {"resolved": os.path.realpath(path), "source": source, "size": None, "sha256": None}
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        ident.update(size=path.stat().st_size, sha256=h.hexdigest())
    return ident


def _old_source_files(ws: Workspace) -> set[str]:
    """``source_file`` values the workspace holds (items and ingest ledger rows)."""
    files: set[str] = set()
    if ws.has("items"):
        files.update(ws.read("items")["source_file"].drop_nulls().unique().to_list())
    led = ws.ledger()
    files.update(led.filter(pl.col("stage") == "ingest")["source_file"].drop_nulls().unique().to_list())
    return files


def _same_sources(old_files: set[str], known: dict[str, dict], new: dict[str, dict]) -> set[str]:
    """The old ``source_file`` spellings that name one of the files ingested now.

    Same resolved path -> same source (so ``data/x.tsv`` then ``/abs/data/x.tsv`` replaces, never
    duplicates, and changed content is applied). Same sha256 under the same source name -> the
    same file moved. A spelling the manifest does not know (a workspace from before manifests)
    is resolved against the current folder: the best that can be done for it."""
    by_path = {v["resolved"] for v in new.values()}
    by_content = {(v["source"], v["sha256"]) for v in new.values() if v["sha256"]}
    same = set()
    for spelling in old_files:
        ident = known.get(spelling)
        if ident is None:
            if os.path.realpath(spelling) in by_path:
                same.add(spelling)
        elif ident.get("resolved") in by_path or (ident.get("sha256") and (ident.get("source"), ident["sha256"]) in by_content):
            same.add(spelling)
    return same


def _ingest_into(ws: Workspace, tx, paths: list[Path], formats: list[str], new_files: set[str], *, name, column_map,
                 image_root, open_to_mcq, seed, max_pixels, on_row, columnar_path) -> IngestResult:
    """The ingest run inside its transaction: items streamed to a staged file, ledger recorded."""
    taxonomy = default_taxonomy()
    opts_read = ReadOptions(image_root=Path(image_root) if image_root else None, column_map=column_map or {})

    ledgers: list[_Accountant] = []
    summaries: list[SourceSummary] = []
    seen: set[str] = set()
    writer = tx.stream(ws.path("items").name, ITEM_SCHEMA)
    try:
        if ws.has("items"):  # keep items of files not re-ingested now
            old = ws.read("items").filter(~pl.col("source_file").is_in(list(new_files)))
            seen.update(old["item_id"].to_list())
            writer.write(old)
        for path, fmt in zip(paths, formats):
            src = SourceSummary(name or source_name(path), str(path), fmt)
            summaries.append(src)
            nopts = NormalizeOptions(src.source, str(path), column_map or {}, taxonomy, open_to_mcq, seed, max_pixels)
            account = _Accountant(path, src, seen)
            ledgers.append(account)
            frame = tables.read_xlsx_frame(path) if fmt == "xlsx" else None
            if columnar_path and frame is not None and frame.height and columnar.applicable(frame, nopts):  # has a question column
                _ingest_frame(frame, nopts, opts_read, account, writer)
                if on_row is not None:
                    on_row(src.source, src.rows)
                continue
            rows = tables.rows_of_frame(frame, opts_read) if frame is not None else get_reader(fmt)(path, opts_read)
            batch: list[dict] = []
            for srow in rows:
                if src.rows == 0 and srow.error is None:
                    _check_question_column(path, srow.data, column_map or {})
                item = account.row(srow, nopts)
                if item is not None:
                    batch.append(item)
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
    ledger = pl.concat([a.ledger() for a in ledgers], how="vertical") if ledgers else pl.DataFrame(schema=LEDGER_SCHEMA)
    ws.record("ingest", ledger, replace=pl.col("source_file").is_in(list(new_files)))
    return IngestResult(ws.root, summaries, writer.rows)


class _Accountant:
    """One ledger row per source row of one file, and the ``item_id`` uniqueness check across files."""

    def __init__(self, path: Path, src: SourceSummary, seen: set[str]):
        self.path, self.src, self.seen = path, src, seen
        self.ledger_rows: list[dict] = []
        self.ledger_parts: list[pl.DataFrame] = []

    def row(self, srow: SourceRow, nopts: NormalizeOptions) -> dict | None:
        """Normalise one row (``normalize_row``) and account for it; the item when kept."""
        return self.settle(srow, _outcome(srow, nopts))

    def settle(self, srow: SourceRow, outcome: dict | RowError | Dropped) -> dict | None:
        """Account for a row's outcome; the item when kept."""
        if isinstance(outcome, RowError):
            self.record(srow, None, "quarantined", outcome.reason, outcome.field, outcome.detail)
            return None
        if isinstance(outcome, Dropped):
            self.record(srow, None, "dropped", outcome.reason, None, outcome.detail)
            return None
        note = outcome.pop(NOTE_KEY, None)
        return outcome if self.keep(srow, outcome["item_id"], note) else None

    def add_kept(self, kept: pl.DataFrame) -> None:
        """Account for rows (``row``, ``item_id``) known to be kept, all at once."""
        self.seen.update(kept["item_id"].to_list())
        self.ledger_parts.append(
            kept.select(pl.lit(str(self.path)).alias("source_file"), "row", "item_id", pl.lit("kept").alias("status"))
        )
        self.src.rows += kept.height
        self.src.counts["kept"] += kept.height

    def ledger(self) -> pl.DataFrame:
        """This file's ledger rows, in row order."""
        parts = [pl.DataFrame(self.ledger_rows, schema=LEDGER_SCHEMA)] + [conform(p, LEDGER_SCHEMA) for p in self.ledger_parts]
        ledger = pl.concat([p.select(list(LEDGER_SCHEMA)) for p in parts], how="vertical")
        return ledger.sort("row", maintain_order=True) if self.ledger_parts else ledger

    def keep(self, srow: SourceRow, item_id: str, note: tuple[str, str | None, str] | None = None) -> bool:
        """Record a valid item as kept, or quarantine it when its id was already taken.

        ``note`` (reason, field, detail) says how a kept row was changed on the way in (e.g. an
        option restored); it goes into the ledger row so no change is silent."""
        if item_id in self.seen:
            detail = f"item_id {item_id!r} already exists (index repeated in the file, or the same source ingested under this name)"
            self.record(srow, None, "quarantined", "duplicate_id", "index", detail)
            return False
        self.seen.add(item_id)
        self.record(srow, item_id, "kept", *(note or (None, None, None)))
        return True

    def record(self, srow: SourceRow, item_id: str | None, status: str, reason: str | None, fld: str | None, detail: str | None) -> None:
        if detail is not None:
            where = f"row {srow.row}" + (f" ({srow.where})" if srow.where else "")
            detail = f"{self.path}: {where}" + (f", field {fld!r}" if fld else "") + f": {detail}"
        self.ledger_rows.append(
            {"source_file": str(self.path), "row": srow.row, "item_id": item_id, "status": status, "reason": reason, "field": fld, "detail": detail}
        )
        self.src.rows += 1
        self.src.counts[status] += 1
        if reason:
            self.src.reasons[(status, reason)] += 1


def _ingest_frame(frame: pl.DataFrame, nopts: NormalizeOptions, opts_read: ReadOptions, account: _Accountant, writer: StreamingParquetWriter) -> None:
    """A whole text table: the columnar path decides the clean rows, ``normalize_row`` the rest,
    and ledger and items come out in row order exactly as the row path writes them."""
    fast, slow = columnar.normalize_frame(frame, nopts)
    slow_rows = tables.rows_of_frame(frame, opts_read, iter((slow.arg_true() + 1).to_list()))
    outcomes = {srow.row: (srow, _outcome(srow, nopts)) for srow in slow_rows}
    ids = fast["item_id"].to_list()
    new_ids = ids + [out["item_id"] for _, out in outcomes.values() if isinstance(out, dict)]
    if len(set(new_ids)) < len(new_ids) or not account.seen.isdisjoint(new_ids):
        # rare: an id repeats (in the file or from an earlier one); replay row by row so its first occurrence wins
        keep_fast = []
        slow_items = []
        fast_rows = dict(zip(fast["row"].to_list(), ids))
        for row_no in range(1, frame.height + 1):
            if row_no in fast_rows:
                keep_fast.append(account.keep(SourceRow(row_no, {}), fast_rows[row_no]))
            else:
                item = account.settle(*outcomes[row_no])
                if item is not None:
                    slow_items.append(item)
        fast = fast.filter(pl.Series(keep_fast, dtype=pl.Boolean))
    else:  # every id is new: account for the fast rows a column at a time
        slow_items = [item for item in (account.settle(*o) for o in outcomes.values()) if item is not None]
        account.add_kept(fast.select("row", "item_id"))
    # A few hundred slow items at most: polars builds them (pyarrow's list conversion would import pandas,
    # a tenth of a second on a cold start) and merges them in row order.
    if slow_items:
        fast = pl.concat([fast, pl.DataFrame(slow_items, schema=ITEM_SCHEMA)], how="vertical").sort("row")
    table = fast.to_arrow()
    if not table.schema.equals(writer.arrow_schema):  # same polars types give the same Arrow types: no cast (and no pyarrow.compute import)
        table = table.cast(writer.arrow_schema)
    for start in range(0, table.num_rows, BATCH_ROWS * 20):
        writer.write_arrow(table.slice(start, BATCH_ROWS * 20))


def _outcome(srow: SourceRow, nopts: NormalizeOptions) -> dict | RowError | Dropped:
    """``normalize_row``'s item, or the exception it raised (accounted for later, in row order)."""
    try:
        return normalize_row(srow, nopts)
    except (RowError, Dropped) as exc:
        return exc


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
