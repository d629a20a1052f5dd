"""Columnar normalisation: a whole text-only table turned into items with polars expressions.

Why: ``normalize_row`` costs about 15 µs a row in Python, which caps a text-only benchmark
(SEED-Bench's 14,232-row xlsx) near 30,000 rows/s. Here the common case -- a VLMEvalKit-style
table with option columns A..J and no images -- is decided a column at a time.

Why it does not duplicate the rules: this path only *accepts* rows it can prove clean (every
check of ``normalize_row`` would pass, and the polars string functions used agree with Python's
on the row's text). Every other row -- bad, dropped, or merely unusual (non-ASCII options,
control characters, embedded options) -- is handed back to ``normalize_row``, so each
quarantine or drop reason, and its message, lives in one place. ``tests/test_ingest.py`` checks
that both paths give the same items and ledger on real benchmark files and on corrupted copies.
"""

from __future__ import annotations

import json

import polars as pl

from curate.normalize import (
    FIELD_ALIASES,
    MAX_TEXT_CHARS,
    NA_TEXTS,
    SOURCE_CATEGORY_ALIASES,
    SOURCE_L2_ALIASES,
    NormalizeOptions,
    _dimension_lookup,
    source_aliases,
    _extra_letters,
)
from curate.formats.tables import IMAGE_COLUMNS  # a table with images is unfit for this path
from curate.schema import ITEM_SCHEMA, LETTERS, MAX_OPTIONS, MIN_OPTIONS

#: Exactly the characters Python's ``str.isspace()`` accepts, so ``strip_chars`` strips as ``str.strip()`` does.
PY_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
#: ASCII whitespace as ``str.split()`` sees it (used only on rows whose options are ASCII).
_ASCII_WS_RUN = r"[\t\n\x0b\x0c\r\x1c-\x1f ]+"
#: Control characters ``json.dumps`` would write as ``\uXXXX`` / ``\b`` / ``\f``: such rows take the row path.
_JSON_HARD = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
#: A question with one of these is visibly not empty (``normalize._invisible`` is False) in every
#: Unicode version (letters assigned since Unicode 1.1, no unassigned gaps): ASCII graphics, Latin-1
#: and Latin Extended-A, basic Greek and Cyrillic, kana, CJK, Hangul. Other questions take the row path.
_SURELY_VISIBLE = r"[!-~\u00c0-\u017f\u0391-\u03a1\u03a3-\u03a9\u03b1-\u03c9\u0410-\u044f\u3041-\u3096\u30a1-\u30fa\u4e00-\u9fa5\uac00-\ud7a3]"


def applicable(df: pl.DataFrame, opts: NormalizeOptions) -> bool:
    """Whether ``df`` has the shape this path handles; otherwise ingest uses the row path for all of it."""
    cols = set(df.columns)
    return (
        not opts.column_map
        and all(dtype == pl.String for dtype in df.schema.values())
        and not cols & set(IMAGE_COLUMNS)
        and not cols & set(FIELD_ALIASES["options"])
        and "metadata" not in cols
        and "A" in cols
        and bool(cols & set(FIELD_ALIASES["question"]))
    )


def _clean(col: str) -> pl.Expr:
    """``normalize._text`` on a string cell: stripped as Python strips, null when blank."""
    s = pl.col(col).str.strip_chars(PY_WHITESPACE)
    return pl.when(s.str.len_bytes() > 0).then(s)


def _first_text(cols: list[str] | tuple[str, ...]) -> pl.Expr:
    """``normalize._get`` + ``_text``: the first of ``cols`` that is not blank, stripped."""
    if not cols:
        return pl.lit(None, pl.String)
    return pl.coalesce([_clean(c) for c in cols]) if len(cols) > 1 else _clean(cols[0])


def _json_string(col: str) -> pl.Expr:
    """A string cell as ``json.dumps(ensure_ascii=False)`` writes it (rows with other control characters are excluded)."""
    esc = pl.col(col).str.replace_many(["\\", '"', "\n", "\r", "\t"], ["\\\\", '\\"', "\\n", "\\r", "\\t"])
    return pl.when(pl.col(col).is_null()).then(pl.lit("null")).otherwise(pl.lit('"') + esc + pl.lit('"'))


def _meta_json(columns: list[str]) -> pl.Expr:
    """``normalize._meta``: the row as JSON with sorted keys, built from string pieces."""
    parts: list[pl.Expr] = []
    for i, col in enumerate(sorted(columns)):
        key = json.dumps(col, ensure_ascii=False)
        parts += [pl.lit(("{" if i == 0 else ", ") + key + ": "), _json_string(col)]
    parts.append(pl.lit("}"))
    return pl.concat_str(parts)


def normalize_frame(df: pl.DataFrame, opts: NormalizeOptions) -> tuple[pl.DataFrame, pl.Series]:
    """Items for the rows decided here, and a mask of the rows left to ``normalize_row``.

    ``df`` holds the source rows in order (data row ``i`` is ``df`` row ``i - 1``). The items
    have the columns of ``ITEM_SCHEMA``, in row order; ``item_id`` uniqueness is the caller's
    job (it spans files). Call only when ``applicable(df, opts)``.
    """
    cols = df.columns
    present = set(cols)
    aliases = {k: [c for c in v if c in present] for k, v in FIELD_ALIASES.items()}
    letters = [L for L in LETTERS[:MAX_OPTIONS] if L in present]
    if letters != list(LETTERS[: len(letters)]):  # a header gap (A, B, D): let the row path name it
        return pl.DataFrame(schema=ITEM_SCHEMA), pl.Series("slow", [True] * df.height)

    opt = [_clean(L).alias(f"__opt_{L}") for L in letters]
    nonblank = [pl.col(f"__opt_{L}").is_not_null() for L in letters]
    contiguous = pl.all_horizontal([~nonblank[i] | nonblank[i - 1] for i in range(1, len(letters))] or [pl.lit(True)])
    options = pl.concat_list([pl.col(f"__opt_{L}") for L in letters]).list.drop_nulls()
    normed = pl.concat_list(
        [pl.col(f"__opt_{L}").str.to_lowercase().str.replace_all(_ASCII_WS_RUN, " ").str.strip_chars(" ") for L in letters]
    ).list.drop_nulls()
    ascii_options = pl.all_horizontal([pl.col(f"__opt_{L}").is_null() | pl.col(f"__opt_{L}").str.contains(r"^[\x00-\x7f]*$") for L in letters])
    json_safe = ~pl.any_horizontal([pl.col(c).str.contains(_JSON_HARD).fill_null(False) for c in cols])
    # "nan" padding (MMStar) is the row path's business: it removes or restores it
    # option columns past J (K, L, ...): the row path quarantines a filled one as too_many_options
    extra = [c for c in _extra_columns(present)]
    no_extra = ~pl.any_horizontal([_clean(c).is_not_null() for c in extra]) if extra else pl.lit(True)
    hint_len = _first_text(aliases["hint"]).str.len_chars().fill_null(0)
    opt_len = pl.sum_horizontal([pl.col(f"__opt_{L}").str.len_chars().fill_null(0) for L in letters])
    no_na_text = ~pl.any_horizontal([pl.col(f"__opt_{L}").is_in(list(NA_TEXTS)).fill_null(False) for L in letters])

    work = df.with_row_index("__i").with_columns(
        *opt,
        _first_text(aliases["question"]).alias("__q"),
        _first_text(aliases["answer"]).alias("__a"),
    ).with_columns(options.alias("__options"), normed.alias("__normed"), ascii_options.alias("__ascii"), contiguous.alias("__contig"), json_safe.alias("__json"), no_na_text.alias("__no_na"), no_extra.alias("__no_extra"), (hint_len + opt_len).alias("__other_len"))
    n = pl.col("__options").list.len()
    answer = pl.col("__a").str.to_uppercase()
    answer_idx = answer.replace_strict({L: i for i, L in enumerate(LETTERS)}, default=None, return_dtype=pl.Int64)
    ok = (
        pl.col("__q").is_not_null()
        & pl.col("__contig")
        & n.is_between(MIN_OPTIONS, MAX_OPTIONS)
        & pl.col("__ascii")
        & (pl.col("__normed").list.n_unique() == n)
        & pl.col("__a").str.contains(r"^[A-Ja-j]$").fill_null(False)
        & (answer_idx < n).fill_null(False)
        & pl.col("__json")
        & pl.col("__no_na")
        & pl.col("__no_extra")
        & pl.col("__q").str.contains(_SURELY_VISIBLE).fill_null(False)
        & ((pl.col("__q").str.len_chars() + pl.col("__other_len")) <= MAX_TEXT_CHARS).fill_null(False)
    )
    work = work.with_columns(ok.alias("__ok"))
    slow = ~work["__ok"]

    row = (pl.col("__i") + 1).cast(pl.Int64)
    orig_index = pl.coalesce([_first_text(aliases["index"]), row.cast(pl.String)])
    fast = work.filter(pl.col("__ok")).select(
        (pl.lit(opts.source + ":") + orig_index).alias("item_id"),
        pl.lit(opts.source).alias("source"),
        pl.lit(opts.source_file).alias("source_file"),
        row.alias("row"),
        orig_index.alias("orig_index"),
        _first_text(aliases["split"]).alias("split"),
        pl.col("__q").alias("question"),
        _first_text(aliases["hint"]).alias("hint"),
        pl.col("__options").alias("options"),
        answer.alias("answer"),
        pl.col("__options").list.get(answer_idx).alias("answer_text"),
        pl.lit([], ITEM_SCHEMA["images"]).alias("images"),
        pl.lit(0, pl.Int32).alias("n_images"),
        _first_text(source_aliases(SOURCE_CATEGORY_ALIASES, present)).alias("source_category"),
        _first_text(source_aliases(SOURCE_L2_ALIASES, present)).alias("source_l2_category"),
        _meta_json(cols).alias("meta"),
        _first_text(aliases["category"]).alias("__given_category"),
        _first_text(aliases["l2_category"]).alias("__given_l2"),
    )
    fast = _with_dimensions(fast, opts)
    return fast.select([pl.col(c).cast(t) for c, t in ITEM_SCHEMA.items()]), slow


def _extra_columns(present: set[str]) -> list[str]:
    """Option columns K, L, ... continuing a present J (the row path's own rule)."""
    return list(_extra_letters(present))


def _with_dimensions(items: pl.DataFrame, opts: NormalizeOptions) -> pl.DataFrame:
    """MMStar capability / dimension per distinct source-category pair (a handful per benchmark)."""
    on = ["source_category", "source_l2_category", "__given_category", "__given_l2"]
    keys = items.select(on).unique(maintain_order=True)
    looked = [_dimension_lookup(opts.taxonomy, opts.source, *k) for k in keys.iter_rows()]
    table = keys.with_columns(
        pl.Series("category", [c for c, _ in looked], pl.String),
        pl.Series("l2_category", [d for _, d in looked], pl.String),
    )
    return items.join(table, on=on, how="left", nulls_equal=True, maintain_order="left")
