"""Suggest MMStar's dimension for items whose source category does not map to one.

Items arrive with their source's own category ("Instances Counting", "Genes to traits", or
nothing at all), not MMStar's dimension. Where ``data/taxonomy.toml`` maps the source
category, or a reviewer labelled the item, the dimension is known; those items train a
small text classifier that suggests a dimension, with a probability, for the rest. The
suggestion pre-fills the reviewer's choice in Label Studio and lets the balancer work
before (or without) review.

Why TF-IDF + a calibrated linear model: it trains in seconds on a CPU, it is deterministic,
and calibration (``CalibratedClassifierCV``) makes ``suggested_prob`` mean what it says, so
a reviewer or a threshold can trust it. Measured on SEED-Bench + ScienceQA (15,776 items
whose category maps, 9 dimensions, 5-fold CV): 0.872 dimension / 0.884 capability accuracy
from question, options and source name alone (``cross_validate_suggester``).

An item is scored with its source category as a feature only when labelled items share
that category; otherwise (category missing or never labelled) by a second model trained
without categories -- a model that always saw a category is confidently wrong without one.

Columns added: ``suggested_l2_category`` (dimension), ``suggested_category`` (capability),
``suggested_prob`` (probability of the suggestion) and ``suggested_by`` -- ``review``,
``l2_category`` or ``mapping`` when the dimension was already known (probability 1.0), else
``model``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from curate.errors import UserError
from curate.taxonomy import Taxonomy, default_taxonomy
from curate.stages import SUGGEST_COLUMNS  # the registry names what suggest adds
from curate.workspace import workspace_command

MIN_PER_CLASS = 3  # CalibratedClassifierCV's internal 3-fold split needs 3 examples per class


@dataclass(frozen=True)
class SuggestScore:
    """Cross-validated quality of the suggester on items whose dimension is known."""

    accuracy: float  # dimension (18-way) accuracy
    capability_accuracy: float  # capability (6-way) accuracy of the suggested dimension
    n_items: int
    n_dimensions: int
    folds: int
    use_category: bool
    per_dimension: dict[str, float] = field(default_factory=dict)  # recall per true dimension
    hold_out_categories: bool = False

    def __str__(self) -> str:
        feats = "question + options + source + source category" if self.use_category else "question + options + source name"
        if self.hold_out_categories:
            feats += ", unseen source categories"
        return (
            f"{self.accuracy:.3f} dimension accuracy, {self.capability_accuracy:.3f} capability accuracy "
            f"({self.folds}-fold CV, {self.n_items} items, {self.n_dimensions} dimensions, {feats})"
        )


# --------------------------------------------------------------------------------------
# Known labels and features
# --------------------------------------------------------------------------------------
def known_dimensions(items: pl.DataFrame, *, taxonomy: Taxonomy | None = None) -> pl.DataFrame:
    """``item_id``, ``known_dimension`` and ``known_from`` for every item (nulls when unknown).

    Priority: a reviewer's ``review_dimension``, then an ``l2_category`` that is one of
    MMStar's strings, then the taxonomy mapping of the source's own categories.
    """
    tax = taxonomy or default_taxonomy()
    dims = {d.name for d in tax.dimensions}
    n = items.height

    def col(name: str) -> list:
        return items[name].cast(pl.String).to_list() if name in items.columns else [None] * n

    review, l2 = col("review_dimension"), col("l2_category")
    source, cat, l2src = col("source"), col("source_category"), col("source_l2_category")
    dim_out, frm = [], []
    for i in range(n):
        r = (review[i] or "").strip().lower()
        m = (l2[i] or "").strip().lower()
        if r in dims:
            dim_out.append(r), frm.append("review")
        elif m in dims:
            dim_out.append(m), frm.append("l2_category")
        else:
            mapped = tax.map_category(source[i] or "", l2src[i], cat[i])
            dim_out.append(mapped), frm.append("mapping" if mapped else None)
    return pl.DataFrame(
        {"item_id": items["item_id"], "known_dimension": dim_out, "known_from": frm},
        schema={"item_id": pl.String, "known_dimension": pl.String, "known_from": pl.String},
    )


def _texts(items: pl.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(question + hint + options, source, source categories) per item."""
    n = items.height

    def col(name: str) -> list:
        return items[name].cast(pl.String).fill_null("").to_list() if name in items.columns else [""] * n

    q, h = col("question"), col("hint")
    opts = items["options"].to_list() if "options" in items.columns else [[]] * n
    src, cat, l2 = col("source"), col("source_category"), col("source_l2_category")
    text = [f"{q[i]} {h[i]} " + " ".join(x for x in (opts[i] or []) if x) for i in range(n)]
    cats = [f"{cat[i]} | {l2[i]}" for i in range(n)]
    return text, src, cats


def _split_bar(s: str) -> list[str]:
    return [t.strip() for t in s.split("|") if t.strip()]


def _pipeline(use_category: bool, seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    # Whole names as tokens: "Instances Counting" is one feature, not two words.
    parts = [("text", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000), 0),
             ("source", TfidfVectorizer(tokenizer=_split_bar, token_pattern=None, lowercase=True), 1)]
    if use_category:
        parts.append(("category", TfidfVectorizer(tokenizer=_split_bar, token_pattern=None, lowercase=True), 2))
    features = ColumnTransformer(parts)
    svm = LinearSVC(C=0.5, class_weight="balanced", random_state=seed, max_iter=5000)  # default 1000 warns on SEED
    return Pipeline([("features", features), ("clf", CalibratedClassifierCV(svm, method="sigmoid", cv=3))])


def _matrix(items: pl.DataFrame) -> np.ndarray:
    text, src, cats = _texts(items)
    return np.array(list(zip(text, src, cats)), dtype=object).reshape(len(text), 3)


def _category_keys(items: pl.DataFrame) -> list[tuple]:
    def col(name: str) -> list:
        return items[name].cast(pl.String).to_list() if name in items.columns else [None] * items.height

    return list(zip(col("source"), col("source_category"), col("source_l2_category")))


def _training_set(items: pl.DataFrame, known: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    lab = items.with_columns(known["known_dimension"].alias("_y")).filter(pl.col("_y").is_not_null())
    counts = lab.group_by("_y").len()
    rare = counts.filter(pl.col("len") < MIN_PER_CLASS)["_y"].to_list()
    if rare:
        warnings.warn(
            f"suggest: dimension(s) {sorted(rare)} have fewer than {MIN_PER_CLASS} labelled items and are "
            "left out of training (they will not be suggested)",
            UserWarning,
            stacklevel=3,
        )
        lab = lab.filter(~pl.col("_y").is_in(rare))
    classes = sorted(lab["_y"].unique().to_list())
    if len(classes) < 2:
        raise UserError(
            f"suggest: need labelled items of at least 2 dimensions (with >= {MIN_PER_CLASS} each) to train, "
            f"found {classes or 'none'}; label some items in review or add a taxonomy mapping for the source categories"
        )
    return lab, classes


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def suggest(items: pl.DataFrame, *, seed: int = 0, taxonomy: Taxonomy | None = None,
            use_category: bool = True) -> pl.DataFrame:
    """Return ``items`` with the suggestion columns added (replaced when already present).

    Items whose dimension is known keep it (``suggested_by`` says from where, probability
    1.0); the model suggests for the rest. ``use_category=False`` never uses the source
    category as a feature (question, options and source name only).
    """
    tax = taxonomy or default_taxonomy()
    items = items.drop([c for c in SUGGEST_COLUMNS if c in items.columns])
    known = known_dimensions(items, taxonomy=tax)
    unknown = known["known_dimension"].is_null()
    pred = [None] * items.height
    prob = [None] * items.height
    if unknown.any():
        # Two views, each calibrated on its own: an item whose source category the training
        # items share is scored with that category as a feature; any other item (category
        # missing or never labelled) by question + options + source alone. A model that always
        # saw a category is overconfident and wrong on items without one.
        lab, _ = _training_set(items, known)
        seen = set(_category_keys(lab)) if use_category else set()
        todo_idx = unknown.arg_true().to_list()
        keys = _category_keys(items)
        for with_cat in (True, False):
            idx = [i for i in todo_idx if (keys[i] in seen) == with_cat]
            if not idx:
                continue
            model = _pipeline(with_cat, seed).fit(_matrix(lab), lab["_y"].to_numpy())
            p = model.predict_proba(_matrix(items[idx]))
            best = p.argmax(axis=1)
            for k, i in enumerate(idx):
                pred[i], prob[i] = str(model.classes_[best[k]]), float(p[k, best[k]])
    dims = known["known_dimension"].to_list()
    by = known["known_from"].to_list()
    out_dim = [d if d is not None else pred[i] for i, d in enumerate(dims)]
    out_prob = [1.0 if d is not None else prob[i] for i, d in enumerate(dims)]
    out_by = [b if b is not None else ("model" if pred[i] else None) for i, b in enumerate(by)]
    cap = {d.name: d.capability for d in tax.dimensions}
    return items.with_columns(
        pl.Series("suggested_l2_category", out_dim, dtype=pl.String),
        pl.Series("suggested_category", [cap.get(d) if d else None for d in out_dim], dtype=pl.String),
        pl.Series("suggested_prob", out_prob, dtype=pl.Float64),
        pl.Series("suggested_by", out_by, dtype=pl.String),
    )


def cross_validate_suggester(items: pl.DataFrame, *, folds: int = 5, seed: int = 0, use_category: bool = True,
                             hold_out_categories: bool = False, taxonomy: Taxonomy | None = None) -> SuggestScore:
    """Stratified k-fold accuracy of the suggester on the items whose dimension is known.

    With ``use_category=True`` the features include the source category, from which the
    labels were mapped -- that figure says how well the model reproduces the mapping. The
    honest figure for items whose category does *not* map is ``use_category=False``:
    question, options and source name. ``hold_out_categories=True`` keeps every source category
    in one fold (``GroupKFold``): the figure for categories the model has never seen (a
    dimension reached through one category only is then never predicted for it, so this
    is a pessimistic bound).
    """
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict

    tax = taxonomy or default_taxonomy()
    known = known_dimensions(items, taxonomy=tax)
    lab, classes = _training_set(items, known)
    y = lab["_y"].to_numpy()
    min_count = int(lab.group_by("_y").len()["len"].min())
    k = min(folds, min_count)
    if k < 2:
        raise UserError(f"cross-validation needs >= 2 items per dimension; the rarest has {min_count}")
    groups = None
    if hold_out_categories:
        groups = (lab["source"].cast(pl.String).fill_null("") + "|" + lab["source_category"].cast(pl.String).fill_null("")).to_numpy()
        k = min(folds, len(set(groups)))
        cv = GroupKFold(n_splits=k)
    else:
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    pred = cross_val_predict(_pipeline(use_category, seed), _matrix(lab), y, cv=cv, groups=groups)
    cap = {d.name: d.capability for d in tax.dimensions}
    acc = float((pred == y).mean())
    cap_acc = float(np.mean([cap[a] == cap[b] for a, b in zip(pred, y)]))
    per = {c: float((pred[y == c] == c).mean()) for c in classes}
    return SuggestScore(acc, cap_acc, len(y), len(classes), k, use_category, per, hold_out_categories)


@workspace_command("suggest")
def suggest_workspace(workdir, *, seed: int = 0) -> tuple[str, pl.DataFrame]:
    """Add the suggestion columns to the newest of reviewed / screened / items, in place (atomic)."""
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    base = ws.annotation_base("suggest")  # read once: annotate joins into this same table
    df = suggest(base[1], seed=seed)
    stage, _ = ws.annotate("suggest", df.select("item_id", *[c for c in SUGGEST_COLUMNS if c in df.columns]), base=base)
    return stage, df
