"""Audit summary and HTML report, on screened-like tables built from real benchmark questions.

The screened table is built here (real ScienceQA and MMBench questions, answers of three
"members" -- VILA-13B's real replies, an always-"A" guesser and a seeded noisy oracle) so the
figures can be checked independently. One slow test runs the real screening end to end.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.audit import audit, blind_by_chance, compare_summaries, projection, projection_line, summarize, wilson
from curate.errors import UserError
from curate.metrics import extract_option_text
from curate.report import render_html, write_report
from curate.schema import ITEM_SCHEMA, LETTERS, conform
from curate.workspace import Workspace

MEMBERS = ("vila", "always_a", "noisy")
THRESHOLD = 1  # blind when more than 1 of 3 members is right


def _items(path: Path, n: int, source: str) -> pl.DataFrame:
    df = pl.read_excel(path, infer_schema_length=0).head(n)
    letters = [L for L in LETTERS if L in df.columns]
    rows = []
    for i, r in enumerate(df.iter_rows(named=True)):
        opts = [r[L] for L in letters]
        while opts and opts[-1] is None:
            opts.pop()
        rows.append({
            "item_id": f"{source}:{r['index']}", "source": source, "row": i + 1, "orig_index": r["index"],
            "question": r["question"], "hint": r.get("hint"), "options": [o or "" for o in opts], "answer": r["answer"],
            "source_category": r.get("category"), "category": r.get("category") and "science & technology",
            "prediction": r["prediction"],
        })
    return pl.DataFrame(rows)


def screened_like(shared_data: Path) -> pl.DataFrame:
    pools = shared_data / "text_pools"
    t = pl.concat([_items(pools / "ScienceQA_TEST_vila13b.xlsx", 150, "ScienceQA"), _items(pools / "MMBench_DEV_llava13b.xlsx", 90, "MMBench")], how="diagonal_relaxed")
    t = conform(t, ITEM_SCHEMA)
    rng = random.Random(7)
    answers = {m: [] for m in MEMBERS}
    for r in t.iter_rows(named=True):
        answers["vila"].append(extract_option_text(r["prediction"], r["options"]))
        answers["always_a"].append("A")
        answers["noisy"].append(r["answer"] if rng.random() < 0.4 else LETTERS[rng.randrange(len(r["options"]))])
    t = t.with_columns(**{f"answer__{m}": pl.Series(a, dtype=pl.String) for m, a in answers.items()})
    t = t.with_columns(
        **{f"hit__{m}": (pl.col(f"answer__{m}") == pl.col("answer")).fill_null(False) for m in MEMBERS},
        **{f"prob__{m}": pl.lit(0.3) + 0.6 * (pl.col(f"answer__{m}") == pl.col("answer")).cast(pl.Float64) * (pl.int_range(pl.len()) % 5) / 4 for m in MEMBERS},
        **{f"raw__{m}": pl.lit(None, pl.String) for m in MEMBERS},
    )
    t = t.with_columns(hits=pl.sum_horizontal([pl.col(f"hit__{m}").cast(pl.Int32) for m in MEMBERS]).cast(pl.Int32), n_members=pl.lit(3, pl.Int32))
    t = t.with_columns(blind=pl.col("hits") > THRESHOLD, screen_reason=pl.lit(None, pl.String))
    idx = pl.int_range(pl.len())
    t = t.with_columns(
        answer_leak_flag=idx % 23 == 0, answer_leak_score=(idx % 23 == 0).cast(pl.Float64),
        answer_leak_reason=pl.when(idx % 23 == 0).then(pl.lit("the key's text appears in the question")),
        malformed_flag=idx % 31 == 0, malformed_score=pl.lit(0.0),
        malformed_reason=pl.when(idx % 31 == 0).then(pl.lit("duplicated distractor")), malformed_drop=pl.lit(False),
    ).with_columns(rule_drop=pl.col("answer_leak_flag"), rule_reason=pl.when(pl.col("answer_leak_flag")).then(pl.lit("answer_leak: leaked")))
    # Each row is its own question here (their images told them apart): the shares below count
    # rows. tests/test_groups.py checks that copies of one question count once.
    return t.drop("prediction").with_columns(group_id=pl.col("item_id"), group_reason=pl.lit(None, pl.String))


@pytest.fixture(scope="module")
def table(shared_data) -> pl.DataFrame:
    return screened_like(shared_data)


@pytest.fixture(scope="module")
def summary(table) -> dict:
    return summarize(table, threshold=THRESHOLD, label="fixture")


# ---------------------------------------------------------------- statistics
def test_wilson_and_chance_levels():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) is None
    assert blind_by_chance(4, 1, 0) == pytest.approx(0.25)
    # MMStar's rule (drop when more than 2 of 8 hit) on 4-option items: P(Bin(8, 1/4) > 2).
    assert blind_by_chance(4, 8, 2) == pytest.approx(1 - sum(__import__("math").comb(8, k) * 0.25**k * 0.75 ** (8 - k) for k in range(3)))


# ---------------------------------------------------------------- summary
def test_summary_overall_and_per_source(table, summary):
    blind = table["blind"].to_list()
    assert summary["n_items"] == 240
    assert summary["blind_share"] == pytest.approx(sum(blind) / 240, abs=1e-4)
    lo, hi = summary["blind"]["ci95"]
    assert lo < summary["blind_share"] < hi
    assert set(summary["by_source"]) == {"ScienceQA", "MMBench"}
    for src, g in summary["by_source"].items():
        part = table.filter(pl.col("source") == src)
        assert (g["n"], g["k"]) == (part.height, int(part["blind"].sum()))
        assert g["chance_hit"] == pytest.approx(sum(1 / len(o) for o in part["options"]) / part.height, abs=1e-4)
        expected_chance = sum(blind_by_chance(len(o), 3, THRESHOLD) for o in part["options"]) / part.height
        assert g["chance_blind"] == pytest.approx(expected_chance, abs=1e-4)
    assert sum(g["n"] for g in summary["by_source_category"].values()) == 240
    assert summary["by_category"]["science & technology"]["n"] == table["category"].is_not_null().sum()


def test_summary_members_histogram_top_items(table, summary):
    for m in MEMBERS:
        assert summary["members"][m]["k"] == int(table[f"hit__{m}"].sum())
    assert summary["members"]["vila"]["above_chance"] is True  # VILA saw the images: well above chance
    assert summary["members"]["always_a"]["above_chance"] is False
    hist = {h["hits"]: h["items"] for h in summary["hit_histogram"]}
    assert set(hist) == {0, 1, 2, 3} and sum(hist.values()) == 240
    assert hist[3] == (table["hits"] == 3).sum()
    top = summary["top_items"]
    assert len(top) == 25
    assert [t["hits"] for t in top] == sorted((t["hits"] for t in top), reverse=True)
    assert top[0]["hits"] == 3 and set(top[0]["members"]) == set(MEMBERS)
    first = table.filter(pl.col("item_id") == top[0]["item_id"]).row(0, named=True)
    assert top[0]["question"] == first["question"] and top[0]["options"] == first["options"]
    assert top[0]["members"]["always_a"]["answer"] == "A"
    probs = [t["members"]["vila"]["prob"] for t in top if t["hits"] == 3]
    means = [sum(t["members"][m]["prob"] for m in MEMBERS) / 3 for t in top if t["hits"] == 3]
    assert means == sorted(means, reverse=True) and probs


def test_member_accuracy_is_kept_apart_from_hits(table):
    """Chance-corrected hits can be fewer than right answers; 'answers blind above chance' follows accuracy."""
    # vila's hits thinned to every third right answer, as a strict chance correction would
    strict = table.with_columns(hit__vila=pl.col("hit__vila") & (pl.int_range(pl.len()) % 3 == 0))
    s = summarize(strict, threshold=THRESHOLD, label="strict", panel_info={"screen_report": {"chance_corrected": True}})
    vila = s["members"]["vila"]
    right = int((table["answer__vila"] == table["answer"]).fill_null(False).sum())
    assert vila["k"] == int(strict["hit__vila"].sum()) < right
    assert vila["accuracy"]["k"] == right and vila["accuracy"]["n"] == 240
    assert vila["share"] < vila["chance_hit"] < vila["accuracy"]["ci95"][0]  # few hits, yet clearly above chance
    assert vila["above_chance"] is True
    page = render_html(s)
    assert "hits (toward blind)" in page and f"<td class=n>{right}</td>" in page
    assert "a panel of guessers would reach without chance correction" in page
    assert "without chance correction" not in render_html(summarize(table, threshold=THRESHOLD, label="plain"))


def test_summary_rule_findings(table, summary):
    rules = summary["rules"]
    assert rules["answer_leak"]["flagged"] == (table["answer_leak_flag"]).sum() == 11
    assert rules["malformed"]["flagged"] == 8 and rules["malformed"]["dropping"] == 0
    assert rules["rule_drop"]["dropped"] == 11
    ex = rules["answer_leak"]["examples"][0]
    assert ex["item_id"] == table["item_id"][0] and "appears in the question" in ex["reason"]


def test_unscreened_table_is_refused(table):
    with pytest.raises(UserError, match="screening columns"):
        summarize(table.drop("hits"))


# ---------------------------------------------------------------- HTML report
class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained(summary, tmp_path):
    paths = write_report(summary, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    for _, attrs in parser.tags:
        for key in ("src", "href"):
            assert not str(attrs.get(key, "")).startswith(("http:", "https:", "//")), attrs
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) >= 5
    for svg in svgs:
        ET.fromstring(svg)  # well-formed inline SVG
    text = " ".join(parser.text)
    assert f"{100 * summary['blind_share']:.1f} %" in text
    top = summary["top_items"][0]
    assert top["question"] in text  # escaped in HTML, round-trips through the parser
    assert "No control-question competence is recorded for vila, always_a, noisy" in text
    assert "at chance on text-answerable control" not in text
    data = json.loads(paths["json"].read_text())
    assert data["blind_share"] == summary["blind_share"] and set(data["by_source"]) == {"ScienceQA", "MMBench"}


def test_report_escapes_item_text(summary):
    s = json.loads(json.dumps(summary))
    s["top_items"][0]["question"] = "<script>alert(1)</script> Which is <b>bold</b>?"
    page = render_html(s)
    assert "<script>" not in page and "&lt;script&gt;" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install -y chromium): the report is only parsed, not rendered")
def test_report_renders_in_headless_chromium(summary, tmp_path):
    from PIL import Image

    paths = write_report(summary, tmp_path)
    url = paths["html"].resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'id="blind-share">{100 * summary["blind_share"]:.1f} %<' in dom.stdout
    assert dom.stdout.count("<svg") >= 5
    shot = tmp_path / "shot.png"
    res = subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, bars and plots drew, not a blank page
    red = sum(n for n, (r, g, b) in colors if r > 200 and 70 < g < 100 and 70 < b < 100)  # the bars' #d9534f
    assert red > 2000


# ---------------------------------------------------------------- audit() on a screened workspace, --compare, CLI
def test_audit_screened_workspace_and_compare(table, tmp_path):
    before = Workspace(tmp_path / "before", create=True)
    before.write("screened", table)
    after = Workspace(tmp_path / "after", create=True)
    after.write("screened", table.filter(~pl.col("blind") & ~pl.col("rule_drop")))
    summary = audit([before.root], report_dir=tmp_path / "report", compare=[after.root])
    assert summary["blind_share"] == pytest.approx(table["blind"].mean(), abs=1e-4)
    cmp = summary["compare"]
    assert cmp["right"]["blind_share"] == 0.0 and cmp["delta_blind_share"] == pytest.approx(-summary["blind_share"])
    assert cmp["right"]["rules"]["answer_leak"] == 0
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["compare"]["left"]["n_items"] == 240
    assert "Side by side" in (tmp_path / "report" / "report.html").read_text()
    assert compare_summaries(summary, summary)["delta_blind_share"] == 0.0


def test_cli_audit_on_screened_workspace(table, tmp_path):
    from curate.cli import app

    Workspace(tmp_path / "ws", create=True).write("screened", table)
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "ws"), "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "blind-answerable" in res.stdout and "ScienceQA" in res.stdout
    written = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert written["n_items"] == 240
    assert written["projection"] is None and "projection" not in res.stdout  # an already screened table: no rate measured


def test_projection_is_the_panels_rate_scaled():
    # two members run in turn: 300 fresh answers in 200 model seconds = 1.5 samples/s for the panel
    members = {
        "a": {"throughput": {"asked": 100, "model_seconds": 50.0, "cached": 0}},
        "b": {"throughput": {"asked": 200, "model_seconds": 150.0, "cached": 7}},
    }
    p = projection(members)
    assert p["samples_per_s"] == 1.5 and (p["items"], p["members"]) == (22_401, 8)
    assert p["hours_in_turn"] == pytest.approx(22_401 * 8 / 1.5 / 3600) and p["hours_parallel"] == pytest.approx(p["hours_in_turn"] / 8)
    assert projection(members, items=1_000, n_members=2)["hours_in_turn"] == pytest.approx(2_000 / 1.5 / 3600)
    assert "22,401 items x 8 members = 33.2 h" in projection_line(p)
    assert projection({"a": {"throughput": {"asked": 0, "model_seconds": 0.0, "cached": 40}}}) is None
    assert projection({"a": {"n": 10, "k": 3}}) is None  # a member row without timing


@pytest.mark.slow
def test_audit_real_screening_tiny_panel(shared_data, tmp_path):
    """Real ingest + real screening (SmolLM2-135M, the tiny panel) + rules + report, on 6 MMBench items."""
    import tomllib

    from curate.assets import asset_path
    from filters.panel import panel_from_dict

    raw = tomllib.loads(asset_path("panel_tiny.toml").read_text())
    raw["panel"]["control_size"] = 8  # a few control questions keep the competence column real but the test short
    panel = panel_from_dict(raw, source="panel_tiny.toml")
    summary = audit([shared_data / "vlmevalkit" / "MMBench_samples.tsv"], panel=panel, report_dir=tmp_path / "rep", limit=6, progress=False)
    assert summary["n_items"] == 6 and summary["panel"]["name"] == "tiny"
    member = summary["members"]["smollm2"]
    assert member["n"] == 6 and member["competence"]["n"] == 8
    t = member["throughput"]  # the items; control questions are timed apart (competence)
    assert t["asked"] == 6 and summary["projection"]["samples_per_s"] == pytest.approx(t["asked"] / t["model_seconds"])
    page = (tmp_path / "rep" / "report.html").read_text()
    # SmolLM2-135M is at chance on MMLU: whenever the controls say so, the report must say so.
    assert ("at chance on text-answerable control" in page) == member["competence"]["at_chance"]
    screened = pl.read_parquet(tmp_path / "rep" / "workspace" / "screened.parquet")
    assert screened.height == 6 and "answer__smollm2" in screened.columns
    assert summary["blind"]["k"] == int(screened["blind"].sum())
    assert {"answer_leak", "malformed"} <= set(summary["rules"])
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000


def test_competence_from_screen_report_drives_the_warning(table):
    comp = {"n": 100, "correct": 26, "accuracy": 0.26, "ci_low": 0.18, "ci_high": 0.35, "chance": 0.25, "at_chance": True}
    good = {**comp, "correct": 60, "accuracy": 0.6, "ci_low": 0.5, "ci_high": 0.69, "at_chance": False}
    report = {"threshold": THRESHOLD, "members": [
        {"name": "vila", "counted": True, "competence": good},
        {"name": "always_a", "counted": False, "competence": comp},
        {"name": "noisy", "counted": True, "competence": good},
    ]}
    s = summarize(table, threshold=THRESHOLD, panel_info={"name": "p", "screen_report": report})
    assert s["members"]["always_a"]["competence"]["at_chance"] is True and s["members"]["always_a"]["counted"] is False
    page = render_html(s)
    warn = re.search(r'<div class=warn id=at-chance>(.*?)</div>', page, re.S)
    assert warn and "always_a" in warn.group(1) and "vila" not in warn.group(1)
    assert "id=unmeasured" not in page


def test_sample_is_seeded_stratified_and_in_order(table, tmp_path):
    from curate.audit import sample_items

    sample, info = sample_items(table, 40, seed=3)
    assert info == {"n": 40, "of": 240, "seed": 3, "by_source": {"MMBench": 15, "ScienceQA": 25}}  # 90 : 150 of 240
    assert sample["source"].value_counts().sort("source").rows() == [("MMBench", 15), ("ScienceQA", 25)]
    pos = {iid: i for i, iid in enumerate(table["item_id"])}
    assert [pos[i] for i in sample["item_id"]] == sorted(pos[i] for i in sample["item_id"])  # original order kept
    assert sample_items(table, 40, seed=3)[0].equals(sample)
    assert set(sample_items(table, 40, seed=4)[0]["item_id"]) != set(sample["item_id"])
    assert sample_items(table, 1000)[0].height == 240
    with pytest.raises(UserError, match="--sample 0"):
        sample_items(table, 0)
    unnamed = table.with_columns(pl.when(pl.col("source") == "MMBench").then(None).otherwise(pl.col("source")).alias("source"))
    assert sample_items(unnamed, 40, seed=3)[1]["by_source"] == {None: 15, "ScienceQA": 25}  # a null source is a stratum too
    Workspace(tmp_path / "ws", create=True).write("screened", table)
    summary = audit([tmp_path / "ws"], report_dir=tmp_path / "r", sample=40, seed=3)
    assert summary["n_items"] == 40 and summary["sample"]["of"] == 240
    assert summary["blind"]["k"] == int(table.filter(pl.col("item_id").is_in(sample["item_id"].to_list()))["blind"].sum())
    assert "a random sample of 40 of 240" in (tmp_path / "r" / "report.html").read_text()
