"""Model result files (VLMEvalKit ``.xlsx``/``.tsv``, JSONL): read, matched to items, and scored.

Everything that turns a result file into one row per item with the model's extracted letter
and whether it hit the key lives here, once, because three commands build on it: ``metrics``
(MMStar's S_v / S_wv / S_t, MG, ML; :mod:`curate.metrics`), ``difficulty`` (solver counts and
MMStar's bins; :mod:`curate.difficulty`) and ``item-stats`` (discriminability and suspect keys;
:mod:`curate.item_stats`). They must read the same files the same way and match the same keys
to the same items, or their figures would disagree about the same run.

Matching result keys to items (:func:`match_items`, the one rule): a key names an item by its
``item_id`` when any key is one, else by ``orig_index`` (VLMEvalKit's ``index`` column, which
ingest keeps) -- refused when such an index occurs in several sources, where it would name
several items. Answers are extracted by the named matchers of :mod:`curate.mc` (MMStar's rule
or the option-text matcher); replies from which no option letter can be extracted are counted
as wrong *and* reported, never silently scored.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.errors import UserError
from curate.formats import ReadOptions, SourceRow
from curate.formats.jsonfiles import read_jsonl
from curate.formats.tables import read_xlsx_frame
from curate.formats.vlmevalkit import read_tsv
from curate.mc import extract
from curate.normalize import split_embedded_options
from curate.schema import LETTERS

MATCHERS = ("mmstar", "option_text")
#: Columns naming the shot setting of a run (first one present wins).
SHOT_COLUMNS = ("shots", "n_shots", "num_shots", "n_shot", "num_fewshot", "fewshot")
_SHOT_NAME = re.compile(r"(?i)(?<![a-z0-9])(\d+)[-_ ]?shots?(?![a-z])")
_ZERO_SHOT_NAME = re.compile(r"(?i)zero[-_ ]?shot")
#: Key columns, most specific first.
KEY_COLUMNS = ("item_id", "index", "id", "question_id")
PREDICTION_COLUMNS = ("prediction", "response", "output")

# ----------------------------------------------------------------------------------------
# reading prediction files
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Predictions:
    """One model run: a normalised table plus the run's shot setting when known.

    ``table`` columns: ``key`` (item id or the file's index), ``question``, ``options``
    (list of option texts in letter order), ``answer`` (key letter), ``category``,
    ``l2_category``, ``prediction`` (raw reply).
    """

    path: Path
    table: pl.DataFrame
    shots: int | None = None
    shots_source: str = "unknown"  # "option", "column", "filename" or "unknown"

    @property
    def name(self) -> str:
        return self.path.name


def _read_table(path: Path) -> pl.DataFrame:
    """The result file as a frame of text cells (null for empty ones), read by :mod:`curate.formats`.

    Why through ingest's readers: a result file is a benchmark file with a ``prediction`` column,
    so it gets the same treatment -- the same xlsx reader (refusing a repeated header), the same
    csv parsing of TSV/CSV (headers stripped, a byte-order mark dropped, a short or mis-quoted
    row named by line instead of shifting columns) and the same JSON checks.
    """
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".xls", ".tsv", ".csv", ".jsonl", ".json"):
        raise UserError(f"{path}: unknown prediction file type {suffix!r}; expected .xlsx, .tsv, .csv or .jsonl")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if suffix in (".xlsx", ".xls"):
        return read_xlsx_frame(path)
    if suffix in (".tsv", ".csv"):
        rows = read_tsv(path, ReadOptions(), delimiter="\t" if suffix == ".tsv" else ",")  # quoted replies may hold tabs, commas, lines
        return _frame(path, [_text_cells(row.data) for row in _parsed(path, rows)])
    return _frame(path, [_json_cells(path, row) for row in _parsed(path, read_jsonl(path, ReadOptions()))])


def _parsed(path: Path, rows: Iterable[SourceRow]) -> Iterator[SourceRow]:
    """The rows of a reader; a row it could not parse into fields refuses the file. (Image
    problems are not: a result file's image column is never read, only popped by the reader.)"""
    for row in rows:
        if row.error is not None and not row.data:
            raise UserError(f"{path} {row.where}: {row.error.detail}")
        yield row


def _text_cells(rec: dict) -> dict:
    """A TSV/CSV record with empty cells as null (what a result table means by an empty cell)."""
    return {k: (None if v == "" else v) for k, v in rec.items()}


def _json_cells(path: Path, row: SourceRow) -> dict:
    """A JSONL record as text cells: lists and objects as JSON text (``options`` too), the rest ``str``."""
    rec = row.data
    if not any(k in rec for k in PREDICTION_COLUMNS):
        raise UserError(f"{path} {row.where}: no field 'prediction' (the model's reply)")
    if not any(k in rec for k in KEY_COLUMNS):
        raise UserError(f"{path} {row.where}: no field 'item_id' or 'index' naming the item")
    rec = {k: (json.dumps(v) if isinstance(v, (dict, list)) and k != "options" else v) for k, v in rec.items()}
    if isinstance(rec.get("options"), list):
        rec["options"] = json.dumps(rec["options"])
    return {k: (None if v is None else str(v)) for k, v in rec.items()}


def _frame(path: Path, records: list[dict]) -> pl.DataFrame:
    if not records:
        raise UserError(f"{path}: no predictions (empty file)")
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    return pl.DataFrame(records, schema={c: pl.String for c in columns})


def _shots_from(df: pl.DataFrame, path: Path) -> tuple[int | None, str]:
    for col in SHOT_COLUMNS:
        if col in df.columns:
            values = {v for v in df[col].drop_nulls().to_list() if str(v).strip() != ""}
            if len(values) > 1:
                raise UserError(f"{path}: column {col!r} holds several shot settings {sorted(values)}; split the file per setting")
            if values:
                try:
                    return int(float(next(iter(values)))), "column"
                except ValueError as exc:
                    raise UserError(f"{path}: column {col!r} = {next(iter(values))!r} is not a number of shots") from exc
    if _ZERO_SHOT_NAME.search(path.name):
        return 0, "filename"
    m = _SHOT_NAME.search(path.name)
    if m:
        return int(m.group(1)), "filename"
    return None, "unknown"


def _options_from(df: pl.DataFrame) -> pl.Expr | None:
    letter_cols = [L for L in LETTERS if L in df.columns]
    if letter_cols:
        # Letter columns in order; trailing empty ones are not options (ScienceQA has 2-5).
        return pl.concat_list([pl.col(L).cast(pl.String) for L in letter_cols]).list.eval(
            pl.when(pl.element().str.strip_chars() == "").then(None).otherwise(pl.element())
        ).alias("options")
    if "options" in df.columns:
        return pl.col("options").map_elements(_parse_options, return_dtype=pl.List(pl.String)).alias("options")
    return None


def _parse_options(cell: str | None) -> list[str] | None:
    if cell is None:
        return None
    try:
        value = json.loads(cell)
    except (TypeError, json.JSONDecodeError):
        return None
    return [None if v is None else str(v) for v in value] if isinstance(value, list) else None


def _embedded_options(question: str | None) -> list[str] | None:
    """Options written inside the question (MMStar's ``Options: A: x, B: y`` and MathVista's
    ``Choices:\n(A) x``), read by ingest's own parser so both agree; padding cells are None."""
    if not question:
        return None
    cells, _, _ = split_embedded_options(question)
    return cells or None


def _trim(opts: list[str | None] | None) -> list[str | None] | None:
    if opts is None:
        return None
    opts = list(opts)
    while opts and opts[-1] is None:
        opts.pop()
    return opts


def read_predictions(path: str | Path, *, shots: int | None = None, items: pl.DataFrame | None = None) -> Predictions:
    """Read one prediction file into a :class:`Predictions`.

    Accepts VLMEvalKit result files (``.xlsx`` or ``.tsv``/``.csv`` with a ``prediction``
    column beside the question columns) and JSONL (one object per line with ``item_id`` or
    ``index`` and ``prediction``; ``answer``/``options``/``category`` optional). When the file
    lacks answers or options, pass ``items`` (an items table) and the predictions are joined
    to it on ``item_id`` or, failing that, ``orig_index``. ``shots`` overrides any shot
    setting found in a ``shots`` column or the file name (``..._2shot.xlsx``).
    """
    path = Path(path)
    df = _read_table(path)
    pred_col = next((c for c in PREDICTION_COLUMNS if c in df.columns), None)
    if pred_col is None:
        raise UserError(f"{path}: no 'prediction' column (columns: {df.columns[:12]}); is this a VLMEvalKit result file?")
    key_col = next((c for c in KEY_COLUMNS if c in df.columns), None)
    if key_col is None:
        raise UserError(f"{path}: no 'index' or 'item_id' column to name the items")
    found_shots, source = _shots_from(df, path)
    if shots is not None:
        found_shots, source = shots, "option"

    l2 = next((c for c in ("l2_category", "l2-category") if c in df.columns), None)
    exprs = [
        pl.col(key_col).cast(pl.String).str.strip_chars().alias("key"),
        (pl.col("question").cast(pl.String) if "question" in df.columns else pl.lit(None, pl.String)).alias("question"),
        (pl.col("answer").cast(pl.String).str.strip_chars().str.to_uppercase() if "answer" in df.columns else pl.lit(None, pl.String)).alias("answer"),
        (pl.col("category").cast(pl.String) if "category" in df.columns else pl.lit(None, pl.String)).alias("category"),
        (pl.col(l2).cast(pl.String) if l2 else pl.lit(None, pl.String)).alias("l2_category"),
        pl.col(pred_col).cast(pl.String).alias("prediction"),
    ]
    opt = _options_from(df)
    exprs.append(opt if opt is not None else pl.lit(None, pl.List(pl.String)).alias("options"))
    table = df.select(exprs).with_row_index("row", offset=1)
    table = table.with_columns(
        pl.struct("options", "question")
        .map_elements(lambda r: _trim(r["options"]) if r["options"] is not None else _embedded_options(r["question"]), return_dtype=pl.List(pl.String))
        .alias("options")
    )
    if table["key"].null_count():
        row = table.filter(pl.col("key").is_null())["row"][0]
        raise UserError(f"{path} row {row}: field {key_col!r} is empty")
    repeat = table.filter(~pl.col("key").is_first_distinct())
    if repeat.height:
        key = repeat["key"][0]
        first = table.filter(pl.col("key") == key)
        raise UserError(f"{path} row {repeat['row'][0]}: {key_col} {key!r} appears {first.height} times (first at row {first['row'][0]}); one prediction per item")
    if items is not None:
        table = _join_items(table, items, path)
    missing = table.filter(pl.col("answer").is_null() | ~pl.col("answer").str.contains(r"^[A-J]$"))
    if missing.height:
        r = missing.row(0, named=True)
        raise UserError(
            f"{path} row {r['row']}: field 'answer' = {r['answer']!r} is not an option letter A-J"
            + ("" if items is not None else " (pass the items table, e.g. --items WORKDIR, when the file has no answers)")
        )
    return Predictions(path, table.drop("row"), found_shots, source)


# ----------------------------------------------------------------------------------------
# matching result keys to items
# ----------------------------------------------------------------------------------------
def item_key_column(items: pl.DataFrame, keys: pl.Series) -> str:
    """The items column that result ``keys`` name: ``item_id`` when any key is one, else ``orig_index``.

    Why both: mmcurate's own files name items by ``item_id``; VLMEvalKit's name them by the
    benchmark's ``index``, which ingest keeps as ``orig_index``. A source index is ambiguous when
    it occurs in several sources of ``items``; that is refused (a key would name several items).
    """
    if keys.is_in(items["item_id"].implode()).any():
        return "item_id"
    dup = items.filter(pl.col("orig_index").is_duplicated() & pl.col("orig_index").is_in(keys.implode()))
    if dup.height:
        raise UserError(
            f"result keys are source indices, but index {dup['orig_index'][0]!r} occurs in several sources of the items; "
            "use results keyed by item_id, or items of one source (--source NAME)"
        )
    return "orig_index"


def match_items(keys: pl.Series, items: pl.DataFrame) -> pl.DataFrame:
    """``key`` -> ``item_id``: the item each result key names, by :func:`item_key_column`'s rule.

    One row per item of ``items`` (its ``item_id`` or ``orig_index`` as a String ``key``); join a
    result table on ``key`` (``how="left"``) and a null ``item_id`` marks a key naming no item.
    The one place result keys meet items: ``read_predictions(items=...)``,
    :func:`curate.difficulty.add_difficulty` and :func:`curate.item_stats.answers_table` use it.
    """
    on = item_key_column(items, keys)
    return items.select(pl.col(on).cast(pl.String).alias("key"), "item_id")


def _join_items(table: pl.DataFrame, items: pl.DataFrame, path: Path) -> pl.DataFrame:
    """The prediction rows matched to ``items``, with the items' question, options, key and categories."""
    ref = items.select(
        "item_id", "question", "options", "answer",
        pl.coalesce("category", "source_category").alias("category"),
        pl.coalesce("l2_category", "source_l2_category").alias("l2_category"),
    )
    joined = table.join(match_items(table["key"], items), on="key", how="left").join(ref, on="item_id", how="left", suffix="_ref")
    unknown = joined.filter(pl.col("answer_ref").is_null())
    if unknown.height == joined.height:
        raise UserError(f"{path}: none of the {joined.height} keys (e.g. {table['key'][0]!r}) is an item_id or orig_index of the items table")
    if unknown.height:
        warnings.warn(f"{path}: {unknown.height} prediction(s) name items not in the items table (e.g. {unknown['key'][0]!r}); ignored", stacklevel=3)
        joined = joined.filter(pl.col("answer_ref").is_not_null())
    return joined.select(
        "row",
        "key",
        pl.coalesce("question_ref", "question").alias("question"),
        pl.col("answer_ref").alias("answer"),
        pl.coalesce("category_ref", "category").alias("category"),
        pl.coalesce("l2_category_ref", "l2_category").alias("l2_category"),
        "prediction",
        pl.coalesce("options_ref", "options").alias("options"),
    )


# ----------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------
def score(preds: Predictions | pl.DataFrame, *, matcher: str = "mmstar") -> pl.DataFrame:
    """Add ``extracted`` (letter or null), ``hit`` and ``unextractable`` to a prediction table."""
    if matcher not in MATCHERS:
        raise UserError(f"matcher={matcher!r} is not known; use one of {MATCHERS}")
    table = preds.table if isinstance(preds, Predictions) else preds
    extracted = [
        extract(p, o, matcher)
        for p, o in zip(table["prediction"].to_list(), table["options"].to_list())
    ]
    return table.with_columns(pl.Series("extracted", extracted, dtype=pl.String)).with_columns(
        (pl.col("extracted") == pl.col("answer")).fill_null(False).alias("hit"),
        pl.col("extracted").is_null().alias("unextractable"),
    )
