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

from curate.audit import audit
from curate.stats import blind_by_chance, wilson
from curate.audit_summary import compare_summaries, summarize
from curate.errors import UserError
from curate.mc import match_option_text as extract_option_text
from curate.report import render_html, write_report
from curate.schema import ITEM_SCHEMA, LETTERS, conform
from curate.throughput import projection, projection_line
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
    # the uniform-guesser figure ("a guessing panel: 25 %") is gone from the report: beyond chance replaces it
    assert "guessing panel" not in page and "panel of guessers" not in page


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
    from curate.sampling import sample_items

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


# ---------------------------------------------------------------- beyond chance (issue #17)
def with_chance(t: pl.DataFrame, members=MEMBERS, threshold: int = THRESHOLD) -> pl.DataFrame:
    """The fixture as today's screen writes it: chance__<m>, blind_chance, blind_score, asks__<m>, a dimension.

    A hit here is "the member chose the key", so under a random key member m hits with
    probability 1/options when it chose an option (0 without an answer), and the item is called
    blind when more than ``threshold`` members chose that one random key (shared by all members):
    blind_chance = share of the item's letters chosen by more than ``threshold`` members.
    """
    chance: dict[str, list[float]] = {m: [] for m in members}
    blind_chance = []
    for r in t.iter_rows(named=True):
        letters = LETTERS[: len(r["options"])]
        for m in members:
            chance[m].append(1 / len(letters) if r[f"answer__{m}"] in letters else 0.0)
        blind_chance.append(sum(sum(r[f"answer__{m}"] == L for m in members) > threshold for L in letters) / len(letters))
    return t.with_columns(
        **{f"chance__{m}": pl.Series(v, dtype=pl.Float64) for m, v in chance.items()},
        **{f"asks__{m}": (1 + pl.col(f"hit__{m}").cast(pl.Int32)).cast(pl.Int32) for m in members},  # adaptive: a hit is asked once more
        blind_chance=pl.Series(blind_chance, dtype=pl.Float64),
        blind_score=pl.mean_horizontal([f"prob__{m}" for m in members]),
        l2_category=pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("dimension even")).otherwise(pl.lit("dimension odd")),
    )


@pytest.fixture(scope="module")
def chance_table(table) -> pl.DataFrame:
    return with_chance(table)


@pytest.fixture(scope="module")
def chance_summary(chance_table) -> dict:
    return summarize(chance_table, threshold=THRESHOLD, label="fixture")


def test_beyond_chance_hand_worked():
    from curate.stats import beyond_chance_stats

    # No chance at all: exactly Wilson's interval.
    assert beyond_chance_stats([1] * 4 + [0] * 6, [0.0] * 10) == {
        "share": 0.4, "lo": 0.1682, "hi": 0.6873, "estimate": 0.4, "observed": 0.4, "chance": 0.0, "n": 10}
    # One chance level e = 1/4: R = (0.4 - 0.25) / 0.75 = 0.2; the interval is Wilson's (0.1682, 0.6873)
    # mapped through (b - e) / (1 - e): (-0.109 -> 0, 0.5831).
    r = beyond_chance_stats([1] * 4 + [0] * 6, [0.25] * 10)
    assert (r["share"], r["lo"], r["hi"], r["observed"], r["chance"]) == (0.2, 0.0, 0.5831, 0.4, 0.25)
    # Mixed chance levels: x = 1,1,0,0 and e = .5,.25,.25,0, so a = 1 - e = .5,.75,.75,1; A = 3, D = sum(x - e) = 1,
    # R = 1/3. sum(a e) = .625, sum(a^2) = 2.375, z^2 = 3.8415, n = 4:
    # alpha = A^2 (1 + z^2/n) = 17.6433, beta = 2 A D + z^2 (2.375 - .625) = 12.7226, gamma = D^2 - z^2 .625 = -1.4009;
    # roots (beta -+ sqrt(beta^2 - 4 alpha gamma)) / (2 alpha) = (12.7226 -+ 16.1472) / 35.2866 = -0.0971 -> 0, 0.8182.
    r = beyond_chance_stats([1, 1, 0, 0], [0.5, 0.25, 0.25, 0.0])
    assert r["share"] == pytest.approx(1 / 3, abs=1e-4) and r["lo"] == 0.0 and r["hi"] == pytest.approx(0.8182, abs=1e-4)
    assert (r["observed"], r["chance"], r["n"]) == (0.5, 0.25, 4)
    # The upper bound solves the defining equation (D - R A)^2 = z^2 V(R), V written item by item.
    e, x, z = [0.5, 0.25, 0.25, 0.0], [1, 1, 0, 0], 1.959963984540054
    R = 0.81815

    def V(R):
        a = [1 - ei for ei in e]
        return sum((ei + R * ai) * (1 - ei - R * ai) for ei, ai in zip(e, a)) + R * R * sum((ai - sum(a) / 4) ** 2 for ai in a)
    assert (sum(x) - sum(e) - R * 3) ** 2 == pytest.approx(z * z * V(R), rel=2e-3)
    # Below chance (no item blind where half would be by luck): nothing beyond chance, the unclipped estimate says how far.
    assert beyond_chance_stats([0] * 10, [0.5] * 10) == {"share": 0.0, "lo": 0.0, "hi": 0.0, "estimate": -1.0, "observed": 0.0, "chance": 0.5, "n": 10}
    assert beyond_chance_stats([1] * 10, [0.25] * 10)["lo"] == pytest.approx((wilson(10, 10)[0] - 0.25) / 0.75, abs=2e-4)
    assert beyond_chance_stats([], []) is None and beyond_chance_stats([1, 0], [1.0, 1.0]) is None  # nothing to correct for


def test_beyond_chance_interval_covers_the_truth():
    """Seeded panels that know a share R of the items and guess the rest: the 95 % interval holds R about 95 % of the time."""
    import numpy as np

    from curate.stats import beyond_chance_stats

    for R, n in ((0.2, 300), (0.0, 300)):
        covered = 0
        for seed in range(200):
            rng = np.random.default_rng(seed)
            e = rng.choice([0.06, 0.25, 0.42, 0.58], size=n)  # mixed chance levels, as option counts and members give
            x = (rng.random(n) < e + R * (1 - e)).astype(float)
            r = beyond_chance_stats(x.tolist(), e.tolist())
            covered += r["lo"] <= R <= r["hi"]
        assert 0.92 <= covered / 200 <= (1.0 if R == 0 else 0.985), (R, covered)  # at R = 0 the clip at 0 makes it one-sided


def synthetic_panel(n: int, know: float, seed: int, n_members: int = 3, threshold: int = 1) -> pl.DataFrame:
    """A screened table of ``n`` items (2-5 options) whose members guess uniformly, except on the
    share ``know`` of items the whole panel knows (every member names the key)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(2, 5)
        key = LETTERS[rng.randrange(k)]
        known = rng.random() < know
        answers = [key if known else LETTERS[rng.randrange(k)] for _ in range(n_members)]
        hits = sum(a == key for a in answers)
        row = {"item_id": f"s:{i}", "source": "even" if i % 2 == 0 else "odd", "options": [f"option {j}" for j in range(k)],
               "answer": key, "hits": hits, "n_members": n_members, "blind": hits > threshold,
               "blind_chance": sum(sum(a == L for a in answers) > threshold for L in LETTERS[:k]) / k}
        for m, a in enumerate(answers):
            row |= {f"answer__g{m}": a, f"hit__g{m}": a == key, f"chance__g{m}": 1 / k}
        rows.append(row)
    return pl.DataFrame(rows)


def test_guessing_panel_is_at_chance_and_a_knowing_panel_is_not():
    guess = summarize(synthetic_panel(4000, 0.0, seed=1), threshold=1)
    bc = guess["beyond_chance"]
    assert guess["blind_share"] > 0.2  # guessers call many items blind ...
    assert bc["chance"] == pytest.approx(guess["blind_share"], abs=0.02)  # ... exactly as many as chance says
    assert bc["lo"] == 0.0 <= bc["share"] <= bc["hi"] < 0.04 and abs(bc["estimate"]) < 0.03
    for g in guess["by_source"].values():  # and in every group
        assert g["beyond_chance"]["lo"] == 0.0 and g["beyond_chance"]["hi"] < 0.06
    for m, row in guess["members"].items():
        assert row["beyond_chance"]["lo"] == 0.0, m  # each member's own hits: chance too
    know = summarize(synthetic_panel(4000, 0.3, seed=1), threshold=1)["beyond_chance"]
    assert 0.25 < know["lo"] < 0.3 < know["hi"] < 0.35


def test_summary_beyond_chance_per_group(chance_table, chance_summary):
    from curate.stats import beyond_chance_stats

    def expected(part):
        return beyond_chance_stats(part["blind"].cast(pl.Float64).to_list(), part["blind_chance"].to_list())

    s = chance_summary
    assert s["beyond_chance"] == s["blind"]["beyond_chance"] == expected(chance_table)
    assert s["beyond_chance"]["lo"] > 0.1  # VILA-13B answered these with the image: far beyond chance
    assert s["notes"] == []
    for key, col in (("by_source", "source"), ("by_category", "category"), ("by_dimension", "l2_category"), ("by_source_category", "source_category")):
        assert s[key], key
        for name, g in s[key].items():
            part = chance_table.filter(pl.col(col).cast(pl.String).fill_null("(none)") == name)
            bc = g["beyond_chance"]
            assert set(bc) >= {"share", "lo", "hi"} and 0.0 <= bc["lo"] <= bc["share"] <= bc["hi"] <= 1.0, (key, name)
            assert bc == expected(part), (key, name)
            assert g["share"] == pytest.approx(part["blind"].mean(), abs=1e-4)  # the raw share keeps its meaning
    assert set(s["by_dimension"]) == {"dimension even", "dimension odd"}
    saved = json.loads(json.dumps(s))
    assert saved["by_source"]["MMBench"]["beyond_chance"]["hi"] == s["by_source"]["MMBench"]["beyond_chance"]["hi"]


def test_old_tables_without_blind_chance(table, summary):
    from curate.audit_summary import NO_BLIND_CHANCE_NOTE, headline

    assert summary["beyond_chance"] is None and summary["notes"] == [NO_BLIND_CHANCE_NOTE]
    for key in ("by_source", "by_category", "by_source_category", "by_n_options"):
        assert summary[key] and all(g["beyond_chance"] is None for g in summary[key].values()), key
    assert summary["blind_share"] == pytest.approx(table["blind"].mean(), abs=1e-4)
    assert "beyond chance: not available" in headline(summary)
    page = render_html(summary)
    assert "screened by an older mmcurate" in page and "id=beyond-chance>–<" in page
    # some items without blind_chance: left out and said so
    part = with_chance(table).with_columns(blind_chance=pl.when(pl.col("source") == "MMBench").then(None).otherwise(pl.col("blind_chance")))
    s = summarize(part, threshold=THRESHOLD)
    assert s["beyond_chance"]["n"] == 150 and s["by_source"]["MMBench"]["beyond_chance"] is None
    assert s["by_source"]["ScienceQA"]["beyond_chance"]["n"] == 150 and "90 of 240 questions have no blind_chance" in s["notes"][0]


def test_headline_console_and_report(chance_table, chance_summary, tmp_path):
    from curate.audit_summary import headline
    from curate.cli import app

    bc, b = chance_summary["beyond_chance"], chance_summary["blind"]
    line = headline(chance_summary)
    expect = f"blind-answerable beyond chance: {100 * bc['share']:.1f} % (95 % CI {100 * bc['lo']:.1f}–{100 * bc['hi']:.1f} %) of 240 items"
    assert line.startswith(expect)
    assert f"the panel called {b['k']} blind: {100 * b['share']:.1f} %" in line and f"chance alone gives {100 * bc['chance']:.1f} %" in line
    Workspace(tmp_path / "ws", create=True).write("screened", chance_table)
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "ws"), "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.split())
    assert expect in flat and "guessing panel" not in flat
    assert "beyond chance" in flat and f"{100 * chance_summary['by_source']['ScienceQA']['beyond_chance']['share']:.1f} %" in flat
    page = (tmp_path / "r" / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    text = " ".join(parser.text)
    assert f"id=beyond-chance>{100 * bc['share']:.1f} %<" in page and f"id=blind-share>{100 * b['share']:.1f} %<" in page
    assert expect in text and "guessing panel" not in text and "panel of guessers" not in text
    assert "expected by chance" in text and "beyond chance" in text


def test_prompts_calibration_and_blind_score_ranking(chance_table, chance_summary):
    from curate.audit_summary import prompts_line

    p = chance_summary["prompts"]
    hits = sum(int(chance_table[f"hit__{m}"].sum()) for m in MEMBERS)
    assert (p["single_pass"], p["n_prompts"], p["extra"]) == (720, 720 + hits, hits)
    assert p["full_rotation"] == 3 * int(chance_table["options"].list.len().sum())
    assert p["members"]["vila"] == {"questions": 240, "prompts": 240 + int(chance_table["hit__vila"].sum())}
    assert f"{720 + hits:,} prompts for 720 question-member pairs, {hits:,} extra ({(720 + hits) / 720:.2f}x a single pass" in prompts_line(chance_summary)
    assert prompts_line(summarize(chance_table.drop([f"asks__{m}" for m in MEMBERS]), threshold=THRESHOLD)) is None
    # ranked by blind_score, then hits
    top = chance_summary["top_items"]
    keys = [(t["blind_score"], t["hits"]) for t in top]
    assert keys == sorted(keys, reverse=True) and top[0]["blind_score"] == pytest.approx(chance_table["blind_score"].max(), abs=1e-4)
    # members table: calibrated margin and error rates when the panel has them
    info = {"name": "p", "margin": 0.1, "models": {
        "vila": {"backend": "openai", "model": "vila", "method": "loglik", "shots": 0, "margin": 0.23, "false_hit_rate": 0.018, "recall": 0.76},
        "always_a": {"backend": "llamacpp", "model": "a", "method": "loglik", "shots": 2}}}
    s = summarize(chance_table, threshold=THRESHOLD, panel_info=info)
    assert s["members"]["vila"]["calibration"] == {"margin": 0.23, "margin_source": "member", "false_hit_rate": 0.018, "recall": 0.76, "calibrated": True}
    assert s["members"]["always_a"]["calibration"]["calibrated"] is False and s["members"]["always_a"]["calibration"]["margin"] == 0.1
    assert "calibration" not in s["members"]["noisy"]
    page = render_html(s)
    assert "margin 0.23<br>false hits 1.8 % on vision-needed controls<br>recall 76.0 % of MMLU control hits" in page
    assert "not calibrated<br><span class=muted>margin 0.1 (panel default)</span>" in page
    assert "id=prompts>" in page


def test_projection_with_concurrent_members():
    from curate.throughput import throughput_line

    # a runs in-process (its lane: 50 s); b and c are remote endpoints running at the same time as a
    members = {
        "a": {"throughput": {"asked": 100, "model_seconds": 50.0, "cached": 0}},
        "b": {"throughput": {"asked": 200, "model_seconds": 150.0, "cached": 7, "concurrent": True}},
        "c": {"throughput": {"asked": 60, "model_seconds": 30.0, "cached": 0, "concurrent": True}},
    }
    p = projection(members)
    assert p["samples_per_s"] == pytest.approx(360 / 230)  # one member's rate: answers over model seconds
    assert p["panel_samples_per_s"] == pytest.approx(360 / 150)  # the run's wall time is the slowest lane's 150 s
    # 22,401 items: a 22,401 / 2 = 11,200.5 s, b 22,401 / (4/3) = 16,800.75 s, c 11,200.5 s: the max, not the 39,201.75 s sum
    assert p["hours_this_panel"] == pytest.approx(16_800.75 / 3600) and p["concurrent_members"] == ["b", "c"]
    assert "this panel's 3 members (2 remote alongside 1 in turn): 4.7 h" in projection_line(p)
    members["a"]["throughput"]["concurrent"] = False
    members["c"]["throughput"]["concurrent"] = False  # in turn with a: 11,200.5 + 11,200.5 s > b's 16,800.75 s
    assert projection(members)["hours_this_panel"] == pytest.approx(22_401.0 / 3600)
    assert throughput_line("b", {**members["b"]["throughput"], "samples_per_s": 4 / 3}).endswith("7 from the cache, alongside the other members")


def test_members_concurrency_follows_the_backend(chance_table):
    report = {"threshold": THRESHOLD, "members": [
        {"name": "vila", "counted": True, "throughput": {"asked": 240, "model_seconds": 60.0, "cached": 0, "samples_per_s": 4.0}},
        {"name": "always_a", "counted": True, "throughput": {"asked": 240, "model_seconds": 120.0, "cached": 0, "samples_per_s": 2.0}},
    ]}
    info = {"models": {"vila": {"backend": "openai", "model": "v", "method": "loglik", "shots": 0},
                       "always_a": {"backend": "llamacpp", "model": "a", "method": "loglik", "shots": 0}}, "screen_report": report}
    s = summarize(chance_table, threshold=THRESHOLD, panel_info=info)
    assert s["members"]["vila"]["throughput"]["concurrent"] is True and s["members"]["always_a"]["throughput"]["concurrent"] is False
    assert s["projection"]["hours_this_panel"] == pytest.approx(22_401 / 2.0 / 3600)  # the slower lane, not 1/4 + 1/2 s per item
    page = render_html(s)
    assert "alongside the other members" in page and "id=projection>" in page


def test_end_to_end_audit_of_a_scripted_guessing_panel(table, tmp_path):
    """Real questions, three scripted members that guess (a seeded random letter per prompt): the
    screen's blind_chance accounts for their luck, so the audit finds nothing beyond chance."""
    from filters.panel import panel_from_dict

    items = conform(table.select("item_id", "source", "row", "orig_index", "question", "hint", "options", "answer", "source_category", "category"), ITEM_SCHEMA)
    Workspace(tmp_path / "ws", create=True).write("items", items)
    panel = panel_from_dict({
        "panel": {"name": "guessers", "rotations": 1, "control_size": 0, "max_hits": 0},
        "member": [{"name": f"g{i}", "backend": "scripted", "model": json.dumps({"seed": i, "default": {"random": True, "p": 0.9}})} for i in range(3)],
    })
    s = audit([tmp_path / "ws"], panel=panel, report_dir=tmp_path / "r", rules=False, progress=False, cache_path=tmp_path / "c.sqlite")
    assert s["n_items"] == 240 and s["blind_share"] > 0.3  # blind when any of 3 guessers hits: about half the items
    bc = s["beyond_chance"]
    assert bc["n"] == 240 and bc["chance"] == pytest.approx(s["blind_share"], abs=0.08)
    assert bc["lo"] == 0.0 and bc["hi"] < 0.2
    for m in ("g0", "g1", "g2"):
        assert s["members"][m]["beyond_chance"]["lo"] == 0.0 and s["members"][m]["asks"] == 240
    assert s["prompts"]["n_prompts"] == s["prompts"]["single_pass"] == 720
    assert "rules" not in s or not s["rules"]  # --no-rules: the screen ran none either
    assert "blind-answerable beyond chance" in (tmp_path / "r" / "report.html").read_text()


def test_end_to_end_audit_of_mmlu_with_a_scripted_knower(tmp_path):
    """MMLU control questions (text-answerable by design), one scripted member that knows 40 of 60
    and guesses the rest, the default adaptive rotation: beyond chance is clearly above 0, near the
    known share, and the report counts the rotations' extra prompts."""
    from filters.competence import control_items
    from filters.panel import panel_from_dict

    mmlu = [it for it in control_items() if len(it["options"]) == 4][:60]
    assert len(mmlu) == 60
    rows = [{"item_id": f"mmlu:{i}", "source": "MMLU", "row": i + 1, "question": it["question"], "options": it["options"],
             "answer": it["answer"]} for i, it in enumerate(mmlu)]
    Workspace(tmp_path / "ws", create=True).write("items", conform(pl.DataFrame(rows), ITEM_SCHEMA))
    known = [{"match": it["question"].strip(), "text": it["options"][LETTERS.index(it["answer"])], "p": 0.9} for it in mmlu[:40]]
    panel = panel_from_dict({
        "panel": {"name": "knower", "control_size": 0, "max_hits": 0},  # rotations: the default, adaptive
        "member": [{"name": "k", "backend": "scripted", "model": json.dumps({"seed": 3, "rules": known, "default": {"random": True, "p": 0.9}})}],
    })
    s = audit([tmp_path / "ws"], panel=panel, report_dir=tmp_path / "r", rules=False, progress=False, cache_path=tmp_path / "c.sqlite")
    bc = s["beyond_chance"]
    assert s["blind"]["k"] >= 40  # every known question survives its rotations
    # Clearly above 0. What it estimates: sum(p - e) / sum(1 - e). A known item is blind for sure and would be
    # blind by chance 1/4 of the time (the member's pick moves with its text through every rotation), a guessed one
    # about (1/4)^4: (40 - 40/4 - 20/256) / (60 - 40/4 - 20/256) = 0.60, which the interval must hold. (The screen's
    # chance under adaptive rotation is conservative when a member knows items, so the estimate sits a little lower.)
    assert 0.3 < bc["lo"] <= 0.60 <= bc["hi"] and bc["chance"] < bc["observed"] == pytest.approx(s["blind_share"], abs=1e-4)
    p = s["prompts"]
    assert p["single_pass"] == 60 and p["n_prompts"] >= 60 + 40 * 3  # each known question: 1 ask + 3 rotations
    assert p["n_prompts"] < p["full_rotation"] == 240  # adaptive: far fewer than every rotation of every question
    assert "prompts for 60 question-member pairs" in (tmp_path / "r" / "report.html").read_text()
