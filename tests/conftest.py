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
