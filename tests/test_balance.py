"""The balancer: equal capability shares, even dimensions, source cap, difficulty mix,
near-duplicates, shortfall table, determinism, replacement, workspace + CLI behaviour."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.balance import balance, balance_workspace, candidates, replace, replace_in_workspace, waterfill
from curate.errors import UserError
from curate.schema import ITEM_SCHEMA, conform
from curate.taxonomy import default_taxonomy
from curate.workspace import Workspace

TAX = default_taxonomy()
DIMS = [d.name for d in TAX.dimensions]
CAPS = [c.name for c in TAX.capabilities]
LEVELS = ["easy", "moderate", "hard", "tough"]


def synth(n: int, *, seed: int = 0, sources: int = 4, dims: list[str] | None = None, difficulty: bool = True,
          dup_groups: int = 0) -> pl.DataFrame:
    """Synthetic candidates in the item schema, dimensions given as suggestions."""
    rng = np.random.default_rng(seed)
    dims = dims or DIMS
    data = {
        "item_id": [f"syn:{i}" for i in range(n)],
        "source": [f"bench{k}" for k in rng.integers(0, sources, n)],
        "source_file": ["synthetic.tsv"] * n,
        "row": list(range(1, n + 1)),
        "question": [f"question {i}?" for i in range(n)],
        "options": [["yes", "no"]] * n,
        "answer": ["A"] * n,
        # one distinct picture each (no bytes needed here): items without an image are never selected
        "images": [[{"bytes": None, "path": f"synthetic/{i}.png", "width": 8, "height": 8,
                     "sha256": hashlib.sha256(f"syn:{i}".encode()).hexdigest()}] for i in range(n)],
        "n_images": [1] * n,
        "suggested_l2_category": list(rng.choice(dims, n)),
        "suggested_prob": list(rng.random(n)),
    }
    if difficulty:
        data["difficulty"] = list(rng.choice(LEVELS, n))
    if dup_groups:
        data["near_duplicate_group"] = [f"g{k}" if k < dup_groups else None for k in rng.integers(0, dup_groups * 4, n)]
    df = pl.DataFrame(data)
    return conform(df, ITEM_SCHEMA)


def per(df: pl.DataFrame, *cols: str) -> dict:
    return {tuple(r[:-1]) if len(cols) > 1 else r[0]: r[-1] for r in df.group_by(*cols).len().iter_rows()}


def test_waterfill_is_as_even_as_availability_allows():
    assert waterfill(250, [10**6] * 3) == [84, 83, 83]
    assert waterfill(250, [30, 1000, 1000]) == [30, 110, 110]
    assert waterfill(10, [2, 2, 2]) == [2, 2, 2]


def test_equal_shares_even_dimensions_and_difficulty_mix():
    items = synth(6000, seed=1)
    sel, shortfall = balance(items, total=1500, seed=0, source_cap=None)
    assert sel.height == 1500 and shortfall.height == 0
    assert per(sel, "category") == {c: 250 for c in CAPS}
    dims = per(sel, "l2_category")
    for cap in TAX.capabilities:
        assert sorted(dims[d.name] for d in cap.dimensions) == [83, 83, 84]
    # 250 over 4 levels: 63/63/62/62 in every capability.
    for (cap, lvl), n in per(sel, "category", "difficulty").items():
        assert n in (62, 63), (cap, lvl, n)
    assert sel["item_id"].is_unique().all()
    assert set(sel["dimension_from"].unique()) == {"suggestion"}


def test_deterministic_for_a_seed_and_independent_of_row_order():
    items = synth(4000, seed=2)
    a, _ = balance(items, total=600, seed=7)
    b, _ = balance(items.sample(fraction=1.0, shuffle=True, seed=3), total=600, seed=7)
    c, _ = balance(items, total=600, seed=8)
    assert a["item_id"].to_list() == b["item_id"].to_list()
    assert a["item_id"].to_list() != c["item_id"].to_list()
    assert per(a, "l2_category") == per(c, "l2_category")  # other items, same balance


def test_near_duplicates_never_both_selected_even_across_cells():
    # Few candidates, many in duplicate groups whose members sit in different dimensions/sources:
    # the solver is tempted to take whole groups to fill the shares.
    items = synth(900, seed=4, dup_groups=60)
    sel, shortfall = balance(items, total=600, seed=0, source_cap=None)
    groups = sel["near_duplicate_group"].drop_nulls()
    assert groups.is_unique().all()
    straddling = items.filter(pl.col("near_duplicate_group").is_not_null()).group_by("near_duplicate_group").agg(
        pl.col("suggested_l2_category").n_unique().alias("dims"))
    assert straddling["dims"].max() > 1  # the test really has groups spanning cells
    # Available units per capability (one per group) bound what can be chosen.
    units = candidates(items).with_columns(pl.coalesce("near_duplicate_group", "item_id").alias("u"))
    avail = dict(units.group_by("category").agg(pl.col("u").n_unique()).iter_rows())
    for cap, n in per(sel, "category").items():
        assert n == min(100, avail[cap])


def test_source_cap_holds_when_possible_and_warns_when_not():
    items = synth(3000, seed=5, sources=4)
    sel, _ = balance(items, total=600, seed=0, source_cap=0.3)
    assert max(per(sel, "source").values()) <= 180
    # One dominant source: filling the capabilities needs it beyond the cap -> warning, still 600.
    skewed = items.with_columns(
        pl.when(pl.col("row") % 10 != 0).then(pl.lit("big")).otherwise(pl.col("source")).alias("source"))
    with pytest.warns(UserWarning, match="'big'.*above the cap of 180"):
        sel, _ = balance(skewed, total=600, seed=0, source_cap=0.3)
    assert sel.height == 600


def test_shortfall_table_when_a_dimension_is_thin_and_strict_raises():
    items = synth(3000, seed=6, difficulty=False)
    thin = items.filter((pl.col("suggested_l2_category") != "image emotion") | (pl.col("row") < 200))
    n_emotion = candidates(thin).filter(pl.col("l2_category") == "image emotion").height
    assert 0 < n_emotion < 83
    sel, shortfall = balance(thin, total=1500, seed=0, source_cap=None)
    assert per(sel, "category")["coarse perception"] == 250  # the other dimensions make up for it
    row = shortfall.filter(pl.col("dimension") == "image emotion").row(0, named=True)
    assert row == {"capability": "coarse perception", "dimension": "image emotion", "wanted": 83,
                   "available": n_emotion, "chosen": n_emotion}
    with pytest.raises(UserError, match="strict: .*image emotion: wanted 83"):
        balance(thin, total=1500, seed=0, strict=True)


def test_capability_total_short_is_a_row_with_null_dimension():
    items = synth(3000, seed=6, difficulty=False)
    thin = items.filter(~pl.col("suggested_l2_category").is_in(["geometry", "statistical reasoning"]) | (pl.col("row") < 100))
    sel, shortfall = balance(thin, total=1500, seed=0, source_cap=None)
    total_row = shortfall.filter(pl.col("capability") == "math", pl.col("dimension").is_null())
    assert total_row.height == 1
    assert total_row["chosen"][0] == per(sel, "category")["math"] < 250


def test_bad_requests_are_one_line_user_errors():
    items = synth(500, seed=8)
    with pytest.raises(UserError, match="asked for 1500 items but only 500"):
        balance(items, total=1500)
    no_math = items.filter(~pl.col("suggested_l2_category").is_in([d.name for d in TAX.capabilities[5].dimensions]))
    with pytest.raises(UserError, match="capability 'math' has no candidates"):
        balance(no_math, total=60)
    sel, _ = balance(no_math, per_capability={c: 10 for c in CAPS[:5]})  # leaving math out is fine
    assert sel.height == 50 and "math" not in sel["category"].to_list()
    with pytest.raises(UserError, match="difficulty.*unknown level 'impossible'"):
        balance(items.with_columns(pl.lit("impossible").alias("difficulty")), total=60)


def test_dropped_rows_are_never_selected_and_dimension_priority():
    items = synth(1200, seed=9, difficulty=False).with_columns(
        (pl.col("row") % 7 == 0).alias("blind"),
        pl.when(pl.col("row") % 11 == 0).then(True).alias("rule_drop"),
        pl.when(pl.col("row") % 13 == 0).then(False).otherwise(True).alias("review_kept"),
        pl.when(pl.col("row") % 5 == 0).then(pl.lit("object counting")).alias("review_dimension"),
        pl.when(pl.col("row") % 3 == 0).then(pl.lit("geometry")).alias("l2_category"),
    )
    cand = candidates(items)
    assert cand.filter(pl.col("row") % 7 == 0).height == 0
    assert cand.filter(pl.col("row") % 11 == 0).height == 0
    assert cand.filter(pl.col("row") % 13 == 0).height == 0
    r = cand.filter(pl.col("row") == 15).row(0, named=True)  # l2_category beats review_dimension
    assert (r["l2_category"], r["category"], r["dimension_from"]) == ("geometry", "math", "l2_category")
    r = cand.filter(pl.col("row") == 10).row(0, named=True)
    assert (r["l2_category"], r["dimension_from"]) == ("object counting", "review")
    sel, _ = balance(items, total=120, seed=0)
    assert sel.filter(pl.col("blind") | pl.col("rule_drop").fill_null(False) | ~pl.col("review_kept")).height == 0
    sel2, _ = balance(items, total=120, seed=0, exclude=sel["item_id"].head(5).to_list())
    assert not set(sel["item_id"].head(5)) & set(sel2["item_id"])


def test_replace_keeps_capability_and_difficulty_and_changes_one_item():
    items = synth(3000, seed=10, dup_groups=100)
    sel, _ = balance(items, total=600, seed=0)
    victim = sel.row(42, named=True)
    rep = replace(sel, items, victim["item_id"], seed=0)
    assert rep.removed == victim["item_id"] and rep.added not in sel["item_id"].to_list()
    new = rep.selected.row(42, named=True)
    assert new["item_id"] == rep.added
    assert (new["category"], new["difficulty"]) == (victim["category"], victim["difficulty"])
    assert new["l2_category"] == victim["l2_category"]  # a same-dimension candidate existed
    assert (rep.selected["item_id"] != sel["item_id"]).sum() == 1
    assert rep.selected["near_duplicate_group"].drop_nulls().is_unique().all()
    assert rep.added == replace(sel, items, victim["item_id"], seed=0).added  # deterministic
    with pytest.raises(UserError, match="not in the balanced selection"):
        replace(sel, items, "syn:no-such-item")
    # No unselected candidate of that capability and difficulty left -> clear error.
    same = candidates(items).filter((pl.col("category") == victim["category"]) & (pl.col("difficulty") == victim["difficulty"]))
    rest = items.filter(~pl.col("item_id").is_in(same["item_id"].to_list()) | pl.col("item_id").is_in(sel["item_id"].to_list()))
    with pytest.raises(UserError, match="no unselected candidate of capability"):
        replace(sel, rest, victim["item_id"])


def test_real_seed_bench_pool_with_suggested_dimensions(shared_data):
    """SEED-Bench's own text: hide half the categories, suggest them back, balance on them."""
    from curate.ingest import ingest
    from curate.suggest import suggest

    items = ingest(shared_data / "text_pools" / "SEEDBench_IMG_vila13b.xlsx")
    items = items.sample(n=5000, seed=0)
    truth = dict(zip(items["item_id"], items["l2_category"]))
    hidden = items.with_columns(
        pl.when(pl.col("row") % 2 == 0).then(None).otherwise(pl.col(c)).alias(c)
        for c in ("category", "l2_category", "source_category")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suggested = suggest(hidden, seed=0)
    # Labelled items are taken first within a cell, so balance the hidden half alone: every
    # dimension the balancer sees comes from the suggester.
    pool = suggested.filter(pl.col("suggested_by") == "model")
    assert pool.height > 2000
    # SEED-Bench covers 4 capabilities (logical reasoning only through its ~2% "Visual Reasoning").
    shares = {"coarse perception": 100, "fine-grained perception": 100, "instance reasoning": 100, "logical reasoning": 10}
    sel, shortfall = balance(pool, per_capability=shares, seed=0, source_cap=None, allow_no_image=True)  # a text pool
    assert per(sel, "category") == shares
    fine = per(sel.filter(pl.col("category") == "fine-grained perception"), "l2_category")
    assert sorted(fine.values()) == [33, 33, 34]
    by_model = sel.filter(pl.col("dimension_from") == "suggestion")
    assert by_model.height == sel.height
    agree = np.mean([truth[i] == d for i, d in zip(by_model["item_id"], by_model["l2_category"])])
    assert agree > 0.8, agree
    # Coarse perception on SEED-Bench is only "image scene and topic": the shortfall says so.
    assert set(shortfall.filter(pl.col("capability") == "coarse perception")["dimension"].drop_nulls()) == {
        "image style & quality", "image emotion"}


# ----------------------------------------------------------------------------------------
# workspace and CLI
# ----------------------------------------------------------------------------------------
@pytest.fixture()
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", synth(1500, seed=11))
    return ws


def test_balance_workspace_writes_selection_and_ledger(workspace):
    res = balance_workspace(workspace.root, total=300, seed=0)
    assert res.input_stage == "items"
    stored = workspace.read("balanced")
    assert stored["item_id"].to_list() == res.selected["item_id"].to_list()
    led = workspace.ledger().filter(pl.col("stage") == "balance")
    assert per(led, "reason") == {"selected": 300, "not_selected": 1200}
    victim = stored["item_id"][3]
    rep = replace_in_workspace(workspace.root, victim, seed=0)
    led = workspace.ledger().filter(pl.col("stage") == "balance")
    assert led.filter(pl.col("item_id") == victim)["reason"].to_list() == ["rejected"]
    assert led.filter(pl.col("item_id") == rep.added)["reason"].to_list() == ["replacement"]
    # A later full run keeps the rejected item out.
    res2 = balance_workspace(workspace.root, total=300, seed=0)
    assert victim not in res2.selected["item_id"].to_list()
    assert workspace.ledger().filter(pl.col("item_id") == victim, pl.col("stage") == "balance")["reason"].to_list() == ["rejected"]


def test_strict_shortfall_and_corrupt_stage_overwrite_nothing(workspace):
    balance_workspace(workspace.root, total=300, seed=0)
    before = workspace.path("balanced").read_bytes()
    ledger_before = workspace.ledger_path.read_bytes()
    with pytest.raises(UserError, match="strict"):
        balance_workspace(workspace.root, total=1450, seed=0, strict=True)
    assert workspace.path("balanced").read_bytes() == before
    workspace.path("screened").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="screened.parquet: not a readable parquet file"):
        balance_workspace(workspace.root, total=300)
    assert workspace.path("balanced").read_bytes() == before
    assert workspace.ledger_path.read_bytes() == ledger_before


def _cli(*args: str):
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_balance_prints_tables_and_fails_with_one_line(workspace):
    ok = _cli("balance", str(workspace.root), "--total", "120", "--seed", "3")
    assert ok.returncode == 0, ok.stderr
    assert "selected per capability" in ok.stdout and workspace.has("balanced")
    bad = _cli("balance", str(workspace.root), "--total", "99999")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "asked for 99999 items" in bad.stderr
    assert "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------------------
# item statistics (#18): suspect keys, discriminative tie-break, keep-ranking -- on MMStar's own files
# ----------------------------------------------------------------------------------------
MMSTAR = Path(__file__).parent / "data" / "mmstar"
MMSTAR_RESULTS = sorted(MMSTAR.glob("*_MMStar.xlsx"))  # LLaVA-Next-34B (the official submission), VILA-13B, VILA-8B


@pytest.fixture(scope="module")
def mmstar_stats(tmp_path_factory) -> pl.DataFrame:
    """MMStar's 1,500 items (text only) with item-stats columns computed from its 3 public result files."""
    from curate.ingest import ingest
    from curate.item_stats import compute, join_stats
    from curate.results import read_predictions

    ws = tmp_path_factory.mktemp("star") / "ws"
    ingest([MMSTAR / "llava_next_yi_34b_MMStar.xlsx"], out=ws)
    items = Workspace(ws).read("items")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats, _ = compute([read_predictions(p) for p in MMSTAR_RESULTS], items)
    return join_stats(items, stats)


def _star_workspace(root, table: pl.DataFrame) -> Workspace:
    ws = Workspace(root, create=True)
    ws.write("items", table)
    return ws


def _digest(ws: Workspace) -> str:
    """What balance wrote, in a form stable across polars versions: columns, picks, ledger rows."""
    sel = ws.read("balanced")
    led = ws.ledger().filter(pl.col("stage") == "balance").sort("item_id")
    h = hashlib.sha256(json.dumps(sel.columns).encode())
    h.update(json.dumps(sel.select("item_id", "category", "l2_category", "dimension_from").rows()).encode())
    h.update(json.dumps(led.select("item_id", "status", "reason", "detail").rows()).encode())
    return h.hexdigest()[:16]


def test_without_item_stats_columns_balance_writes_what_it_wrote_before(workspace, tmp_path):
    """Golden digests (and, on the same polars, balanced.parquet's sha256) written by the balancer
    before #18 (commit 338df5e) on the same inputs: no item-stats column, no change at all."""
    from curate.cli.build import balance_summary
    from curate.ingest import ingest

    res = balance_workspace(workspace.root, total=300, seed=0)
    assert res.suspect_excluded is None and res.ranking is None
    assert set(balance_summary(res, workspace.root)) == {
        "selected", "input_stage", "output", "suggested", "by_dimension", "shortfall", "warnings"}
    star = tmp_path / "star"
    ingest([MMSTAR / "llava_next_yi_34b_MMStar.xlsx"], out=star)
    balance_workspace(star, total=300, seed=0, allow_no_image=True, source_cap=None)
    assert (_digest(workspace), _digest(Workspace(star))) == ("9f29db89761d9ce3", "229836051f055d03")
    # Byte for byte: the same inputs and seed write the same file (a golden sha would also pin the checkout's
    # path, which source_file holds, and the parquet writer's version).
    first = Workspace(star).path("balanced").read_bytes()
    balance_workspace(star, total=300, seed=0, allow_no_image=True, source_cap=None)
    assert Workspace(star).path("balanced").read_bytes() == first


def test_suspect_keys_are_left_out_unless_a_reviewer_kept_them_with_a_ledger_reason(mmstar_stats, tmp_path):
    from curate.cli.build import balance_summary

    table = mmstar_stats
    suspect = table.filter(pl.col("suspect_key"))
    assert 300 < suspect.height < 600  # 3 models, two of them VILA: about a quarter flagged (item_stats docstring)
    # A reviewer kept the key of every third suspect item (seeded), marked one wrong, left the rest.
    ids = suspect["item_id"].to_list()
    kept, wrong = set(ids[::3]), {ids[1]}
    reviewed = table.with_columns(
        pl.when(pl.col("item_id").is_in(list(kept))).then(True)
        .when(pl.col("item_id").is_in(list(wrong))).then(False).otherwise(None).alias("review_key_confirmed"),
        (~pl.col("item_id").is_in(list(wrong))).alias("review_kept"),  # the "key wrong" verdict drops it
    )
    ws = _star_workspace(tmp_path / "ws", reviewed)
    pool = candidates(reviewed, allow_no_image=True)
    assert set(pool.filter(pl.col("suspect_key"))["item_id"]) == kept  # only cleared suspects are candidates
    res = balance_workspace(ws.root, total=600, seed=0, allow_no_image=True, source_cap=None)
    sel = res.selected
    assert sel.filter(pl.col("suspect_key") & ~pl.col("review_key_confirmed").fill_null(False)).height == 0
    assert sel.filter(pl.col("suspect_key")).height > 0  # cleared ones compete like any item
    led = ws.ledger().filter(pl.col("stage") == "balance")
    assert led["item_id"].is_unique().all()  # one reason per item, nothing silently lost
    uncleared = set(ids) - kept - wrong
    sus_rows = led.filter(pl.col("reason") == "suspect_key")
    assert set(sus_rows["item_id"]) == uncleared and res.suspect_excluded == len(uncleared)
    row = sus_rows.row(0, named=True)
    evidence = suspect.filter(pl.col("item_id") == row["item_id"])["suspect_evidence"].item()
    assert row["status"] == "dropped" and evidence in row["detail"] and "no reviewer cleared it" in row["detail"]
    assert "the key is" in evidence  # item-stats' own sentence reaches the ledger
    assert balance_summary(res, ws.root)["suspect_key_excluded"] == len(uncleared)
    # Without any review the reason says so, and every flagged item is out.
    ws2 = _star_workspace(tmp_path / "ws2", table)
    res2 = balance_workspace(ws2.root, total=300, seed=0, allow_no_image=True, source_cap=None)
    assert res2.suspect_excluded == suspect.height and not res2.selected["suspect_key"].any()
    assert "not reviewed" in ws2.ledger().filter(pl.col("reason") == "suspect_key")["detail"][0]
    # --replace never swaps a suspect item in either.
    victim = res2.selected.filter(pl.col("difficulty") == "easy")["item_id"][0]  # easy items are plentiful
    rep = replace(res2.selected, table, victim, seed=0, allow_no_image=True, source_cap=None)
    assert not table.filter(pl.col("item_id") == rep.added)["suspect_key"].item()


def _cell_counts(df: pl.DataFrame) -> dict:
    return per(df, "category", "l2_category", "source", "difficulty")


def test_discriminative_tie_break_fills_each_cell_with_its_best_items_and_never_moves_a_quota(mmstar_stats):
    table = mmstar_stats
    assert table["discriminability"].null_count() < table.height  # 3 models: defined where they split
    plain, short_plain = balance(table, total=300, seed=0, allow_no_image=True, source_cap=None, prefer_discriminative=False)
    disc, short_disc = balance(table, total=300, seed=0, allow_no_image=True, source_cap=None)
    assert _cell_counts(disc) == _cell_counts(plain) and short_disc.equals(short_plain)
    assert per(disc, "category") == {c: 50 for c in CAPS}
    score = pl.col("discriminability").fill_null(-2.0)  # undefined ranks last
    assert disc.select(score.mean()).item() > plain.select(score.mean()).item() + 0.1
    # Within every cell, no left-out candidate beats a selected one (the documented order).
    cand = candidates(table, allow_no_image=True).with_columns(score.alias("d"), pl.col("item_id").is_in(disc["item_id"].implode()).alias("chosen"))
    cells = cand.group_by("l2_category", "source", "difficulty").agg(
        pl.col("d").filter(pl.col("chosen")).min().alias("worst_in"), pl.col("d").filter(~pl.col("chosen")).max().alias("best_out"))
    bad = cells.filter(pl.col("worst_in").is_not_null() & pl.col("best_out").is_not_null() & (pl.col("best_out") > pl.col("worst_in")))
    assert bad.height == 0, bad
    # Deterministic and independent of row order; the seed still breaks the remaining ties.
    again, _ = balance(table.sample(fraction=1.0, shuffle=True, seed=5), total=300, seed=0, allow_no_image=True, source_cap=None)
    assert again["item_id"].to_list() == disc["item_id"].to_list()


def test_keep_ranking_on_real_result_files_reports_tau_and_beats_random_subsets(mmstar_stats, tmp_path):
    """MMStar's 3 public result files. With 3 models Kendall's tau takes few values and random
    subsets of 120 already rank these models right most of the time (mean tau 0.96 over 20 seeds),
    so the test asks for tau 1 *and* strictly above the random mean, and for per-model accuracy
    errors below the random median."""
    from rich.console import Console

    from curate.balance import pool_difficulty_mix
    from curate.cli.build import balance_summary, print_balance
    from curate.subsets import random_subset, ranking_agreement

    ws = _star_workspace(tmp_path / "ws", mmstar_stats)
    res = balance_workspace(ws.root, total=120, seed=0, allow_no_image=True, source_cap=None,
                            keep_ranking=MMSTAR_RESULTS)
    r = res.ranking
    assert set(r["accuracy_diff"]) == {"llava_next_yi_34b", "vila_13b", "vila_8b"}
    pool = candidates(mmstar_stats, allow_no_image=True)
    assert r["full_set"] == pool.height and r["selected_with_results"] == 120  # suspect keys are not the full set
    assert r["tau"] == 1.0
    # The quotas are those of plain balance with the pool's difficulty mix (the baseline): capability 20 each.
    assert per(res.selected, "category") == {c: 20 for c in CAPS}
    base, _ = balance(mmstar_stats, total=120, seed=0, allow_no_image=True, source_cap=None,
                      difficulty_mix=pool_difficulty_mix(pool["difficulty"]))
    assert _cell_counts(res.selected) == _cell_counts(base)
    correct = _correct(pool, ws.root)
    assert r["baseline"]["max_abs_diff"] == ranking_agreement(correct, base["item_id"])["max_abs_diff"]
    rand = [ranking_agreement(correct, random_subset(correct, 120, seed=s)) for s in range(20)]
    assert r["tau"] > np.mean([x["tau"] or 0.0 for x in rand])
    assert r["max_abs_diff"] < np.median([x["max_abs_diff"] for x in rand])
    assert r["max_abs_diff"] < r["baseline"]["max_abs_diff"]
    # Reported in the JSON and on the console.
    assert balance_summary(res, ws.root)["ranking"]["tau"] == 1.0
    con = Console(record=True, width=160)
    print_balance(res, ws.root, con)
    text = con.export_text()
    assert "Kendall's tau 1.000" in text and "vila_8b" in text


def _correct(pool: pl.DataFrame, ws_root) -> pl.DataFrame:
    from curate.item_stats import correct_matrix_from_files

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every result row names an item of the workspace
        full = correct_matrix_from_files(MMSTAR_RESULTS, Workspace(ws_root).read("items"))
    return full.filter(pl.col("item_id").is_in(pool["item_id"].implode()))


# -- quotas and caps worked by hand (issue #15) --------------------------------------------------------
def test_equal_shares_give_the_remainder_to_the_first_capabilities():
    from curate.balance import _shares

    caps = ["a", "b", "c", "d", "e", "f"]
    # 1000 = 6 * 166 + 4: the first four get one more (bug caught: a dropped remainder gives 996)
    assert _shares(1000, caps, None) == {"a": 167, "b": 167, "c": 167, "d": 167, "e": 166, "f": 166}
    assert _shares(1500, caps, None) == dict.fromkeys(caps, 250) and _shares(0, caps, None) == dict.fromkeys(caps, 0)
    assert _shares(5, caps, None) == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 0}
    assert _shares(999, caps, 40) == dict.fromkeys(caps, 40)  # a fixed count per capability ignores the total
    assert _shares(0, caps, {"b": 7, "d": 2.0}) == {"a": 0, "b": 7, "c": 0, "d": 2, "e": 0, "f": 0}
    with pytest.raises(UserError, match="total=-1"):
        _shares(-1, caps, None)
    with pytest.raises(UserError, match="'z'"):
        _shares(10, caps, {"a": 1, "z": 2})


def test_source_cap_is_a_fraction_of_the_total_or_a_count():
    from curate.balance import _source_cap

    assert _source_cap(None, 600) is None
    assert _source_cap(0.3, 600) == 180 and _source_cap(0.25, 1500) == 375
    assert _source_cap(0.001, 600) == 1  # 0.6 rounds up: never a cap of 0
    assert _source_cap(1.0, 600) == 600 and _source_cap(1, 600) == 1  # 1.0 is "all of it", 1 is one item
    assert _source_cap(5, 600) == 5 and _source_cap(2.5, 600) == 2
    for bad in (0, 0.0, -0.5, -3):
        with pytest.raises(UserError, match="source_cap"):
            _source_cap(bad, 600)


def test_waterfill_never_exceeds_a_bin_and_meets_every_feasible_target():
    assert waterfill(7, [0, 5, 5]) == [0, 4, 3]  # an empty bin takes nothing
    assert waterfill(1, [0, 5]) == [0, 1]  # ... not even a single leftover unit
    assert waterfill(3, [1, 1, 1, 1]) == [1, 1, 1, 0]  # single leftovers go to the earliest bins
    assert waterfill(20, [3, 4, 5]) == [3, 4, 5]  # infeasible: every bin full, no more
    assert waterfill(11, [2, 9, 9]) == [2, 5, 4]  # 3 each, the first capped at 2 (8 given); then 1 each; the last to bin 1
    assert waterfill(0, [5, 5]) == [0, 0] and waterfill(5, []) == []
