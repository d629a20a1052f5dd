"""Errors a user should read as one line, not as a traceback.

The CLI catches ``UserError`` (and only it), prints its message and exits non-zero. Anything
else is a bug in mmcurate and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request: the message names the file/row/field and the fix."""

    exit_code = 2


class RowError(ValueError):
    """One input row is bad. Ingest quarantines the row with this reason and goes on."""

    def __init__(self, reason: str, field: str | None, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail
