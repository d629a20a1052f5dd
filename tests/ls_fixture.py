"""A real Label Studio for the review tests (no mock), started once per test session.

The first start of a data dir runs ~40-80 s of migrations, so an initialised template (data dir +
the secret its admin token was created with) is built once and cached under
``~/.cache/mmcurate/ls-template-<label-studio version>``; each session copies it (~4 s start).
Import the fixtures into a test module with ``from tests.ls_fixture import label_studio, ...``.
Both modules then share one server through the module-level singleton below.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from annotation.server import LocalServer, free_port, label_studio_version, load_secret, start_server, state_dir

CACHE = Path(os.environ.get("MMCURATE_CACHE", Path.home() / ".cache" / "mmcurate"))


def template_dir() -> Path:
    """An initialised Label Studio workspace template, built on first use (file-locked)."""
    try:
        version = label_studio_version()
    except Exception as exc:  # the server is an optional extra
        pytest.skip(f"label-studio server not installed ({exc})")
    target = CACHE / f"ls-template-{version}"
    if (state_dir(target) / "data" / "label_studio.sqlite3").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".ls-template-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (state_dir(target) / "data" / "label_studio.sqlite3").is_file():
            return target
        build = Path(tempfile.mkdtemp(prefix=".ls-template-", dir=CACHE))
        server = start_server(build, free_port(), timeout=300)
        server.stop()
        for name in ("server.log", "server.json"):
            (state_dir(build) / name).unlink(missing_ok=True)
        os.replace(build, target)
    return target


@dataclass
class LabelStudioHandle:
    server: LocalServer
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def workdir(self) -> Path:
        return self.server.workdir


_SESSION: dict[str, LabelStudioHandle] = {}


def start_copy(workdir: Path) -> LabelStudioHandle:
    """Start a server whose data dir is a fresh copy of the template (function-scoped uses)."""
    server = start_server(workdir, free_port(), template=template_dir(), timeout=120)
    return LabelStudioHandle(server, load_secret(workdir).token)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> LabelStudioHandle:
    """One real Label Studio on a free 127.0.0.1 port for the whole session; SIGTERM at the end."""
    handle = _SESSION.get("server")
    if handle is None or not handle.server.alive():
        handle = start_copy(tmp_path_factory.mktemp("ls-server"))
        _SESSION["server"] = handle
    yield handle
    handle.server.stop()


def mmbench_workspace(shared_data: Path, workdir: Path) -> Path:
    """A workspace with the 54 real MMBench sample items (images embedded) via curate.ingest."""
    from curate.ingest import ingest

    ingest([shared_data / "vlmevalkit" / "MMBench_samples.tsv"], out=workdir)
    return workdir


def sdk(handle: LabelStudioHandle):
    """A raw SDK client as the admin (for playing reviewers), retries off."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=handle.url, api_key=handle.token)


def annotate(handle: LabelStudioHandle, task_id: int, user_id: int, *, needs_image: str, key_correct: str, dimension: str | None, corrected_key: str | None = None, comment: str | None = None) -> None:
    """Post one reviewer's annotation through the API, as the labeling UI would submit it."""
    result = [
        {"from_name": "needs_image", "to_name": "question", "type": "choices", "value": {"choices": [needs_image]}},
        {"from_name": "key_correct", "to_name": "question", "type": "choices", "value": {"choices": [key_correct]}},
    ]
    if dimension:
        result.append({"from_name": "dimension", "to_name": "question", "type": "choices", "value": {"choices": [dimension]}})
    if corrected_key:
        result.append({"from_name": "corrected_key", "to_name": "question", "type": "choices", "value": {"choices": [corrected_key]}})
    if comment:
        result.append({"from_name": "comment", "to_name": "question", "type": "textarea", "value": {"text": [comment]}})
    sdk(handle).annotations.create(id=task_id, result=result, completed_by=user_id, request_options={"max_retries": 0})
