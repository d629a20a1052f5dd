"""Small pieces the report pages share: escaping, percentages, and matplotlib figures as inline SVG.

Why its own module: the audit page (:mod:`curate.report`) and its item-statistics section
(:mod:`curate.report_items`) must escape text, print shares and draw plots the same way; keeping
the pieces here lets both import them without importing each other.
"""

from __future__ import annotations

import html
import io
import warnings
from typing import Any

__all__ = ["esc", "pct", "pyplot", "svg"]


def esc(value: Any) -> str:
    """``value`` as HTML text (None as the empty string)."""
    return html.escape("" if value is None else str(value))


def pct(x: float | None, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage ("–" for None)."""
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def svg(fig) -> str:
    """A matplotlib figure as an inline ``<svg>`` element (and the figure closed)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with warnings.catch_warnings():
        # Labels in scripts the bundled font lacks (e.g. CCBench's Chinese categories) draw as
        # boxes in the plot; the tables beside it carry the real text.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend with text drawn as paths (no font needed to view the page)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt
