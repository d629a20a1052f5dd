"""Rich consoles for the CLI that stay readable when the output goes to a log file.

Rich lays tables out for 80 columns when stdout is not a terminal (and ``COLUMNS`` is not
set), so a piped ``mmcurate demo > demo.log`` used to wrap every wide table into unreadable
fragments. A console for a file gets ``LOG_WIDTH`` columns instead: tables take their
natural width (they never stretch to the full width unless asked to), and long lines of text are
written whole (``soft_wrap``) instead of being broken at the console width.

Data reaches the terminal through these consoles (file names, source names, item ids, ledger
details), and data is not trusted: ``[/x]`` in a file name is rich markup (a crash), ``:100:`` an
emoji code, an ANSI escape in a cell rewrites the terminal. So every printer passes data through
:func:`safe` (markup escaped, control characters shown as ``\\xNN``) or, where markup is off,
:func:`clean` (controls only); and the consoles never replace emoji codes.
"""

from __future__ import annotations

import os
import re
import sys

from rich.console import Console
from rich.markup import escape

LOG_WIDTH = 200
#: C0 controls but newline, DEL and the C1 block (ESC starts ANSI sequences; CSI is U+009B).
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """``value`` as text with control characters shown as ``\\xNN`` (tab as a space): safe where
    markup is off."""
    return _CONTROLS.sub(lambda m: " " if m.group() == "\t" else f"\\x{ord(m.group()):02x}", str(value))


def safe(value: object) -> str:
    """``value`` as text to embed in rich markup: controls shown (``clean``), markup escaped."""
    return escape(clean(value))


def log_console(*, stderr: bool = False) -> Console:
    """A Console: the terminal's width on a terminal, ``LOG_WIDTH`` (or ``$COLUMNS``) otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", lambda: False)
    if isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr, emoji=False)
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True, emoji=False)
