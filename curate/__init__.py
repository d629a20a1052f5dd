"""mmcurate: build and audit vision-dependent multimodal benchmarks.

Stages are functions from table to table (polars); the CLI (``mmcurate``) is a thin layer.
"""

from curate.ingest import ingest
from curate.schema import ITEM_SCHEMA, LEDGER_SCHEMA
from curate.workspace import Workspace

__all__ = ["ingest", "Workspace", "ITEM_SCHEMA", "LEDGER_SCHEMA"]
__version__ = "0.1.0"
