"""mmcurate: build and audit vision-dependent multimodal benchmarks.

Stages are functions from table to table (polars); the CLI (``mmcurate``) is a thin layer.

The names below are imported on first use (PEP 562), so ``from curate.errors import UserError``
or ``curate.schema`` do not load polars' readers, pyarrow and PIL through ``curate.ingest``:
the foundation stays cheap to import for ``filters/`` and ``annotation/``. The ingest function is
``curate.ingest.ingest`` (``curate.ingest`` is its module: a package attribute cannot be both).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Workspace", "ITEM_SCHEMA", "LEDGER_SCHEMA"]
__version__ = "0.1.0"

_LAZY = {"Workspace": "curate.workspace", "ITEM_SCHEMA": "curate.schema", "LEDGER_SCHEMA": "curate.schema"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")
