"""Copies of one question: :func:`assign_groups` gives every item a ``group_id``.

Why: a pool holds the same question more than once -- MMBench's CircularEval copies (one
question, options rotated), an English and a Chinese version of one question on one image, the
same image and question in two sources. Counted as separate items they weigh one question
several times: ``balance`` picked one MMBench question four times, the audit's blind share
counted copies, and the panel was asked the same question again and again. Every consumer
therefore works on groups: screening asks a group once and gives each copy the verdict,
``balance`` never selects two items of a group, the audit counts questions (one per group).

Columns added (an existing ``group_id`` / ``group_reason`` is overwritten):

* ``group_id`` (String): the ``item_id`` of the group's first member in table order; a
  singleton's ``group_id`` is its own ``item_id``.
* ``group_reason`` (String): the rules that linked the group, comma-joined in the order
  ``circular_copy, same_image_question, translation``; a rule is named only when it joined
  items the rules before it had not; null for singletons.

Normalised text (questions, hints, options): NFKC, lower-cased with ``str.casefold``'s extra
foldings for these scripts (``ß`` -> ``ss``, final ``ς`` -> ``σ``), whitespace runs collapsed
to one space, stripped; a missing text is "". The *image sequence* of an item is the sha256 of
each of its ``images`` in order (an image without a sha256 makes the sequence unknown: it
matches nothing). The *key* is the normalised text of the option the answer letter names.

Rules -- each links two items; groups are the connected components of all links (union-find,
computed as sparse connected components, so a group is transitive: a circular copy of an English question and the Chinese translation
of that question are one group):

(a) ``circular_copy``: same ``source``; ``orig_index`` integers equal modulo 1,000,000
    (VLMEvalKit's MMBench CircularEval convention: copy k of index i is i + k*10**6, with its
    options rotated and its image cell naming i); the same normalised question and hint; the
    same option multiset (the options in any order); the same key; the same image sequence
    (or both without images: VLMEvalKit's text-only result files hold circular copies too).
(b) ``same_image_question``: the same non-empty image sequence and the same normalised
    question, within or across sources. Several *different* questions about one picture (AI2D
    asks up to 8 per diagram) are never linked by sharing the image alone.
Items without an image are never linked by their text alone: a text-only file (a VLMEvalKit result
xlsx, MathVista's JSON without its image folder, MMStar's submission file) repeats template questions
("What is the dominant color in the image?" with the same options and key) about *different* pictures
it does not carry -- 161 of MMStar's own 1,500 items would read as copies. Only rule (a), which rests
on the index structure, groups text-only items.

(c) ``translation``: the same non-empty image sequence, the same number of options, the same
    answer letter, and questions whose dominant script differs (Latin, Han, Japanese = any
    kana, Hangul, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai; a question with none of
    these letters has no script and is never a translation). Only unambiguous matches link:
    among the items of one (image sequence, option count, answer letter), a script links
    only when its items all belong to one group under (a)-(b); a script with two candidate
    groups (two different questions with the same answer letter) stays out. Applied after
    (a)-(b), so circular copies and their translations merge.

Measured on the real files (``tests/test_groups.py``): MMBench_samples.tsv (20 English, 20
Chinese on the same images, 14 CCBench) -> 20 translation pairs, 14 singletons (CCBench asks
"左图是谁的作品?" with the same options about two paintings: two questions); the same with
VLMEvalKit-style circular copies added -> still 34 groups; AI2D_TEST_sub309 (69 diagrams, nearly
every one asked about several times) -> no group; MathVista_testmini.json (no images) -> no group,
though pids 107/663, 224/715 and 308/661 repeat question, options and key (about other figures); MMBench_DEV_llava13b.xlsx (text only, three quarters of
its rows CircularEval copies) -> every copy in its original's group, never two keys in a group.

Everything is polars group-bys and sparse connected components: SEED-Bench's 14,232 rows take
about 0.3 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from curate.schema import LETTERS

#: Rule names, in the order ``group_reason`` lists them.
REASONS = ("circular_copy", "same_image_question", "translation")
#: VLMEvalKit's CircularEval index stride (MMBench): copy k of index i is i + k * CIRCULAR_STRIDE.
CIRCULAR_STRIDE = 1_000_000
#: Scripts whose letters decide a question's language family for rule (c).
SCRIPTS = ("Latin", "Han", "Hangul", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Thai")
#: Columns whose shared values make items one unit for ``balance`` (copies and near-duplicates).
UNIT_COLUMNS = ("group_id", "near_duplicate_group")
_SEP = "\x1f"


def normalise(expr: pl.Expr) -> pl.Expr:
    """Comparison form of a text (see the module docstring); null -> ""."""
    return (
        expr.fill_null("").str.normalize("NFKC").str.to_lowercase()
        .str.replace_all("ß", "ss", literal=True).str.replace_all("ς", "σ", literal=True)
        .str.replace_all(r"\s+", " ").str.strip_chars()
    )


def no_image_expr(columns: Sequence[str]) -> pl.Expr:
    """True for an item without any image: empty/null ``images``, else ``n_images`` 0; a table
    with neither column has no images at all."""
    if "images" in columns:
        return pl.col("images").list.len().fill_null(0) == 0
    if "n_images" in columns:
        return pl.col("n_images").fill_null(0) == 0
    return pl.lit(True)


def _script(question: pl.Expr) -> pl.Expr:
    """Dominant script of a text (most letters); any kana -> "Japanese"; no letters -> null."""
    counts = [question.str.count_matches(rf"\p{{{s}}}").cast(pl.Int64) for s in SCRIPTS]
    kana = question.str.count_matches(r"[\p{Hiragana}\p{Katakana}]").cast(pl.Int64)
    best = pl.concat_list(counts).list.arg_max()
    name = best.replace_strict(dict(enumerate(SCRIPTS)), return_dtype=pl.String)
    return pl.when(kana > 0).then(pl.lit("Japanese")).when(pl.max_horizontal(counts) > 0).then(name).otherwise(None)


def _keys(df: pl.DataFrame) -> pl.DataFrame:
    """One row per item with the comparison keys of the rules (missing columns -> null keys)."""
    cols = df.columns
    null = pl.lit(None, dtype=pl.String)
    i = pl.int_range(pl.len(), dtype=pl.Int64).alias("_i")
    question = pl.col("question").cast(pl.String) if "question" in cols else null
    hint = pl.col("hint").cast(pl.String) if "hint" in cols else null
    letter = pl.col("answer").cast(pl.String).str.strip_chars().str.to_uppercase() if "answer" in cols else null
    answer_idx = letter.replace_strict({c: k for k, c in enumerate(LETTERS)}, default=None, return_dtype=pl.Int64)
    if "options" in cols:
        opts = pl.col("options").list.eval(normalise(pl.element()))
        multiset = pl.when(pl.col("options").list.len() > 0).then(opts.list.sort().list.join(_SEP))
        n_opts = pl.col("options").list.len().fill_null(0).cast(pl.Int64)
        key = opts.list.get(answer_idx, null_on_oob=True)
    else:
        multiset, n_opts, key = null, pl.lit(0, dtype=pl.Int64), null
    no_image = no_image_expr(cols)
    if "images" in cols:
        shas = pl.col("images").list.eval(pl.element().struct.field("sha256"))
        unknown = shas.list.eval(pl.element().is_null()).list.any().fill_null(True)
        images = pl.when(no_image).then(null).when(unknown).then(pl.format("?{}", i)).otherwise(shas.list.join(","))
    else:
        images = pl.when(no_image).then(null).otherwise(pl.format("?{}", i))  # images exist but cannot be compared
    source = pl.col("source").cast(pl.String).fill_null("") if "source" in cols else pl.lit("")
    base = pl.col("orig_index").cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False) % CIRCULAR_STRIDE if "orig_index" in cols else pl.lit(None, dtype=pl.Int64)
    return df.select(
        i,
        source.alias("_source"),
        base.alias("_base"),
        normalise(question).alias("_q"),
        question.fill_null("").alias("_question"),  # its script is read only where rule (c) can apply
        normalise(hint).alias("_hint"),
        multiset.alias("_opts"),
        n_opts.alias("_nopt"),
        key.alias("_key"),
        letter.alias("_letter"),
        images.alias("_img"),
        no_image.alias("_no_image"),
    )


def _links(keys: pl.DataFrame, cond: pl.Expr, by: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every row meeting ``cond`` linked to the first row sharing all of ``by`` (nulls in ``by``
    count as a value; conditions exclude the ones that must not match)."""
    sub = keys.filter(cond).select("_i", *by)
    sub = sub.with_columns(pl.col("_i").min().over(by).alias("_first")).filter(pl.col("_i") != pl.col("_first"))
    return sub["_i"].to_numpy(), sub["_first"].to_numpy()


def _components(n: int, links: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected-component label per row (rows without a link are their own component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    a = np.concatenate([x for x, _ in links] or [np.zeros(0, dtype=np.int64)])
    b = np.concatenate([y for _, y in links] or [np.zeros(0, dtype=np.int64)])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _first_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each row's component's first member, component sizes per row)."""
    n = len(labels)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    sizes = np.bincount(labels, minlength=len(first))
    return first[labels], sizes[labels]


def _translation_links(keys: pl.DataFrame, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rule (c): unambiguous cross-script matches on one image sequence, option count and letter."""
    by = ["_img", "_nopt", "_letter"]
    t = keys.with_columns(pl.Series("_root", labels)).filter(
        pl.col("_img").is_not_null() & ~pl.col("_img").str.starts_with("?") & pl.col("_letter").is_not_null()
        & (pl.col("_nopt") > 0)
    )
    t = t.filter(pl.len().over(by) > 1)  # a match needs two items; reading scripts is the costly part
    t = t.with_columns(_script(pl.col("_question")).alias("_script")).filter(pl.col("_script").is_not_null())
    t = t.filter(pl.col("_root").n_unique().over([*by, "_script"]) == 1)
    t = t.filter(pl.col("_script").n_unique().over(by) >= 2)
    return _links(t, pl.lit(True), by)


def assign_groups(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with ``group_id`` and ``group_reason`` (see the module docstring for the rules).

    Needs only ``item_id``; a rule whose columns are missing links nothing. Deterministic: the
    same table gives the same groups, and a group's id is its first member in table order.
    """
    n = df.height
    keys = _keys(df)
    filled = pl.all_horizontal
    rules: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "circular_copy": _links(
            keys, filled(pl.col("_base").is_not_null(), pl.col("_q") != "", pl.col("_opts").is_not_null(), pl.col("_key").is_not_null()),
            ["_source", "_base", "_q", "_hint", "_opts", "_key", "_img"],
        ),
        "same_image_question": _links(
            keys, filled(pl.col("_img").is_not_null(), ~pl.col("_img").str.starts_with("?").fill_null(True), pl.col("_q") != ""),
            ["_img", "_q"],
        ),
    }
    rules["translation"] = _translation_links(keys, _components(n, list(rules.values())))
    labels = _components(n, [rules[r] for r in REASONS])
    first, sizes = _first_members(labels)
    ids = df["item_id"].cast(pl.String).to_list()
    group_id = pl.Series("group_id", [ids[f] for f in first.tolist()], dtype=pl.String)

    mask = np.zeros(labels.max() + 1 if n else 0, dtype=np.int64)
    before = np.arange(n, dtype=np.int64)  # components of the rules applied so far
    for bit, reason in enumerate(REASONS):
        a, b = rules[reason]
        joins = before[a] != before[b]  # a link the earlier rules had not made already
        np.bitwise_or.at(mask, labels[a[joins]], 1 << bit)
        before = _components(n, [rules[r] for r in REASONS[: bit + 1]])
    names = {m: ",".join(r for b, r in enumerate(REASONS) if m >> b & 1) for m in set(mask.tolist())}
    reason = [names[m] if s > 1 else None for m, s in zip(mask[labels].tolist(), sizes.tolist())]
    return df.with_columns(group_id, pl.Series("group_reason", reason, dtype=pl.String))


def linked_groups(df: pl.DataFrame, columns: Sequence[str] = UNIT_COLUMNS) -> pl.Series:
    """Items linked through a shared non-null value in any of ``columns`` (transitively).

    Returns, per row, the ``item_id`` of its component's first member, or null for an item
    linked to nothing. ``balance`` uses it so that "never two of a group" holds for copies
    (``group_id``) and near-duplicates (``near_duplicate_group``) at once.
    """
    n = df.height
    keys = df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"), *[pl.col(c).cast(pl.String) for c in columns if c in df.columns])
    links = [_links(keys, pl.col(c).is_not_null(), [c]) for c in columns if c in df.columns]
    if n == 0:
        return pl.Series("linked_group", [], dtype=pl.String)
    first, sizes = _first_members(_components(n, links))
    ids = df["item_id"].cast(pl.String).to_list()
    return pl.Series("linked_group", [ids[f] if k > 1 else None for f, k in zip(first.tolist(), sizes.tolist())], dtype=pl.String)


def ensure_groups(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` as it is when it has a ``group_id`` (an earlier stage's decision is kept), else with
    :func:`assign_groups`' columns. A ``group_id`` column that is null throughout counts as absent;
    a null ``group_id`` on some rows means "its own group"."""
    if "group_id" in df.columns and (df.height == 0 or df["group_id"].null_count() < df.height):
        return df
    return assign_groups(df)


def one_per_group(df: pl.DataFrame) -> pl.DataFrame:
    """The first row of every group (the table's own order): what "count questions, not copies"
    counts. Groups are assigned first when the table has none (:func:`ensure_groups`)."""
    if df.height == 0:
        return df
    df = ensure_groups(df)
    return df.filter(pl.coalesce(pl.col("group_id"), pl.col("item_id")).is_first_distinct())
