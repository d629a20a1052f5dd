"""A workspace is a folder of parquet files, one per stage, plus ``ledger.parquet``.

Why files and not a database: a user can open any stage's output with any parquet reader,
and a run can stop after any stage and resume.

Atomicity of a whole run (why a journal). One command changes several files together: ingest
writes ``items.parquet`` and ``ledger.parquet``, screen ``screened.parquet``, the ledger and
``screen_report.json``. Renaming them one after the other is not atomic as a whole: a kill
between two renames used to leave new items beside an old ledger. So every change goes through
a :class:`Transaction` (``Workspace.transaction()``, opened for a whole command by
:func:`workspace_command`):

1. every new file is written and fsynced as a hidden temporary ``.NAME.<random>.tmp`` in the
   workspace (readers never look at those);
2. ``.journal.json`` is written atomically (temp + fsync + rename): it names every
   ``temporary -> NAME`` rename and the new ``manifest.json``. **Its rename is the commit
   point**: before it the old workspace stands (the temporaries are garbage), after it the new one;
3. the temporaries are renamed to their names, ``manifest.json`` is written, the journal removed.

A run killed in step 3 is rolled forward by the next process that opens the workspace
(:meth:`Workspace.recover`: a journal entry whose temporary still exists is renamed, the
manifest written, the journal removed); one killed before step 2 is rolled back (its temporaries
removed). Readers that meet a journal finish it first (or, while a live writer holds the lock,
wait the few milliseconds its renames take). ``manifest.json`` names the files of the last
commit with their size and sha256 and a generation counter; :meth:`Workspace.verify` checks the
folder against it. Readers trust the names; the manifest is the record of which run wrote them.

One writer at a time: every command that changes a workspace (ingest, screen, review push/pull,
balance, export, suggest, difficulty) holds ``fcntl.flock`` on ``WORKDIR/.lock`` for its whole run.
A second one stops at once with one line (exit 2), or waits with ``mmcurate --wait`` (or
``MMCURATE_WAIT=1``). The lock is re-entrant within one process (a command calling another).
Stale temporaries (``.*.tmp``) of dead runs are removed when the lock is taken.

Fault injection for the crash tests: ``MMCURATE_FAULT=after:NAME`` makes the committing process
``os._exit(137)`` right after step NAME: ``staged`` (files written, not committed), ``journal``
(the commit point), a file name such as ``items.parquet`` (after its rename), ``manifest``
(before the journal is removed), and for exports ``export-aside`` (old folder moved aside, new
one not yet in place).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.schema import LEDGER_SCHEMA, SchemaError, conform, empty_ledger, validate_items, validate_ledger
from curate.stages import CANDIDATE_STAGES, STAGE_FILES, annotation, missing_columns
from curate.stages import stage as stage_spec

LEDGER_FILE = "ledger.parquet"
MANIFEST_FILE = "manifest.json"
JOURNAL_FILE = ".journal.json"
LOCK_FILE = ".lock"
PARQUET_OPTS = {"compression": "zstd", "compression_level": 3, "statistics": True}
#: How long a reader waits for a live writer's renames (milliseconds of work) to finish.
JOURNAL_WAIT_S = 30.0


def fault(point: str) -> None:
    """Crash-test hook: ``MMCURATE_FAULT=after:<point>`` kills the process here, as kill -9 would."""
    if os.environ.get("MMCURATE_FAULT") == f"after:{point}":
        os._exit(137)


def _fsync(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (a rename is in the directory, not the file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _temp_in(folder: Path, name: str) -> Path:
    """A hidden temporary beside ``name``, with the permissions a plain new file would get
    (mkstemp makes 0600: a workspace shared by a team would become unreadable to the others)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` via a temporary file in the same folder and a rename.

    A crash at any point leaves either the old file or the new one, never a torn one. Files
    of a workspace go through :meth:`Workspace.write` instead (which joins the run's transaction).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_in(path.parent, path.name)
    try:
        df.write_parquet(tmp, **PARQUET_OPTS)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _temp_in(path.parent, path.name)
    try:
        tmp.write_text(text, encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class StreamingParquetWriter:
    """Write a parquet file batch by batch (memory stays flat), renamed into place on close.

    Used by ingest so a 50,000-image TSV never sits in memory at once. With ``rename=False``
    (a transaction's writer, :meth:`Transaction.stream`) ``close`` leaves the finished,
    fsynced temporary for the transaction to rename at its commit.
    """

    def __init__(self, path: Path, schema: dict[str, pl.DataType], *, rename: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = str(_temp_in(self.path.parent, self.path.name))
        self._rename = rename
        self._schema = schema
        self.arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        self._writer = pq.ParquetWriter(self._tmp, self.arrow_schema, compression="zstd", compression_level=3)
        self.rows = 0
        self.closed = False

    @property
    def tmp_path(self) -> Path:
        return Path(self._tmp)

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
        if self.closed:
            return self.path
        self._writer.close()
        _fsync(self._tmp)
        self.closed = True
        if self._rename:
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if not self.closed:
                self.closed = True
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


# ------------------------------------------------------------------------------------------
# One writer at a time: the workspace lock
# ------------------------------------------------------------------------------------------
#: Set by ``mmcurate --wait``: a command waits for the workspace instead of stopping.
LOCK_WAIT = False
#: Commands that only read the workspace: they run unlocked in a folder they cannot write.
READ_ONLY_COMMANDS = frozenset({"export"})
_LOCKS: dict[str, list] = {}  # realpath -> [fd, depth]; flock is per open file, so one fd per process
_TXS: dict[str, Transaction] = {}  # realpath -> the transaction this process has open there


def _key(root: Path) -> str:
    return os.path.realpath(root)


def _wait_default() -> bool:
    return LOCK_WAIT or os.environ.get("MMCURATE_WAIT", "") not in ("", "0")


def _holder(root: Path) -> str:
    try:
        text = (root / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    pid, _, rest = text.partition(" ")
    return f"pid {pid} ({rest})" if pid.isdigit() else "another process"


@contextmanager
def workspace_lock(root: str | Path, command: str, *, wait: bool | None = None) -> Iterator[None]:
    """Hold ``WORKDIR/.lock`` (exclusive ``flock``) while the block runs; re-entrant in one process.

    Taking it also finishes or rolls back what a killed run left (:meth:`Workspace.recover`).
    """
    root = Path(root)
    key = _key(root)
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        try:
            yield
        finally:
            _LOCKS[key][1] -= 1
        return
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if command in READ_ONLY_COMMANDS and not (root / JOURNAL_FILE).exists():
            yield  # a folder we may not write (e.g. a shared release workspace): nothing of ours to protect
            return
        raise UserError(f"{root}: cannot create the lock file {LOCK_FILE} ({exc.strerror}); "
                        "mmcurate needs a workspace it can write") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not (_wait_default() if wait is None else wait):
                raise UserError(f"{root}: in use by {_holder(root)}; wait for it to finish, or run `mmcurate --wait "
                                f"{command} ...` to wait for it") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        _LOCKS[key] = [fd, 1]
        try:
            Workspace(root).recover()
            yield
        finally:
            del _LOCKS[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


F = TypeVar("F", bound=Callable[..., Any])


def workspace_command(command: str, *, arg: str = "workdir", create: bool = False) -> Callable[[F], F]:
    """Decorate a library function that changes the workspace named by its parameter ``arg``:
    it runs holding the lock, inside one transaction (all its files commit together at its
    return; an exception leaves the workspace as it was)."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind_partial(*args, **kwargs)
            root = bound.arguments.get(arg, sig.parameters[arg].default)
            ws = Workspace(root, create=create)
            with workspace_lock(ws.root, command):
                if command in READ_ONLY_COMMANDS:
                    return fn(*args, **kwargs)
                with ws.transaction():
                    return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


# ------------------------------------------------------------------------------------------
# Transactions
# ------------------------------------------------------------------------------------------
class Transaction:
    """The files one run changes, staged as temporaries and renamed together at :meth:`commit`."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.staged: dict[str, Path] = {}  # file name -> finished temporary
        self.writers: dict[str, StreamingParquetWriter] = {}
        self.manifest_updates: dict[str, Any] = {}

    def path_of(self, name: str) -> Path:
        """Where ``name``'s current content is for this run: its staged temporary, or the file."""
        return self.staged.get(name, self.ws.root / name)

    def _stage(self, name: str, tmp: Path) -> None:
        old = self.staged.pop(name, None)
        if old is not None and old.exists():
            old.unlink()
        self.staged[name] = tmp

    def write_parquet(self, name: str, df: pl.DataFrame) -> None:
        tmp = _temp_in(self.ws.root, name)
        try:
            df.write_parquet(tmp, **PARQUET_OPTS)
            _fsync(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._stage(name, tmp)

    def write_text(self, name: str, text: str) -> None:
        tmp = _temp_in(self.ws.root, name)
        tmp.write_text(text, encoding="utf-8")
        _fsync(tmp)
        self._stage(name, tmp)

    def stream(self, name: str, schema: dict[str, pl.DataType]) -> StreamingParquetWriter:
        """A streaming writer whose file joins this transaction (close it before the commit)."""
        writer = StreamingParquetWriter(self.ws.root / name, schema, rename=False)
        self.writers[name] = writer
        return writer

    def commit(self) -> None:
        for name, writer in self.writers.items():
            if not writer.closed:
                raise RuntimeError(f"{name}: streaming writer not closed before the commit")
            self._stage(name, writer.tmp_path)
        self.writers.clear()
        if not self.staged and not self.manifest_updates:
            return
        root = self.ws.root
        manifest = self.ws.manifest()
        files = dict(manifest.get("files", {}))
        for name, tmp in self.staged.items():
            files[name] = {"size": tmp.stat().st_size, "sha256": _sha256(tmp)}
        new = {**manifest, **self.manifest_updates, "generation": int(manifest.get("generation", 0)) + 1, "files": files}
        journal = {"renames": [[tmp.name, name] for name, tmp in sorted(self.staged.items())], "manifest": new}
        fault("staged")  # not committed yet: the next run removes the temporaries, the old workspace stands
        _atomic_write_text(root / JOURNAL_FILE, json.dumps(journal, sort_keys=True))
        _fsync_dir(root)
        fault("journal")  # committed: from here on the next run rolls forward
        self.staged.clear()
        self.ws._finish(journal)

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.writers.clear()
        self.staged.clear()


class Workspace:
    """One folder holding every stage's parquet file and the ledger."""

    def __init__(self, root: str | Path, *, create: bool = False):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise UserError(f"{self.root}: no such workspace folder (run `mmcurate ingest ... --out {self.root}` first)")

    # -- transactions ----------------------------------------------------------------------
    @property
    def _tx(self) -> Transaction | None:
        return _TXS.get(_key(self.root))

    @contextmanager
    def transaction(self, command: str = "write") -> Iterator[Transaction]:
        """Stage every write of the block; commit them together at its end (nested: join the outer)."""
        if self._tx is not None:
            yield self._tx
            return
        with workspace_lock(self.root, command):
            tx = Transaction(self)
            _TXS[_key(self.root)] = tx
            try:
                yield tx
                tx.commit()
            except BaseException:
                tx.abort()
                raise
            finally:
                _TXS.pop(_key(self.root), None)

    def _current(self, name: str) -> Path:
        tx = self._tx
        return tx.path_of(name) if tx is not None else self.root / name

    def _finish(self, journal: dict) -> None:
        """Step 3 of a commit (or its roll-forward): renames, manifest, journal removed."""
        for tmp_name, name in journal["renames"]:
            tmp = self.root / tmp_name
            if tmp.exists():
                os.replace(tmp, self.root / name)
                fault(name)
        _fsync_dir(self.root)
        _atomic_write_text(self.root / MANIFEST_FILE, json.dumps(journal["manifest"], indent=2, sort_keys=True) + "\n")
        fault("manifest")
        (self.root / JOURNAL_FILE).unlink(missing_ok=True)
        _fsync_dir(self.root)

    def recover(self) -> None:
        """Finish a committed run a kill interrupted; remove the temporaries of uncommitted ones.

        Call only holding the lock (``workspace_lock`` does, when it takes it)."""
        journal_path = self.root / JOURNAL_FILE
        if journal_path.is_file():
            try:
                journal = json.loads(journal_path.read_text(encoding="utf-8"))
            except ValueError as exc:  # cannot happen (written by rename); say so rather than guess
                raise UserError(f"{journal_path}: unreadable journal of an interrupted run ({exc}); "
                                "inspect the workspace, then delete the file") from exc
            self._finish(journal)
        for tmp in self.root.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)

    def _settle(self) -> None:
        """A reader meeting a journal: finish it (no writer alive) or wait for the live writer's renames."""
        if not (self.root / JOURNAL_FILE).exists() or self._tx is not None:
            return
        key = _key(self.root)
        if key in _LOCKS:
            self.recover()
            return
        deadline = time.monotonic() + JOURNAL_WAIT_S
        while (self.root / JOURNAL_FILE).exists():
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    _LOCKS[key] = [fd, 1]
                    try:
                        self.recover()
                    finally:
                        del _LOCKS[key]
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    return
            finally:
                os.close(fd)
            if time.monotonic() > deadline:
                raise UserError(f"{self.root}: {_holder(self.root)} has been committing for {JOURNAL_WAIT_S:.0f} s; try again later")
            time.sleep(0.01)

    def manifest(self) -> dict:
        """The last commit's ``manifest.json`` (``{}`` in a workspace written before manifests)."""
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{path}: not readable JSON ({exc}); delete it and the next run writes a new one") from exc

    def verify(self) -> list[str]:
        """Problems between the folder and ``manifest.json`` (empty when they agree)."""
        self._settle()
        problems = []
        for name, meta in sorted(self.manifest().get("files", {}).items()):
            path = self.root / name
            if not path.is_file():
                problems.append(f"{name}: named by the manifest but missing")
            elif path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                problems.append(f"{name}: differs from the manifest (changed outside mmcurate?)")
        return problems

    # -- stage files -------------------------------------------------------------------
    def path(self, stage: str) -> Path:
        if stage not in STAGE_FILES:
            raise UserError(f"unknown stage {stage!r}; expected one of {list(STAGE_FILES)}")
        return self.root / STAGE_FILES[stage]

    def has(self, stage: str) -> bool:
        self.path(stage)
        self._settle()
        return self._current(STAGE_FILES[stage]).is_file()

    def read(self, stage: str) -> pl.DataFrame:
        path = self.path(stage)
        self._settle()
        current = self._current(path.name)
        if not current.is_file():
            raise UserError(f"{path}: stage file missing (the {stage!r} stage has not run in this workspace)")
        return read_parquet_checked(current, shown=path)

    def write(self, stage: str, df: pl.DataFrame) -> Path:
        """Write a stage file: at the end of the running transaction, or now as a transaction of its own.

        Every stage file holds items (``curate.schema``'s contract: the item columns, unique ids, letters
        in range) and the columns its stage declares it adds (``curate.stages.STAGES``), so a stage that
        would write a broken table fails here, before anything is replaced."""
        path = self.path(stage)
        missing = missing_columns(stage_spec(stage).adds, df.columns)
        if missing:
            raise UserError(f"{self.root}: not written: {path.name} (stage {stage!r}) lacks the column(s) {missing} "
                            f"that stage adds (curate.stages.STAGES); write the table the {stage!r} stage produced")
        return self._write(stage, df)

    def _write(self, stage: str, df: pl.DataFrame) -> Path:
        """:meth:`write` without the stage's column check (the item contract is always checked)."""
        path = self.path(stage)
        try:
            validate_items(df, what=f"{path.name} (stage {stage!r})")
        except SchemaError as exc:
            raise UserError(f"{self.root}: not written: {exc}") from None
        with self.transaction() as tx:
            tx.write_parquet(path.name, df)
        return path

    def write_text(self, name: str, text: str) -> Path:
        """A side file of the run (e.g. ``screen_report.json``), committed with its stage files."""
        with self.transaction() as tx:
            tx.write_text(name, text)
        return self.root / name

    def newest(self, stages: Iterable[str] = CANDIDATE_STAGES) -> str:
        """The newest stage present among ``stages`` (given newest first)."""
        for stage in stages:
            if self.has(stage):
                return stage
        raise UserError(f"{self.root}: none of the stage files {[STAGE_FILES[s] for s in stages]} exist")

    def annotation_base(self, name: str) -> tuple[str, pl.DataFrame]:
        """The stage file annotation ``name`` goes into (the newest it may annotate) and its table, for a
        step that computes its columns from that table and hands it back to :meth:`annotate` (one read)."""
        stage = self.newest(annotation(name).into)
        return stage, self.read(stage)

    def annotate(self, name: str, columns: pl.DataFrame, *, base: tuple[str, pl.DataFrame] | None = None) -> tuple[str, Path]:
        """Add the columns of annotation ``name`` (``curate.stages.ANNOTATIONS``) to the newest stage file it
        may annotate, joined by ``item_id``; columns of the same names are replaced, rows not in ``columns``
        get nulls. The one way a step writes into a file another stage wrote -- visible in the registry.

        ``base``: that stage and its table as :meth:`annotation_base` returned them, so the file is not read
        twice (it must still be the newest, with the file's rows and columns). The stage's own columns are
        not checked again: the file holds what its stage wrote, and a workspace written before a column
        existed stays annotatable; only the annotation's declared columns are."""
        spec = annotation(name)
        if "item_id" not in columns.columns:
            raise UserError(f"annotation {name!r} joins by item_id; its table has no item_id column (columns: {columns.columns})")
        unexpected = [c for c in columns.columns if c != "item_id" and c not in spec.adds]
        if unexpected:
            raise UserError(f"annotation {name!r} may not add column(s) {unexpected}: it declares only {list(spec.adds)} "
                            f"(curate.stages.ANNOTATIONS); declare new columns there")
        stage = self.newest(spec.into)
        table = self._base_table(stage, base)
        added = [c for c in columns.columns if c != "item_id"]
        table = table.drop([c for c in added if c in table.columns]).join(columns, on="item_id", how="left", maintain_order="left")
        return stage, self._write(stage, table)

    def _base_table(self, stage: str, base: tuple[str, pl.DataFrame] | None) -> pl.DataFrame:
        """The table of ``stage``: the caller's copy when it is that file as it stands (checked from the
        parquet footer: same rows and columns, no data read), else read from the file."""
        if base is None:
            return self.read(stage)
        given, table = base
        current = self._current(STAGE_FILES[stage])
        meta = pq.read_metadata(current)
        if given != stage or meta.num_rows != table.height or meta.schema.to_arrow_schema().names != table.columns:
            raise ValueError(f"annotate: base is not the current {STAGE_FILES[stage]} (given stage {given!r}, "
                             f"{table.height} rows); pass what annotation_base returned, unchanged")
        return table

    # -- ledger ------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER_FILE

    def ledger(self) -> pl.DataFrame:
        self._settle()
        current = self._current(LEDGER_FILE)
        if not current.is_file():
            return empty_ledger()
        return read_parquet_checked(current, shown=self.ledger_path)

    def record(self, stage: str, rows: pl.DataFrame, *, replace: pl.Expr | None = None) -> pl.DataFrame:
        """Add ledger rows for ``stage`` (committed with the run's stage files).

        Rows of the same stage that match ``replace`` (default: all rows of that stage) are
        removed first, so re-running a stage never double-counts. Returns the new ledger.
        """
        rows = validate_ledger(conform(rows.with_columns(pl.lit(stage).alias("stage")), LEDGER_SCHEMA).select(list(LEDGER_SCHEMA)))
        with self.transaction() as tx:
            old = self.ledger()
            drop = pl.col("stage") == stage
            if replace is not None:
                drop = drop & replace
            ledger = pl.concat([old.filter(~drop), rows], how="vertical")
            tx.write_parquet(LEDGER_FILE, ledger)
        return ledger


def read_parquet_checked(path: Path, *, shown: Path | None = None) -> pl.DataFrame:
    """Read a parquet file, turning a corrupt or truncated file into one clear line."""
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a torn file
        raise UserError(f"{shown or path}: not a readable parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
