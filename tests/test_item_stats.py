"""Item statistics (issue #18) on real result files: MMStar's three public result files, VILA-8B/13B on
SEED-Bench and ScienceQA (tests/data/results, ../shared/data/text_pools)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from curate.difficulty import difficulty_bin
from curate.errors import UserError
from curate.item_stats import (
    ITEM_STATS_FILE,
    STAGE_COLUMNS,
    SuspectRule,
    answers_table,
    compute,
    correct_matrix,
    item_stats,
    judge_item,
    model_names,
    write_item_stats,
)
from curate.correlation import point_biserial
from curate.results import read_predictions, score
from curate.subsets import (
    keep_ranking_subset,
    kendall_tau,
    random_subset,
    ranking_agreement,
)
from curate.workspace import Workspace

DATA = Path(__file__).parent / "data"
MMSTAR = [DATA / "mmstar" / f for f in ("llava_next_yi_34b_MMStar.xlsx", "vila_13b_MMStar.xlsx", "vila_8b_MMStar.xlsx")]
N_FLIP = 200


@pytest.fixture(scope="module")
def mmstar_runs():
    return [read_predictions(p) for p in MMSTAR]


@pytest.fixture()
def mmstar_ws(tmp_path):
    from curate.ingest import ingest_to_workspace

    ingest_to_workspace([MMSTAR[1]], out=tmp_path / "ws")
    return Workspace(tmp_path / "ws")


# ---------------------------------------------------------------- pure pieces
def test_model_names_strip_the_common_benchmark_suffix():
    assert model_names(MMSTAR) == ["llava_next_yi_34b", "vila_13b", "vila_8b"]
    assert model_names(["a/x_MMStar.xlsx", "b/x_MMStar.xlsx"]) == ["x_MMStar", "x_MMStar_2"]
    assert model_names(["one.xlsx"]) == ["one"]


def test_point_biserial_matches_pearson_and_is_null_when_undefined():
    solved, acc = [True, False, True, False, True], [0.9, 0.3, 0.7, 0.5, 0.4]
    assert point_biserial(solved, acc) == pytest.approx(np.corrcoef(np.array(solved, float), acc)[0, 1])
    assert point_biserial([True, False], [0.9, 0.1]) is None  # fewer than 3 models
    assert point_biserial([False, False, False], [0.9, 0.5, 0.1]) is None  # nobody solved it
    assert point_biserial([True, False, True], [0.5, 0.5, 0.5]) is None  # equal models


def test_judge_item_rule_conditions():
    acc = {"best": 0.8, "mid": 0.6, "low": 0.4}
    rule = SuspectRule()
    hit = judge_item({"best": "C", "mid": "C", "low": "B"}, "B", acc, rule, 0.5)
    assert hit["suspect_key"] and hit["suspect_answer"] == "C"
    assert hit["suspect_evidence"].startswith("2 of 3 models chose C, the key is B, and the best model (best) chose C")
    # the best model sides with the key: a hard item, not a wrong key
    assert not judge_item({"best": "B", "mid": "C", "low": "C"}, "B", acc, rule, 0.5)["suspect_key"]
    # dissent spread over two options: no single answer has the support
    assert not judge_item({"best": "C", "mid": "D", "low": "A"}, "B", acc, rule, 0.5)["suspect_key"]
    # the confident threshold: a weighted majority is not enough when keys usually get more support
    assert not judge_item({"best": "C", "mid": "C", "low": "B"}, "B", acc, rule, 0.8)["suspect_key"]
    # too few models
    assert not judge_item({"best": "C", "mid": "C"}, "B", acc, SuspectRule(min_models=3), 0.5)["suspect_key"]
    # nine models: the 3 best must all agree
    acc9 = {f"m{i}": 0.9 - 0.05 * i for i in range(9)}
    votes = {m: "C" for m in acc9} | {"m7": "B", "m8": "B"}
    j = judge_item(votes, "B", acc9, rule, 0.5)
    assert j["suspect_evidence"].startswith("7 of 9 models chose C, the key is B, and the 3 best models all chose C")
    assert not judge_item(votes | {"m2": "B"}, "B", acc9, rule, 0.5)["suspect_key"]


def test_kendall_tau_and_ranking_agreement():
    assert kendall_tau([0.5, 0.4, 0.3], [0.6, 0.5, 0.1]) == pytest.approx(1.0)
    assert kendall_tau([0.5, 0.4, 0.3], [0.1, 0.5, 0.6]) == pytest.approx(-1.0)
    assert kendall_tau([0.5], [0.5]) is None and kendall_tau([0.5, 0.5], [0.1, 0.2]) is None
    # tau-b with ties, worked by hand: pairs (1,2) tie in x, (1,3) and (2,3) concordant, y has no ties
    assert kendall_tau([0.5, 0.5, 0.3], [0.6, 0.4, 0.1]) == pytest.approx(2 / math.sqrt(2 * 3))
    cm = pl.DataFrame({"item_id": ["a", "b", "c", "d"], "m1": [True, True, True, False], "m2": [True, False, False, False]})
    agree = ranking_agreement(cm, ["a", "d"])
    assert agree["accuracy_full"] == {"m1": 0.75, "m2": 0.25}
    assert agree["accuracy_subset"] == {"m1": 0.5, "m2": 0.5} and agree["tau"] is None
    assert agree["accuracy_diff"] == {"m1": -0.25, "m2": 0.25} and agree["max_abs_diff"] == 0.25


# ---------------------------------------------------------------- real MMStar results
def test_stats_on_mmstar_agree_with_metrics_scoring(mmstar_runs):
    stats, summary = compute(mmstar_runs, names=model_names(MMSTAR))
    assert stats.height == 1500 and set(stats["n_models"].to_list()) == {3}
    hits = [score(r)["hit"].cast(pl.Int32).to_numpy() for r in mmstar_runs]
    keys = score(mmstar_runs[0])["key"].to_list()
    solvers = dict(zip(keys, sum(hits).tolist()))
    assert dict(zip(stats["item_id"].to_list(), stats["n_solvers"].to_list())) == solvers
    accs = summary["models"]
    assert accs == {"llava_next_yi_34b": pytest.approx(0.5207, abs=1e-4), "vila_13b": pytest.approx(0.4427, abs=1e-4), "vila_8b": 0.42}
    assert summary["no_model_solves"]["n"] == sum(1 for v in solvers.values() if v == 0)
    assert summary["every_model_solves"]["n"] == sum(1 for v in solvers.values() if v == 3)
    # discriminability is defined exactly where solving varies (3 models of different accuracy)
    varied = stats.filter((pl.col("n_solvers") > 0) & (pl.col("n_solvers") < 3))
    assert varied["discriminability"].null_count() == 0 and stats["discriminability"].null_count() == 1500 - varied.height
    only_best = stats.filter(pl.col("model_answers").list.eval(pl.element().struct.field("solved")).list.first() & (pl.col("n_solvers") == 1))
    assert (only_best["discriminability"] > 0.9).all()  # only the best model solves it: maximally discriminating
    assert sum(h["n"] for h in summary["discriminability"]["histogram"]) == varied.height


def test_item_stats_command_writes_parquet_and_joins_stage(mmstar_ws, mmstar_runs):
    ws = mmstar_ws
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = write_item_stats(ws.root, mmstar_runs, names=model_names(MMSTAR))
    assert result["stage"] == "items" and result["matched"] == 1500 and result["unmatched"] == 0
    side = pl.read_parquet(ws.root / ITEM_STATS_FILE)
    assert side["item_id"].is_unique().all() and side["item_id"].str.starts_with("vila_13b_MMStar:").all()
    assert {"n_models", "n_solvers", "discriminability", "suspect_key", "suspect_evidence"} <= set(side.columns)
    assert side.schema["discriminability"] == pl.Float64 and side.schema["suspect_key"] == pl.Boolean
    table = ws.read("items")
    assert table.height == 1500 and all(c in table.columns for c in STAGE_COLUMNS)
    joined = table.select("item_id", "n_solvers", "suspect_key").join(side.select("item_id", "n_solvers", "suspect_key"), on="item_id")
    assert (joined["n_solvers"] == joined["n_solvers_right"]).all() and (joined["suspect_key"] == joined["suspect_key_right"]).all()
    assert table["difficulty"].to_list() == [difficulty_bin(s, 3) for s in table["n_solvers"].to_list()]
    assert "item_stats.parquet" in ws.manifest()["files"] and ws.verify() == []
    # running again replaces the columns instead of duplicating them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_item_stats(ws.root, mmstar_runs[:2])
    again = ws.read("items")
    assert again.columns.count("n_solvers") == 1 and set(again["n_models"].to_list()) == {2}
    assert not again["suspect_key"].any()  # 2 models < min_models


def test_cli_item_stats_json(mmstar_ws):
    from curate.cli import app

    res = CliRunner().invoke(app, ["item-stats", str(mmstar_ws.root), *map(str, MMSTAR), "--json", "--min-models", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n_items"] == 1500 and out["n_models"] == 3 and out["matched"] == 1500
    assert out["suspect_keys"]["n"] == int(pl.read_parquet(mmstar_ws.root / ITEM_STATS_FILE)["suspect_key"].sum())
    bad = CliRunner().invoke(app, ["item-stats", str(mmstar_ws.root), str(DATA / "results" / "README.md")])
    assert bad.exit_code != 0


def _flip(ws: Workspace, seed: int = 7) -> tuple[pl.DataFrame, set[str]]:
    """Give N_FLIP seeded items a wrong key (the next option, cyclically) in the workspace."""
    items = ws.read("items")
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(items["item_id"].to_numpy(), N_FLIP, replace=False).tolist())
    letters = "ABCDEFGHIJ"
    new = [letters[(letters.index(a) + 1) % len(o)] if i in flipped else a
           for i, a, o in zip(items["item_id"].to_list(), items["answer"].to_list(), items["options"].to_list())]
    ws.write("items", items.with_columns(pl.Series("answer", new)))
    return items, flipped


def test_planted_wrong_keys_are_flagged(mmstar_ws, mmstar_runs):
    """Flip 200 seeded keys of MMStar; flag >= 80 % of the flipped items >= 2 models had solved."""
    names = model_names(MMSTAR)
    before_items = mmstar_ws.read("items")
    before = item_stats(answers_table(mmstar_runs, before_items, names=names))
    _, flipped = _flip(mmstar_ws)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_item_stats(mmstar_ws.root, mmstar_runs, names=names)
    assert any(f"{N_FLIP} item(s) have another key in the result files than in the workspace" in str(w.message) for w in caught)
    after = pl.read_parquet(mmstar_ws.root / ITEM_STATS_FILE)
    solved2 = set(before.filter(pl.col("n_solvers") >= 2)["item_id"].to_list()) & flipped
    flagged = set(after.filter(pl.col("suspect_key"))["item_id"].to_list())
    caught = len(solved2 & flagged)
    assert len(solved2) >= 60, len(solved2)
    assert caught >= 0.8 * len(solved2), f"flagged {caught} of {len(solved2)} flipped items that >= 2 models solved"
    # the planted keys change nothing for the untouched items: their flags are the ones they had before
    untouched = set(after["item_id"].to_list()) - flipped
    was = set(before.filter(pl.col("suspect_key"))["item_id"].to_list()) & untouched
    now = flagged & untouched
    assert len(was ^ now) <= 0.01 * len(untouched), f"untouched flags before {len(was)}, after {len(now)}, changed {len(was ^ now)}"


@pytest.mark.xfail(strict=True, reason="3 models cannot tell a wrong key from a shared mistake: on MMStar 2 of LLaVA-Next-34B, "
                   "VILA-13B, VILA-8B (incl. the best) agree on one wrong answer for ~28 % of the items, all 3 for 13 %")
def test_planted_untouched_false_flags_under_5_percent(mmstar_ws, mmstar_runs):
    _, flipped = _flip(mmstar_ws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_item_stats(mmstar_ws.root, mmstar_runs, names=model_names(MMSTAR))
    after = pl.read_parquet(mmstar_ws.root / ITEM_STATS_FILE).filter(~pl.col("item_id").is_in(list(flipped)))
    n = int(after["suspect_key"].sum())
    assert n < 0.05 * after.height, f"flagged {n} of {after.height} untouched items"


# ---------------------------------------------------------------- keep-ranking
def test_keep_ranking_subset_keeps_accuracies_and_quotas(mmstar_runs):
    cm = correct_matrix(mmstar_runs, names=model_names(MMSTAR))
    cat = score(mmstar_runs[0]).select(pl.col("key").alias("item_id"), "category")
    cm = cm.join(cat, on="item_id")
    kr = keep_ranking_subset(cm, 375, strata="category")
    assert len(kr.item_ids) == 375 and kr.tau == pytest.approx(1.0)
    assert kr.max_abs_diff <= 1 / 375 + 1e-9, kr.accuracy_diff  # within one item per model
    per_cat = cm.filter(pl.col("item_id").is_in(kr.item_ids)).group_by("category").len()
    assert set(per_cat["len"].to_list()) <= {62, 63}  # 6 capabilities of 250, proportional
    rand = [ranking_agreement(cm, random_subset(cm, 375, seed=s))["max_abs_diff"] for s in range(5)]
    assert kr.max_abs_diff < min(rand), rand
    q = keep_ranking_subset(cm, 60, strata="category", quotas={c: 10 for c in cm["category"].unique().to_list()})
    assert len(q.item_ids) == 60 and set(cm.filter(pl.col("item_id").is_in(q.item_ids)).group_by("category").len()["len"]) == {10}
    # a model left out of the choice: its accuracy on the subset stays closer than on random subsets (the solve-pattern mix)
    held = [abs(ranking_agreement(cm, keep_ranking_subset(cm, 375, models=["llava_next_yi_34b", "vila_13b"], strata="category",
                                                         seed=s).item_ids, ["vila_8b"])["accuracy_diff"]["vila_8b"]) for s in range(5)]
    rand_held = [abs(ranking_agreement(cm, random_subset(cm, 375, seed=s), ["vila_8b"])["accuracy_diff"]["vila_8b"]) for s in range(5)]
    assert sum(held) < sum(rand_held), (held, rand_held)
    with pytest.raises(UserError):
        keep_ranking_subset(cm, 2000)


def test_two_model_pools_seed_and_scienceqa(shared_data):
    """VILA-13B (text_pools) and VILA-8B (tests/data/results) on SEED-Bench and ScienceQA: 2 models rank, never flag."""
    for pool, second in (("SEEDBench_IMG_vila13b.xlsx", "vila_8b_SEEDBench_IMG.xlsx"), ("ScienceQA_TEST_vila13b.xlsx", "vila_8b_ScienceQA_TEST.xlsx")):
        paths = [shared_data / "text_pools" / pool, DATA / "results" / second]
        runs = [read_predictions(p) for p in paths]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats, summary = compute(runs)
        assert any("only 2 model(s)" in str(w.message) for w in caught)
        assert stats.height == runs[0].table.height and not stats["suspect_key"].any()
        assert stats["discriminability"].null_count() == stats.height
        assert summary["n_models"] == 2 and 0.3 < summary["models"][model_names(paths)[0]] < 0.9


# ---------------------------------------------------------------- audit --results
def _screened(items: pl.DataFrame) -> pl.DataFrame:
    """MMStar's items as a screened table without a model run: one member that always answers A."""
    t = items.with_columns(answer__always_a=pl.lit("A"), raw__always_a=pl.lit(None, pl.String))
    t = t.with_columns(hit__always_a=pl.col("answer") == "A", prob__always_a=pl.lit(0.25))
    return t.with_columns(hits=pl.col("hit__always_a").cast(pl.Int32), n_members=pl.lit(1, pl.Int32),
                          blind=pl.lit(False), screen_reason=pl.lit(None, pl.String))


def test_audit_results_section_and_summary(mmstar_ws, tmp_path):
    from curate.audit import audit

    ws = Workspace(tmp_path / "screened", create=True)
    ws.write("screened", _screened(mmstar_ws.read("items").head(500)))
    summary = audit([ws.root], report_dir=tmp_path / "report", results=MMSTAR, rules=False)
    st = json.loads((tmp_path / "report" / "summary.json").read_text())["item_stats"]
    assert st == json.loads(json.dumps(summary["item_stats"], default=str))
    assert st["n_items"] == 500 and st["n_models"] == 3 and st["unmatched_items"] == 0
    assert any("1000 result key(s) name items not in the workspace" in w for w in st["warnings"])
    assert st["no_model_solves"]["n"] + st["every_model_solves"]["n"] < 500
    listed = st["suspect_items"]
    assert 0 < len(listed) <= 50 and st["suspect_keys"]["n"] >= len(listed)
    first = listed[0]
    assert set(first["answers"]) == {"llava_next_yi_34b", "vila_13b", "vila_8b"} and first["key"] != first["suspect_answer"]
    assert first["answers"]["llava_next_yi_34b"] == first["suspect_answer"]  # the best model sides with the dissent
    html = (tmp_path / "report" / "report.html").read_text()
    section = html[html.index("<h2 id=item-stats>"):]
    assert "<svg" in section[:section.index("suspect-table")] and "http://" not in section.split("<svg")[0]
    assert f"id=suspect-keys>{st['suspect_keys']['n']}<" in section and "every model solves" in section
    assert section.count("<tr>") == len(listed) + 1 and first["item_id"] in section
