"""The one item schema and the one ledger schema every stage shares.

Stages add columns to the items table (keyed by ``item_id``); they never rename or drop
the columns below. ``validate_items`` is called on every write so a stage that breaks the
contract fails loudly at the point where it broke it, not three stages later.
"""

from __future__ import annotations

import polars as pl

#: One image of an item: embedded bytes (always filled by ingest so a workspace is
#: self-contained), the path it came from when known, its size and a content hash.
IMAGE_STRUCT = pl.Struct(
    {
        "bytes": pl.Binary,
        "path": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "sha256": pl.String,
    }
)

#: Columns of ``items.parquet``. Later stages append their own columns after these.
ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),  # "<source>:<original index>", stable across runs
    "source": pl.String(),  # benchmark name (file stem or --name)
    "source_file": pl.String(),
    "row": pl.Int64(),  # 1-based data row in the source file
    "orig_index": pl.String(),
    "split": pl.String(),
    "question": pl.String(),
    "hint": pl.String(),
    "options": pl.List(pl.String()),  # 2..10 option texts, in letter order
    "answer": pl.String(),  # letter: "A".."J"
    "answer_text": pl.String(),
    "images": pl.List(IMAGE_STRUCT),
    "n_images": pl.Int32(),
    "category": pl.String(),  # MMStar capability, when known
    "l2_category": pl.String(),  # MMStar dimension, when known
    "source_category": pl.String(),  # the source's own category
    "source_l2_category": pl.String(),
    "meta": pl.String(),  # the original row (minus image payloads) as JSON
}

#: Columns of ``ledger.parquet``: one row per input row per stage.
LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "row": pl.Int64(),
    "item_id": pl.String(),
    "stage": pl.String(),
    "status": pl.String(),  # kept / dropped / quarantined
    "reason": pl.String(),  # machine-readable reason code, e.g. "open_question"
    "field": pl.String(),  # the field a quarantine is about, when there is one
    "detail": pl.String(),  # a human sentence, names file/row/field
}

STATUSES = ("kept", "dropped", "quarantined")
LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS, MAX_OPTIONS = 2, 10


class SchemaError(ValueError):
    """A table does not have the columns or types a stage promised."""


def empty_items() -> pl.DataFrame:
    return pl.DataFrame(schema=ITEM_SCHEMA)


def empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


def _check_columns(df: pl.DataFrame, schema: dict[str, pl.DataType], what: str) -> None:
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} lacks column(s) {missing}")
    wrong = [
        f"{c}: {df.schema[c]} (expected {t})"
        for c, t in schema.items()
        if df.schema[c] != t and df.schema[c] != pl.Null
    ]
    if wrong:
        raise SchemaError(f"{what} has wrong column type(s): " + "; ".join(wrong))


def validate_items(df: pl.DataFrame, what: str = "items table") -> pl.DataFrame:
    """Check the item contract: columns, types, unique non-empty ids, letters in range."""
    _check_columns(df, ITEM_SCHEMA, what)
    if df.height == 0:
        return df
    if df["item_id"].null_count() or df["item_id"].is_duplicated().any():
        dup = df.filter(pl.col("item_id").is_duplicated())["item_id"].head(3).to_list()
        raise SchemaError(f"{what}: item_id must be unique and non-null (e.g. {dup})")
    bad = df.filter(
        (pl.col("options").list.len() < MIN_OPTIONS)
        | (pl.col("options").list.len() > MAX_OPTIONS)
        | (pl.col("answer").str.len_chars() != 1)
    )
    if bad.height:
        raise SchemaError(f"{what}: {bad.height} item(s) break the options/answer contract, e.g. {bad['item_id'][0]}")
    return df


def validate_ledger(df: pl.DataFrame, what: str = "ledger") -> pl.DataFrame:
    _check_columns(df, LEDGER_SCHEMA, what)
    bad = df.filter(~pl.col("status").is_in(STATUSES))
    if bad.height:
        raise SchemaError(f"{what}: unknown status {bad['status'][0]!r}; expected one of {STATUSES}")
    return df


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Add missing schema columns as nulls and cast to the schema's types, schema columns first."""
    exprs = []
    for name, dtype in schema.items():
        if name in df.columns:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    extra = [c for c in df.columns if c not in schema]
    return df.select(exprs + [pl.col(c) for c in extra])


#: How a stage marks a row it dropped: (column, the value that drops, why). Every later stage leaves
#: these rows out -- balance's candidates and export's rows -- so the rule lives here, once.
DROP_MARKS = (
    ("blind", True, "answerable without the image (screening)"),
    ("rule_drop", True, "flagged by the rule filters"),
    ("review_kept", False, "rejected by reviewers"),
)


def drop_reasons(columns) -> list[tuple[pl.Expr, str]]:
    """``(mask, why)`` for each drop mark present in ``columns`` (a null mark does not drop), plus
    ``screen_error`` (an item screening could not ask was never screened)."""
    out = [(pl.col(col).fill_null(not bad) == bad, why) for col, bad, why in DROP_MARKS if col in columns]
    if "screen_error" in columns:
        out.append((pl.col("screen_error").is_not_null(), "that screening could not ask"))
    return out


def dropped_expr(columns) -> pl.Expr:
    """True for a row some earlier stage dropped (see ``drop_reasons``)."""
    return pl.any_horizontal([m for m, _ in drop_reasons(columns)] or [pl.lit(False)])
