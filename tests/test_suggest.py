"""Dimension suggestions on real text pools (SEED-Bench, ScienceQA): labels, accuracy, calibration."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from curate.errors import UserError
from curate.suggest import cross_validate_suggester, known_dimensions, suggest, suggest_workspace
from curate.workspace import Workspace


@pytest.fixture(scope="module")
def pools(shared_data) -> pl.DataFrame:
    """3,000 SEED-Bench + all ScienceQA test questions, as ingested (categories mapped by the taxonomy)."""
    from curate.ingest import ingest

    tp = shared_data / "text_pools"
    seed = ingest(tp / "SEEDBench_IMG_vila13b.xlsx").sample(n=3000, seed=0)
    sqa = ingest(tp / "ScienceQA_TEST_vila13b.xlsx")
    return pl.concat([seed, sqa], how="vertical")


def _hide(df: pl.DataFrame, mask: pl.Expr) -> pl.DataFrame:
    return df.with_columns(
        pl.when(mask).then(None).otherwise(pl.col(c)).alias(c) for c in ("category", "l2_category", "source_category", "source_l2_category")
    )


def test_known_dimensions_priority_review_then_l2_then_mapping():
    df = pl.DataFrame({
        "item_id": ["a", "b", "c", "d"],
        "source": ["SEEDBench_IMG", "SEEDBench_IMG", "SEEDBench_IMG", "SEEDBench_IMG"],
        "source_category": ["Instances Counting", "Instances Counting", "Instances Counting", "Unmapped thing"],
        "source_l2_category": [None, None, None, None],
        "l2_category": ["geometry", "geometry", None, None],
        "review_dimension": ["image emotion", None, None, None],
    })
    k = known_dimensions(df)
    assert k["known_dimension"].to_list() == ["image emotion", "geometry", "object counting", None]
    assert k["known_from"].to_list() == ["review", "l2_category", "mapping", None]


def test_suggestions_recover_hidden_dimensions_and_are_calibrated(pools):
    truth = dict(zip(pools["item_id"], pools["l2_category"]))
    labelled = pools.filter(pl.col("l2_category").is_not_null())
    hidden = _hide(labelled, pl.col("row") % 3 == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = suggest(hidden, seed=0)
    assert out.height == hidden.height
    known = out.filter(pl.col("suggested_by") != "model")
    assert (known["suggested_prob"] == 1.0).all()
    assert (known["suggested_l2_category"] == known["l2_category"]).all()
    model = out.filter(pl.col("suggested_by") == "model")
    assert model.height == hidden.filter(pl.col("row") % 3 == 0).height
    ok = np.array([truth[i] == d for i, d in zip(model["item_id"], model["suggested_l2_category"])])
    assert ok.mean() > 0.8, ok.mean()
    # Capability follows the dimension (taxonomy), probabilities are probabilities.
    caps = dict(zip(pools["item_id"], pools["category"]))
    assert np.mean([caps[i] == c for i, c in zip(model["item_id"], model["suggested_category"])]) >= ok.mean()
    p = model["suggested_prob"].to_numpy()
    assert ((p > 0) & (p <= 1)).all()
    # Calibrated: confident suggestions are right more often than unsure ones, and the
    # confident ones are about as accurate as they claim.
    hi, lo = p >= 0.8, p < 0.6
    assert hi.sum() > 100 and lo.sum() > 20
    assert ok[hi].mean() > ok[lo].mean() + 0.2
    assert abs(ok[hi].mean() - p[hi].mean()) < 0.1


def test_same_seed_same_suggestions(pools):
    small = _hide(pools.sample(n=1500, seed=1), pl.col("row") % 2 == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = suggest(small, seed=3), suggest(small, seed=3)
    assert a.select("suggested_l2_category", "suggested_prob").equals(b.select("suggested_l2_category", "suggested_prob"))


def test_cross_validated_accuracy_on_real_pools(pools):
    small = pools.sample(n=2500, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = cross_validate_suggester(small, folds=3, use_category=False)
        with_cat = cross_validate_suggester(small, folds=3, use_category=True)
    assert text.n_items == small.filter(pl.col("l2_category").is_not_null()).height
    assert 0.75 < text.accuracy < 1.0  # from question, options and source name only
    assert with_cat.accuracy > 0.98  # the category the labels were mapped from gives them away
    assert "3-fold CV" in str(text)
    assert set(text.per_dimension) >= {"recognition", "object counting", "biology & chemistry & physics"}


def test_too_few_labels_is_a_user_error():
    df = pl.DataFrame({
        "item_id": ["a", "b", "c"], "source": ["x"] * 3, "question": ["q1", "q2", "q3"],
        "options": [["1", "2"]] * 3, "l2_category": ["geometry", None, None],
    })
    with pytest.raises(UserError, match="need labelled items of at least 2 dimensions"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suggest(df)


def test_suggest_workspace_adds_columns_to_the_newest_stage(tmp_path, pools):
    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", _hide(pools.sample(n=1200, seed=4), pl.col("row") % 4 == 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage, df = suggest_workspace(ws.root)
    assert stage == "items"
    stored = ws.read("items")
    assert {"suggested_l2_category", "suggested_category", "suggested_prob", "suggested_by"} <= set(stored.columns)
    assert stored["suggested_l2_category"].null_count() == 0
    assert stored.height == 1200


def test_cli_suggest(tmp_path, pools):
    import subprocess
    import sys

    ws = Workspace(tmp_path / "ws", create=True)
    ws.write("items", _hide(pools.sample(n=800, seed=5), pl.col("row") % 4 == 0))
    r = subprocess.run([sys.executable, "-m", "curate.cli", "suggest", str(ws.root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "items.parquet: suggestions added to 800 items:" in " ".join(r.stdout.split())
    assert ws.read("items")["suggested_by"].value_counts().height >= 2
    r = subprocess.run([sys.executable, "-m", "curate.cli", "suggest", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no such workspace folder" in r.stderr
