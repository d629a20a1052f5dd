"""The audit report's item-quality section (issue #18) as a person sees it: rendered by a real Chromium.

`audit --results` on 300 MMStar items with MMStar's three public result files; Chromium loads
report.html from disk (no server, no network) and dumps the DOM after layout. What must be on the
page: the suspect-key count, one table row per listed suspect item with each model's answer and the
evidence sentence, the discriminability histogram as drawn SVG, and the shares no model / every
model solves -- the same figures summary.json holds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from curate.workspace import Workspace

DATA = Path(__file__).parent / "data"
MMSTAR = [DATA / "mmstar" / f for f in ("llava_next_yi_34b_MMStar.xlsx", "vila_13b_MMStar.xlsx", "vila_8b_MMStar.xlsx")]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Rows(HTMLParser):
    """Rows of the table with id=suspect-table, each as its cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_table = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "suspect-table":
            self._in_table = 1
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if self._in_table and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._in_table:
            self._in_table = 0

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install -y chromium): the report is not rendered")
def test_item_quality_section_renders_in_headless_chromium(tmp_path):
    from curate.audit import audit
    from curate.ingest import ingest_to_workspace

    ingest_to_workspace([MMSTAR[1]], out=tmp_path / "ws")
    items = Workspace(tmp_path / "ws").read("items").head(300)
    # a screened table without a model run: one member that always answers A (what the panel did is not under test)
    screened = items.with_columns(answer__always_a=pl.lit("A"), raw__always_a=pl.lit(None, pl.String),
                                  hit__always_a=pl.col("answer") == "A", prob__always_a=pl.lit(0.25))
    screened = screened.with_columns(hits=pl.col("hit__always_a").cast(pl.Int32), n_members=pl.lit(1, pl.Int32),
                                     blind=pl.lit(False), screen_reason=pl.lit(None, pl.String))
    ws = Workspace(tmp_path / "screened", create=True)
    ws.write("screened", screened)
    audit([ws.root], report_dir=tmp_path / "report", results=MMSTAR, rules=False)
    st = json.loads((tmp_path / "report" / "summary.json").read_text())["item_stats"]
    assert st["n_items"] == 300 and st["n_models"] == 3

    url = (tmp_path / "report" / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    section = page[page.index('id="item-stats"'):]
    n_suspect = st["suspect_keys"]["n"]
    assert re.search(rf'id="suspect-keys">\s*{n_suspect}\s*<', section), section[:2000]
    for key in ("no_model_solves", "every_model_solves"):
        assert f"({st[key]['n']})" in section  # the card's count, as in summary.json
    # the discriminability histogram: an SVG with one bar per non-empty bin, before the suspect table
    hist_svg = section[section.index("<svg"):section.index("</svg>")]
    assert section.index("<svg") < section.index('id="suspect-table"')
    assert hist_svg.count('id="patch_') >= 2 + len(st["discriminability"]["histogram"])  # figure, axes, one bar per bin
    assert sum(b["n"] for b in st["discriminability"]["histogram"]) == st["discriminability"]["n_defined"] > 0
    parser = _Rows()
    parser.feed(section)
    header, *rows = parser.rows
    assert header[0] == "item" and "each model's answer" in header
    listed = st["suspect_items"]
    assert len(rows) == len(listed) > 0
    for row, item in zip(rows, listed):
        assert row[0] == item["item_id"]
        for model, answer in item["answers"].items():
            assert model in row[3] and (answer or "") in row[3]
        assert f"the key is {item['key']}" in row[4]
