"""SQLite cache of model responses: a killed screening run resumes where it stopped.

Why SQLite: one file, atomic commits, safe under ``kill -9`` at any instant (a transaction is
either in the file or not), readable by any tool. Values are JSON, never pickles.

The key holds everything that changes an answer and nothing that does not (Inspect AI's rule,
unlike lm-eval-harness whose key omits the model): the model's identity (file hash or pinned
revision), dtype, backend, method, prompt template version and the full prompt text. Batch
size, threads, timeouts and concurrency are not in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
"""


def request_key(model_identity: str, method: str, template_version: str, prompt: str, **params: Any) -> str:
    """sha256 over the canonical JSON of everything that determines the response."""
    blob = json.dumps(
        {"model": model_identity, "method": method, "template": template_version, "prompt": prompt, **params},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Look everything up first, run only the misses, ``put_many`` + commit after every batch.

    Safe to share between threads (panel members run concurrently, each scoring its own prompts):
    one connection opened with ``check_same_thread=False`` and every statement under one lock,
    because a sqlite3 connection must not run two statements at once. Several *processes* (two
    workspaces screened at the same time against the per-user cache) are serialised by SQLite
    itself: WAL mode lets readers run beside the one writer, and ``timeout`` waits out a writer's
    lock instead of failing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put_many(self, model: str, items: dict[str, Any]) -> None:
        """Insert and commit in one transaction. ``OR IGNORE``: a key is written once, never twice."""
        rows = [(k, model, json.dumps(v, separators=(",", ":"))) for k, v in items.items()]
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO responses (key, model, value) VALUES (?, ?, ?)", rows)

    def count(self, model: str | None = None) -> int:
        with self._lock:
            if model is None:
                return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM responses WHERE model = ?", (model,)).fetchone()[0]

    def file_sha256(self, path: str | Path) -> str:
        """A weight file's sha256, memoised by (path, size, mtime) so a 1 GB GGUF is hashed once."""
        path = Path(path).resolve()
        st = path.stat()
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM file_hashes WHERE path=? AND size=? AND mtime_ns=?", (str(path), st.st_size, st.st_mtime_ns)
            ).fetchone()
        if row:
            return row[0]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(8 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?,?,?,?)", (str(path), st.st_size, st.st_mtime_ns, digest))
        return digest

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


CACHE_FILE = "responses.sqlite"


def user_cache_path() -> Path:
    """The per-user response cache that ``screen`` and ``audit`` share in every workspace.

    Why per user and not per workspace: the key already holds the model's identity and the full
    prompt, so an answer is valid wherever the same model meets the same prompt -- the controls,
    and any question screened before in another workspace or audit, are asked once per model.
    Where: ``$MMCURATE_CACHE/responses.sqlite`` (a directory, the same one that holds the joined
    packaged models), else ``$XDG_CACHE_HOME/mmcurate/responses.sqlite``, else
    ``~/.cache/mmcurate/responses.sqlite``. ``--cache PATH`` overrides it per command.
    """
    env = os.environ.get("MMCURATE_CACHE")
    if env:
        return Path(os.path.expanduser(env)) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmcurate" / CACHE_FILE


def default_cache_path(workdir: str | Path | None = None) -> Path:
    """The default response cache: :func:`user_cache_path`. ``workdir`` is accepted for callers
    of the per-workspace cache this replaced (``WORKDIR/.cache/responses.sqlite``) and ignored."""
    return user_cache_path()


def model_files_identity(cache: ResponseCache, path: str | Path, gguf_file: str | None = None) -> str:
    """A content identity for local weights: sha256 of the GGUF, or of every weight/config file in a folder."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + cache.file_sha256(path)
    if gguf_file:
        return "sha256:" + cache.file_sha256(path / gguf_file)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.suffix in (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt", ".tiktoken") and not f.name.startswith("."):
            h.update(os.fsencode(str(f.relative_to(path))))
            h.update(cache.file_sha256(f).encode())
    return "sha256:" + h.hexdigest()
