"""Rich consoles for the CLI that stay readable when the output goes to a log file.

Rich lays tables out for 80 columns when stdout is not a terminal (and ``COLUMNS`` is not
set), so a piped ``mmcurate demo > demo.log`` used to wrap every wide table into unreadable
fragments. A console for a file gets ``LOG_WIDTH`` columns instead: tables take their
natural width (they never stretch to the full width unless asked to), and long lines of text are
written whole (``soft_wrap``) instead of being broken at the console width.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

LOG_WIDTH = 200


def log_console(*, stderr: bool = False) -> Console:
    """A Console: the terminal's width on a terminal, ``LOG_WIDTH`` (or ``$COLUMNS``) otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", lambda: False)
    if isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True)
