"""Shared fixtures. Real data lives in ../shared/data beside the checkout (read-only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MMCURATE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: these tests need the real benchmark files that sit beside the clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark files not found at {SHARED_DATA} (set MMCURATE_SHARED_DATA)")
    return SHARED_DATA


def _real_model_cache() -> Path:
    """Where packaged models are joined for this user (``filters.backends.packaged.cache_dir``), read once
    before any test moves ``MMCURATE_CACHE``."""
    env = os.environ.get("MMCURATE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmcurate"


REAL_MODEL_CACHE = _real_model_cache()


@pytest.fixture(autouse=True)
def private_response_cache(monkeypatch, tmp_path_factory) -> Path:
    """Every test gets its own per-user response cache (``MMCURATE_CACHE`` -> a fresh folder), so no
    test reads answers another test, or the user's own runs, left in ``~/.cache/mmcurate``.

    ``MMCURATE_CACHE`` also says where packaged models are joined (1 GB for the default model): that
    stays the real folder -- in this process through ``packaged.cache_dir``, and in subprocesses
    through links to the already joined files -- so no test joins a model again."""
    folder = tmp_path_factory.mktemp("mmcurate-cache")
    monkeypatch.setenv("MMCURATE_CACHE", str(folder))
    import filters.backends.packaged as packaged

    monkeypatch.setattr(packaged, "cache_dir", lambda: REAL_MODEL_CACHE)
    if REAL_MODEL_CACHE.is_dir():
        for model in REAL_MODEL_CACHE.glob("*.gguf"):
            (folder / model.name).symlink_to(model)
    return folder


@pytest.fixture(scope="session")
def shared_model_cache(tmp_path_factory) -> Path:
    """One response cache for the whole test session (a path to pass as ``cache_path`` / ``--cache``):
    slow tests that ask a real model the same control questions opt in, so those are asked once per
    CI run, not once per test."""
    return tmp_path_factory.mktemp("shared-responses") / "responses.sqlite"
