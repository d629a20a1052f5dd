"""Copies of one question (``curate.groups``) and items without an image, on the real files.

The integrity rules of issue #12: an item without an image is flagged ``no_image`` and never
selected by ``balance`` unless allowed; MMBench's circular copies, translations on one image and
the same image + question twice share a ``group_id``; screening asks a group once and gives every
copy the verdict; balance never selects two items of a group; the audit counts questions.

MMBench circular copies are built from the real MMBench samples the way VLMEvalKit writes them:
copy k of index i has index i + k*10**6, its options rotated by k, and its image cell holds the
original index (a short cell naming the row whose image it shares).
"""

from __future__ import annotations

import csv
import math
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.audit_summary import summarize
from curate.balance import balance, balance_workspace, candidates, replace
from curate.groups import assign_groups, linked_groups, one_per_group
from curate.ingest import ingest, ingest_to_workspace
from curate.schema import LETTERS
from curate.workspace import Workspace
from filters.rules import RuleConfig, run_rules

#: MMBench_samples.tsv, read row by row: 14 CCBench (index 0-13, Chinese, one image each), then
#: blocks of four from index 14: two English questions, then their Chinese versions on the same
#: two images (14/16, 15/17, 18/20, ..., 51/53).
TRANSLATION_PAIRS = {(b + k, b + k + 2) for b in range(14, 54, 4) for k in (0, 1)}


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    csv.field_size_limit(10**9)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


def _n_options(row: dict) -> int:
    return sum(1 for c in "ABCD" if (row.get(c) or "").strip())


def write_circular(samples: Path, out: Path) -> Path:
    """MMBench_samples.tsv plus VLMEvalKit-style circular copies of its 20 English questions."""
    header, rows = _rows(samples)
    copies = []
    for r in rows:
        if r["lang"] != "en":
            continue
        n = _n_options(r)
        opts = [r[c] for c in "ABCD"[:n]]
        key = "ABCD".index(r["answer"])
        for k in range(1, n):
            rotated = opts[k:] + opts[:k]
            c = dict(r, index=str(int(r["index"]) + k * 1_000_000), image=r["index"], answer="ABCD"[(key - k) % n])
            c.update({L: rotated[j] for j, L in enumerate("ABCD"[:n])})
            copies.append(c)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, delimiter="\t", quoting=csv.QUOTE_ALL)
        w.writeheader()
        w.writerows(rows + copies)
    return out


@pytest.fixture(scope="module")
def samples(shared_data) -> Path:
    return shared_data / "vlmevalkit" / "MMBench_samples.tsv"


@pytest.fixture(scope="module")
def circular(samples, tmp_path_factory) -> pl.DataFrame:
    path = write_circular(samples, tmp_path_factory.mktemp("circ") / "MMBench_circular.tsv")
    return ingest(path)


def _index(item_id: str) -> int:
    return int(item_id.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------
# assign_groups on the real files
# ---------------------------------------------------------------------------------------------
def test_mmbench_english_and_chinese_copies_pair_exactly(samples):
    g = assign_groups(ingest(samples))
    assert g.height == 54 and g["group_id"].n_unique() == 34  # 20 pairs + 14 CCBench questions
    pairs = g.filter(pl.col("group_id") != pl.col("item_id")).select(
        pl.col("group_id").map_elements(_index, return_dtype=pl.Int64), pl.col("item_id").map_elements(_index, return_dtype=pl.Int64))
    assert set(pairs.rows()) == TRANSLATION_PAIRS
    assert set(g.filter(pl.col("group_reason").is_not_null())["group_reason"]) == {"translation"}
    # CCBench 6 and 7 ask the same question with the same options about two different paintings:
    # two questions, not copies.
    cc = g.filter(pl.col("item_id").is_in(["MMBench_samples:6", "MMBench_samples:7"]))
    assert cc["question"].n_unique() == 1 and cc["options"].n_unique() == 1
    assert cc["group_id"].to_list() == ["MMBench_samples:6", "MMBench_samples:7"] and cc["group_reason"].null_count() == 2


def test_circular_copies_join_their_question_and_its_translation(circular):
    g = assign_groups(circular)
    n_copies = circular.height - 54
    assert n_copies == 58  # 18 four-option and 2 three-option English questions (3 x 18 + 2 x 2)
    copies = g.filter(pl.col("item_id").map_elements(_index, return_dtype=pl.Int64) >= 1_000_000)
    # the image cell named the original row, so every copy carries the original's picture
    assert copies["n_images"].to_list() == [1] * n_copies
    assert (copies["group_id"].map_elements(_index, return_dtype=pl.Int64)
            == copies["item_id"].map_elements(_index, return_dtype=pl.Int64) % 1_000_000).all()
    assert g["group_id"].n_unique() == 34  # still 34 questions
    sizes = g.group_by("group_id").agg(pl.len(), pl.col("group_reason").first())
    assert sorted(sizes.filter(pl.col("len") > 1)["len"].to_list()) == [4] * 2 + [5] * 18  # original + copies + translation
    assert set(sizes.filter(pl.col("len") > 1)["group_reason"]) == {"circular_copy,translation"}


def test_ai2d_diagrams_with_many_questions_are_not_grouped(shared_data):
    ai2d = ingest(shared_data / "vlmevalkit" / "AI2D_TEST_sub309.tsv")
    seq = ai2d["images"].list.eval(pl.element().struct.field("sha256")).list.join(",")
    assert seq.n_unique() == 69  # 69 diagrams ...
    assert ai2d.filter(seq.is_duplicated()).height >= 296  # ... nearly every one asked about several times
    g = assign_groups(ai2d)
    assert g["group_id"].to_list() == g["item_id"].to_list() and g["group_reason"].null_count() == g.height


def test_same_image_and_question_across_sources(samples, tmp_path):
    twin = tmp_path / "MMBench_twin.tsv"
    twin.write_bytes(samples.read_bytes())
    g = assign_groups(ingest([samples, twin]))
    assert g.height == 108 and g["group_id"].n_unique() == 34
    twin_rows = g.filter(pl.col("source") == "MMBench_twin")
    assert twin_rows.filter(pl.col("group_id").str.starts_with("MMBench_samples:")).height == 54
    assert set(g["group_reason"].drop_nulls()) == {"same_image_question", "same_image_question,translation"}


def test_translation_needs_an_unambiguous_match(shared_data, samples):
    """A Chinese question on an AI2D diagram: with an answer letter only one English question on
    that diagram has, it is that question's translation; with a letter two English questions
    share, it could be either one's, so it joins neither."""
    ai2d = ingest(shared_data / "vlmevalkit" / "AI2D_TEST_sub309.tsv").filter(pl.col("options").list.len() == 4)
    cn = ingest(samples).filter(pl.col("item_id") == "MMBench_samples:36")  # "这把雨伞的大致形状是什么？", 4 options
    seq = pl.col("images").list.eval(pl.element().struct.field("sha256")).list.join(",")
    counts = ai2d.group_by(seq.alias("s"), "answer").len().sort("s", "answer")
    for n_english, linked in ((2, False), (1, True)):
        spot = counts.filter(pl.col("len") == n_english).row(0, named=True)
        host = ai2d.filter((seq == spot["s"]) & (pl.col("answer") == spot["answer"]))
        zh = cn.with_columns(pl.lit("zh:1").alias("item_id"), pl.lit(spot["answer"]).alias("answer"), host["images"].head(1))
        g = assign_groups(pl.concat([ai2d, zh], how="vertical_relaxed")).filter(pl.col("item_id") == "zh:1")
        assert (g["group_reason"][0] == "translation") is linked, spot
        assert g["group_id"][0] == (host["item_id"][0] if linked else "zh:1")


def test_imageless_items_are_flagged_and_never_grouped_by_text_alone(shared_data):
    mv = ingest(shared_data / "text_pools" / "MathVista_testmini.json")
    assert mv.height > 500 and (mv["n_images"] == 0).all()  # MathVista's JSON without its image folder
    # pids 107/663, 224/715, 308/661 repeat question, options and key, about other figures: not copies
    assert mv.filter(pl.col("orig_index").is_in(["107", "663"]))["question"].n_unique() == 1
    g = assign_groups(mv)
    assert (g["group_id"] == g["item_id"]).all() and g["group_reason"].is_null().all()
    assert "no_image" in RuleConfig().enabled and "no_image" not in RuleConfig().drop  # flag only by default
    ruled = run_rules(mv, RuleConfig(enabled=("malformed", "no_image"), drop=("malformed",)))
    assert ruled["no_image_flag"].all() and (ruled["no_image_score"] == 1.0).all()
    assert not ruled["rule_reason"].drop_nulls().str.contains("no_image").any()
    dropping = run_rules(mv, RuleConfig(enabled=("malformed", "no_image"), drop=("malformed", "no_image")))
    assert dropping["rule_drop"].all() and dropping["rule_reason"].str.contains("no_image: the item has no image", literal=True).all()
    ai2d = run_rules(ingest(shared_data / "vlmevalkit" / "AI2D_TEST_sub309.tsv"), RuleConfig(enabled=("no_image",), drop=()))
    assert not ai2d["no_image_flag"].any() and ai2d["no_image_reason"].null_count() == ai2d.height


def test_text_pool_circular_copies_and_speed(shared_data):
    """VLMEvalKit's MMBench dev result file (text only) holds CircularEval copies; SEED-Bench is
    the largest pool (14k rows) and must stay fast."""
    import time

    mmb = ingest(shared_data / "text_pools" / "MMBench_DEV_llava13b.xlsx")
    g = assign_groups(mmb)
    base = g["orig_index"].cast(pl.Int64) % 1_000_000
    assert (g["orig_index"].cast(pl.Int64) >= 1_000_000).sum() > 3000 and base.n_unique() > 1000
    # every copy is in its original's group, and a group never mixes two keys
    assert g.with_columns(base=base).group_by("base").agg(pl.col("group_id").n_unique())["group_id"].max() == 1
    assert g["group_reason"].null_count() == 0  # every MMBench dev question has circular copies
    keys = g.with_columns(k=pl.col("options").list.get(pl.col("answer").replace_strict(
        {c: i for i, c in enumerate(LETTERS)}, return_dtype=pl.Int64)))
    assert keys.group_by("group_id").agg(pl.col("k").n_unique())["k"].max() == 1
    seed = ingest(shared_data / "text_pools" / "SEEDBench_IMG_vila13b.xlsx")
    started = time.perf_counter()
    out = assign_groups(seed)
    assert time.perf_counter() - started < 5 and out.height == seed.height > 14_000


# ---------------------------------------------------------------------------------------------
# screening: one question asked once
# ---------------------------------------------------------------------------------------------
class LongestOption:
    """A real in-process backend of the ``filters.backends`` contract that reads the prompt
    (no weights): it prefers the longest option text, so its answer depends on the options'
    texts only, and every prompt it scores is counted."""

    prompts: list[str] = []

    def __init__(self, member, cache, **options):
        self.member = member
        self.identity = "test-longest-option-v1"

    def letter_logprobs(self, prompts, n_letters):
        out = []
        for p in prompts:
            LongestOption.prompts.append(p.text)
            opts = re.findall(r"^([A-J])\. (.*)$", p.body, re.M)
            # by text only (a tiny text hash breaks length ties), never by position
            logits = [3.0 * math.log(len(text) + 1) + (sum(map(ord, text)) % 997) / 1e4 for _, text in opts]
            logits += [-50.0] * (n_letters - len(opts))
            top = max(logits)
            z = top + math.log(sum(math.exp(x - top) for x in logits))
            out.append([x - z for x in logits[:n_letters]])
        return out

    def generate(self, prompts, max_new_tokens):
        raise AssertionError("the test panel scores letters")

    def close(self):
        pass


@pytest.fixture()
def stub_panel(monkeypatch):
    import filters.screen as screen_mod
    from filters.panel import panel_from_dict

    LongestOption.prompts = []
    monkeypatch.setattr(screen_mod, "open_backend", lambda member, cache, **kw: LongestOption(member, cache))
    return panel_from_dict({
        "panel": {"name": "longest", "max_hits": 0, "control_size": 0, "chance_corrected": False, "rotations": 1},
        "member": [{"name": "longest", "model": "package:smollm2-135m-instruct", "backend": "transformers", "shots": 0}],
    })


def test_screen_asks_each_group_once_and_copies_the_verdict(circular, stub_panel, tmp_path):
    from filters.screen import screen_ledger, screen_with_report

    cache = tmp_path / "cache.sqlite"
    out, report = screen_with_report(circular, stub_panel, cache_path=cache, progress=False, rules=False)
    reps = out.filter(pl.col("item_id") == pl.col("group_id"))
    assert report.n_items == out.height == 112 and report.n_questions == reps.height == 34
    # CCBench 6 and 7 are two questions whose text-only prompts are identical: 33 distinct prompts
    assert len(LongestOption.prompts) == len(set(LongestOption.prompts)) == 33
    assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 33
    assert out["screened_as"].to_list() == out["group_id"].to_list()
    detail = dict(zip(*screen_ledger(out).select("item_id", "detail")))
    assert "(answers of MMBench_circular:14: circular_copy,translation)" in detail["MMBench_circular:1000014"]
    assert "answers of" not in detail["MMBench_circular:14"]
    per_group = out.group_by("group_id").agg(pl.col("hit__longest", "prob__longest", "blind", "raw__longest").n_unique())
    assert (per_group.select(pl.exclude("group_id")).max_horizontal() == 1).all()

    # Each copy asked alone (no groups): the model picks the same option text, so the mapped
    # letter must be exactly what it answers when shown the copy itself.
    LongestOption.prompts = []
    alone, _ = screen_with_report(circular.with_columns(group_id=pl.col("item_id")), stub_panel,
                                  cache_path=tmp_path / "alone.sqlite", progress=False, rules=False)
    assert len(LongestOption.prompts) == 53 + 58  # every item asked, every rotated copy a prompt of its own
    both = out.join(alone.select("item_id", pl.col("answer__longest").alias("own")), on="item_id")
    circ = both.filter(pl.col("item_id").map_elements(_index, return_dtype=pl.Int64) >= 1_000_000)
    assert circ.height == 58 and (circ["answer__longest"] == circ["own"]).all()
    assert circ["answer__longest"].n_unique() > 1  # the letters really moved with the rotation
    trans = both.filter(pl.col("group_reason").str.contains("translation") & (pl.col("item_id") != pl.col("group_id"))
                        & (pl.col("item_id").map_elements(_index, return_dtype=pl.Int64) < 1_000_000))
    rep_answer = dict(zip(out["item_id"], out["answer__longest"]))
    assert trans.height == 20 and [rep_answer[g] for g in trans["group_id"]] == trans["answer__longest"].to_list()

    # Resume: everything comes from the cache, and the table is the same to the byte.
    LongestOption.prompts = []
    again, _ = screen_with_report(circular, stub_panel, cache_path=cache, progress=False, rules=False)
    assert LongestOption.prompts == []
    out.write_parquet(tmp_path / "a.parquet")
    again.write_parquet(tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_audit_counts_questions_not_copies(circular, stub_panel, tmp_path):
    from filters.screen import screen_with_report

    out, _ = screen_with_report(circular, stub_panel, cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    s = summarize(out, threshold=0, label="circular")
    questions = out.filter(pl.col("item_id") == pl.col("group_id"))
    assert (s["n_items"], s["n_questions"]) == (112, 34)
    assert (s["blind"]["n"], s["blind"]["k"]) == (34, int(questions["blind"].sum()))
    assert s["blind"]["k"] < int(out["blind"].sum())  # counting copies would inflate it
    assert s["members"]["longest"]["n"] == 34 and sum(h["items"] for h in s["hit_histogram"]) == 34
    assert len({t["item_id"] for t in s["top_items"]} & set(out.filter(pl.col("item_id") != pl.col("group_id"))["item_id"])) == 0
    # a table without group_id is grouped on the fly
    assert summarize(out.drop("group_id", "group_reason"), threshold=0)["n_questions"] == 34
    assert one_per_group(circular).height == 34


# ---------------------------------------------------------------------------------------------
# balance
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(circular, shared_data) -> pl.DataFrame:
    """Straight after ingest: MMBench questions with circular copies and translations, and
    MathVista's JSON (no images)."""
    mv = ingest(shared_data / "text_pools" / "MathVista_testmini.json")
    return pl.concat([circular, mv], how="vertical_relaxed")


def test_balance_never_selects_two_copies_nor_an_imageless_item(pool):
    cand = candidates(assign_groups(pool))
    per_cap = dict(cand.group_by("category").agg(pl.col("group_id").n_unique()).iter_rows())
    # 20 English questions with dimensions, each with its Chinese version and circular copies
    assert cand.height == 98 and sum(per_cap.values()) == 20
    assert "math" not in per_cap and candidates(pool, allow_no_image=True).filter(pl.col("category") == "math").height > 300
    # every question of each capability is wanted: a balancer that took copies would take them
    sel, _ = balance(pool, per_capability=per_cap, seed=0, source_cap=None)
    assert sel.height == 20 and sel["group_id"].is_unique().all() and (sel["n_images"] > 0).all()
    assert set(sel["group_id"]) == set(cand["group_id"])
    assert sel["group_reason"].to_list() == ["circular_copy,translation"] * 20


def test_balance_takes_imageless_items_only_when_allowed(pool):
    with pytest.raises(Exception, match="capability 'math' has no candidates"):
        balance(pool, per_capability={"math": 10}, seed=0)
    math = candidates(pool, allow_no_image=True).filter(pl.col("category") == "math")
    n_questions = one_per_group(math).height
    assert n_questions == math.height  # text alone never makes two imageless items one question
    sel, _ = balance(pool, per_capability={"math": n_questions}, seed=0, source_cap=None, allow_no_image=True)
    assert sel.height == n_questions and (sel["n_images"] == 0).all() and sel["group_id"].is_unique().all()


def test_replace_respects_groups(pool):
    ir = candidates(assign_groups(pool)).filter(pl.col("category") == "instance reasoning")
    n_questions = ir["group_id"].n_unique()
    assert ir.height > 4 * n_questions  # each question with its translation and circular copies
    unit = dict(zip(pool["item_id"], linked_groups(assign_groups(pool))))
    sel, _ = balance(pool, per_capability={"instance reasoning": n_questions - 1}, seed=0, source_cap=None)
    for victim in sel["item_id"]:
        rep = replace(sel, pool, victim, seed=0, source_cap=None)
        # the one question not selected comes in: never a copy of a selected one, nor of the victim
        assert unit[rep.added] not in {unit[i] for i in sel["item_id"]}
        assert rep.selected["group_id"].is_unique().all()
    full, _ = balance(pool, per_capability={"instance reasoning": n_questions}, seed=0, source_cap=None)
    with pytest.raises(Exception, match="no unselected candidate"):  # only copies are left
        replace(full, pool, full["item_id"][0], seed=0, source_cap=None)


def test_balance_workspace_ledger_and_cli_flag(shared_data, circular, tmp_path):
    mixed = tmp_path / "mixed"
    ingest_to_workspace([shared_data / "text_pools" / "MathVista_testmini.json"], mixed)
    Workspace(mixed).write("items", pl.concat([circular, Workspace(mixed).read("items")], how="vertical_relaxed"))
    res = balance_workspace(mixed, per_capability={"instance reasoning": 4}, seed=0, source_cap=None)
    led = Workspace(mixed).ledger().filter(pl.col("stage") == "balance")
    n_mathvista = Workspace(mixed).read("items").filter(pl.col("source") == "MathVista_testmini").height
    # MMBench with images: 54 items + 58 copies (CCBench's 14 got suggested dimensions)
    assert dict(led.group_by("reason").len().iter_rows()) == {"selected": 4, "not_selected": 108, "no_image": n_mathvista}
    assert res.selected["group_id"].is_unique().all()
    sizes = dict(assign_groups(circular).group_by("group_id").len().iter_rows())
    copies = led.filter(pl.col("reason") == "not_selected")["detail"]
    assert copies.str.contains("of its group is selected").sum() == sum(sizes[g] - 1 for g in res.selected["group_id"])

    ws = tmp_path / "ws"  # MathVista only, items with a dimension (no suggester needed)
    ingest_to_workspace([shared_data / "text_pools" / "MathVista_testmini.json"], ws)
    Workspace(ws).write("items", Workspace(ws).read("items").filter(pl.col("l2_category").is_not_null()))
    cli = [sys.executable, "-m", "curate.cli", "balance", str(ws), "--total", "12"]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "have no image (pass --allow-no-image" in refused.stderr
    allowed = subprocess.run([*cli, "--allow-no-image"], capture_output=True, text=True, timeout=300)
    # the flag gets through: now the pool is short of capabilities other than math/logic, not of images
    assert allowed.returncode == 2 and "has no candidates" in allowed.stderr and "no image" not in allowed.stderr
    res = balance_workspace(ws, per_capability={"math": 30}, seed=0, source_cap=None, allow_no_image=True)
    assert res.selected.height == 30 and res.selected["group_id"].is_unique().all()
    led = Workspace(ws).ledger().filter(pl.col("stage") == "balance")
    assert set(led["reason"]) == {"selected", "not_selected"}
    with pytest.raises(Exception, match="have no image"):
        balance_workspace(ws, per_capability={"math": 30}, seed=0)
