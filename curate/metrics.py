"""Scores from model prediction files: MMStar's S_v, S_wv, S_t, MG, ML, and item difficulty.

MMStar (arXiv 2403.20330) measures two things beyond accuracy:

* multi-modal gain ``MG = S_v - S_wv``: what the image adds for an LVLM (score with the image
  minus score of the same LVLM with the image withheld);
* multi-modal leakage ``ML = max(0, S_wv - S_t)``: how much the LVLM answers without the image
  *beyond* its own LLM base with text only -- i.e. what leaked into multi-modal training data.

ML is only meaningful when S_wv and S_t come from runs with the same number of in-context
shots (MMStar's users found a 0-shot LVLM-text run compared against a 2-shot LLM baseline);
so every file carries the shot setting when it is known and a mismatch is a warning.

Answers are extracted with MMStar's own rule (its evaluation script, lower-cased prefix
checks) or, optionally, a VLMEvalKit ``can_infer``-like option-text matcher. Replies from
which no valid option letter can be extracted are counted as wrong *and* reported, never
silently scored.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate.normalize import split_embedded_options

from curate.errors import UserError
from curate.mc import extract, match_mmstar, match_option_text
from curate.schema import LETTERS
from curate.workspace import workspace_command

#: The old names of the matchers, for callers of this module (one implementation: curate.mc).
extract_mmstar = match_mmstar
extract_option_text = match_option_text

MATCHERS = ("mmstar", "option_text")
#: MMStar's bins over 16 models (easy 12-16 solvers, moderate 8-11, hard 4-7, tough 0-3),
#: as lower bounds on the solver fraction so they scale to any number of models.
DIFFICULTY_BINS: tuple[tuple[str, int], ...] = (("easy", 12), ("moderate", 8), ("hard", 4), ("tough", 0))
DIFFICULTY_COLUMNS = ("n_solvers", "n_models", "difficulty")

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
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xls"):
            return pl.read_excel(path, infer_schema_length=0)
        if suffix in (".tsv", ".csv"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False, quote_char='"')
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file") from exc
    except Exception as exc:
        raise UserError(f"{path}: cannot read as a {suffix} prediction table ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    raise UserError(f"{path}: unknown prediction file type {suffix!r}; expected .xlsx, .tsv, .csv or .jsonl")


def _read_jsonl(path: Path) -> pl.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise UserError(f"{path} line {line_no}: expected a JSON object, got {type(rec).__name__}")
            if not any(k in rec for k in PREDICTION_COLUMNS):
                raise UserError(f"{path} line {line_no}: no field 'prediction' (the model's reply)")
            if not any(k in rec for k in KEY_COLUMNS):
                raise UserError(f"{path} line {line_no}: no field 'item_id' or 'index' naming the item")
            rec = {k: (json.dumps(v) if isinstance(v, (dict, list)) and k != "options" else v) for k, v in rec.items()}
            if isinstance(rec.get("options"), list):
                rec["options"] = json.dumps(rec["options"])
            rows.append({k: (None if v is None else str(v)) for k, v in rec.items()})
    if not rows:
        raise UserError(f"{path}: no predictions (empty file)")
    return pl.DataFrame(rows, infer_schema_length=None)


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


def _join_items(table: pl.DataFrame, items: pl.DataFrame, path: Path) -> pl.DataFrame:
    ref = items.select("item_id", "orig_index", "question", "options", "answer", "category", "l2_category", "source_category", "source_l2_category")
    on = "item_id" if table["key"].is_in(ref["item_id"].implode()).any() else "orig_index"
    if on == "orig_index" and ref["orig_index"].is_duplicated().any():
        raise UserError(f"{path}: keys are not item_ids and the items table has repeated orig_index values (several sources); pass items of one source")
    ref = ref.with_columns(
        pl.coalesce("category", "source_category").alias("category"),
        pl.coalesce("l2_category", "source_l2_category").alias("l2_category"),
    ).rename({on: "key"}).select("key", "question", "options", "answer", "category", "l2_category")
    joined = table.join(ref, on="key", how="left", suffix="_ref")
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


def accuracy(scored: pl.DataFrame) -> dict:
    """``{n, hits, unextractable, accuracy}`` with accuracy in percent (unextractable = wrong)."""
    n = scored.height
    hits = int(scored["hit"].sum()) if n else 0
    return {
        "n": n,
        "hits": hits,
        "unextractable": int(scored["unextractable"].sum()) if n else 0,
        "accuracy": round(100.0 * hits / n, 2) if n else None,
    }


def accuracy_by(scored: pl.DataFrame, column: str) -> dict[str, dict]:
    """:func:`accuracy` per value of ``column`` (null values grouped under "(none)")."""
    out = {}
    for (value,), group in sorted(scored.group_by(column), key=lambda g: str(g[0][0])):
        out["(none)" if value is None else str(value)] = accuracy(group)
    return out


RUNS = {"S_v": "vision", "S_wv": "without_image", "S_t": "text_only"}


@dataclass
class MetricsReport:
    """S_v / S_wv / S_t and the derived MG / ML, overall and per category, in percent."""

    matcher: str
    runs: dict[str, dict] = field(default_factory=dict)  # "S_v" -> file info + accuracy
    overall: dict[str, float | None] = field(default_factory=dict)
    by_category: dict[str, dict[str, float | None]] = field(default_factory=dict)
    by_l2_category: dict[str, dict[str, float | None]] = field(default_factory=dict)
    n_items: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict = {k: self.overall[k] for k in ("S_v", "S_wv", "S_t", "MG", "ML") if k in self.overall}
        out.update(
            matcher=self.matcher,
            n_items=self.n_items,
            unextractable={k: r["unextractable"] for k, r in self.runs.items()},
            runs=self.runs,
            by_category=self.by_category,
            by_l2_category=self.by_l2_category,
            warnings=self.warnings,
        )
        return out


def _derived(scores: dict[str, float | None]) -> dict[str, float | None]:
    out = dict(scores)
    if scores.get("S_v") is not None and scores.get("S_wv") is not None:
        out["MG"] = round(scores["S_v"] - scores["S_wv"], 2)
    if scores.get("S_wv") is not None and scores.get("S_t") is not None:
        out["ML"] = round(max(0.0, scores["S_wv"] - scores["S_t"]), 2)
    return out


def mg_ml(
    vision: Predictions | None = None,
    without_image: Predictions | None = None,
    text_only: Predictions | None = None,
    *,
    matcher: str = "mmstar",
) -> MetricsReport:
    """MMStar's metrics from up to three runs of the same benchmark.

    Scores are computed on the items present in every given file (a warning names how many
    were left out), so MG and ML compare like with like. Returns whichever of S_v, S_wv,
    S_t, MG and ML the given files allow.
    """
    given = {k: p for k, p in (("S_v", vision), ("S_wv", without_image), ("S_t", text_only)) if p is not None}
    if not given:
        raise UserError("give at least one prediction file (--vision, --without-image or --text-only)")
    report = MetricsReport(matcher=matcher)
    common = None
    for p in given.values():
        keys = set(p.table["key"].to_list())
        common = keys if common is None else common & keys
    if not common:
        raise UserError("the prediction files share no item keys (index / item_id): are they runs of the same benchmark?")
    for name, p in given.items():
        left = p.table.height - len(common)
        if left:
            report.warnings.append(f"{p.name}: {left} of {p.table.height} items are not in every file and were left out")
    keep = pl.Series(sorted(common))
    _check_same_answers(given, keep)
    scored = {k: score(p.table.filter(pl.col("key").is_in(keep.implode())), matcher=matcher) for k, p in given.items()}
    report.n_items = len(common)
    for name, p in given.items():
        acc = accuracy(scored[name])
        report.runs[name] = {"file": str(p.path), "shots": p.shots, "shots_source": p.shots_source, **acc}
        if acc["unextractable"]:
            report.warnings.append(f"{p.name}: no option could be extracted from {acc['unextractable']} of {acc['n']} replies (scored wrong)")
    report.overall = _derived({k: r["accuracy"] for k, r in report.runs.items()})
    for column, target in (("category", report.by_category), ("l2_category", report.by_l2_category)):
        per_run = {k: accuracy_by(s, column) for k, s in scored.items()}
        values = sorted({v for d in per_run.values() for v in d})
        if values == ["(none)"]:
            continue
        for v in values:
            row = {k: d.get(v, {}).get("accuracy") for k, d in per_run.items()}
            target[v] = {"n": max(d.get(v, {}).get("n", 0) for d in per_run.values()), **_derived(row)}
    report.warnings.extend(shot_warnings(given))
    return report


def _check_same_answers(given: dict[str, Predictions], keep: pl.Series) -> None:
    """Runs of one benchmark agree on every key's answer; anything else is a user mix-up."""
    names = list(given)
    base = given[names[0]].table.filter(pl.col("key").is_in(keep.implode())).select("key", "answer")
    for other in names[1:]:
        t = given[other].table.filter(pl.col("key").is_in(keep.implode())).select("key", pl.col("answer").alias("answer_2"))
        diff = base.join(t, on="key").filter(pl.col("answer") != pl.col("answer_2"))
        if diff.height:
            r = diff.row(0, named=True)
            raise UserError(
                f"{given[names[0]].name} and {given[other].name} disagree on the answer of {diff.height} shared item(s) "
                f"(e.g. index {r['key']!r}: {r['answer']} vs {r['answer_2']}); they are not runs of the same benchmark"
            )


def shot_warnings(runs: dict[str, Predictions]) -> list[str]:
    """Warn when S_wv and S_t differ (or may differ) in their number of in-context shots."""
    wv, t = runs.get("S_wv"), runs.get("S_t")
    if wv is None or t is None:
        return []
    if wv.shots is not None and t.shots is not None:
        if wv.shots != t.shots:
            return [
                f"shot mismatch: S_wv ({wv.name}) is {wv.shots}-shot but S_t ({t.name}) is {t.shots}-shot; "
                "ML compares unlike runs (re-run both with the same number of shots)"
            ]
        return []
    unknown = [p.name for p in (wv, t) if p.shots is None]
    return [f"shot setting unknown for {', '.join(unknown)}; ML assumes S_wv and S_t used the same number of shots (give --shots)"]


# ----------------------------------------------------------------------------------------
# difficulty
# ----------------------------------------------------------------------------------------
def difficulty_bin(n_solvers: int, n_models: int) -> str:
    """MMStar's bin for an item solved by ``n_solvers`` of ``n_models`` vision models.

    The 16-model thresholds (12, 8, 4) scale to ``n`` as solver fractions 3/4, 1/2, 1/4.

    >>> [difficulty_bin(s, 16) for s in (16, 12, 11, 8, 7, 4, 3, 0)]
    ['easy', 'easy', 'moderate', 'moderate', 'hard', 'hard', 'tough', 'tough']
    >>> difficulty_bin(3, 4), difficulty_bin(2, 4), difficulty_bin(1, 4), difficulty_bin(0, 4)
    ('easy', 'moderate', 'hard', 'tough')
    """
    if n_models <= 0 or not 0 <= n_solvers <= n_models:
        raise ValueError(f"need 0 <= n_solvers <= n_models and n_models > 0, got {n_solvers}/{n_models}")
    for name, low in DIFFICULTY_BINS:
        if 16 * n_solvers >= low * n_models:
            return name
    return "tough"  # unreachable: the last bound is 0


def solver_counts(runs: list[Predictions], *, matcher: str = "mmstar") -> pl.DataFrame:
    """Per item key: how many of the runs solved it (``n_solvers``), of ``n_models``, and its bin."""
    if not runs:
        raise UserError("difficulty needs prediction files of at least one vision model")
    if len(runs) < 4:
        warnings.warn(f"only {len(runs)} model(s): difficulty bins are coarse (MMStar used 16)", stacklevel=2)
    hits = pl.concat([score(r, matcher=matcher).select("key", pl.col("hit").cast(pl.Int32)) for r in runs])
    counts = hits.group_by("key").agg(pl.col("hit").sum().alias("n_solvers"), pl.len().cast(pl.Int32).alias("n_models"))
    return counts.with_columns(
        pl.struct("n_solvers", "n_models").map_elements(lambda r: difficulty_bin(r["n_solvers"], r["n_models"]), return_dtype=pl.String).alias("difficulty")
    ).sort("key")


def add_difficulty(items: pl.DataFrame, counts: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Join solver counts onto an items table (by ``item_id``, else ``orig_index``).

    Replaces earlier difficulty columns. Returns the new table and how many items matched;
    unmatched items get nulls (the balancer treats them as unknown difficulty).
    """
    on = "item_id" if counts["key"].is_in(items["item_id"].implode()).any() else "orig_index"
    if on == "orig_index":
        dup = items.filter(pl.col("orig_index").is_duplicated() & pl.col("orig_index").is_in(counts["key"].implode()))
        if dup.height:
            raise UserError(
                f"prediction keys are source indices, but index {dup['orig_index'][0]!r} occurs in several sources of the workspace; "
                "use predictions keyed by item_id or --source NAME"
            )
    base = items.drop([c for c in DIFFICULTY_COLUMNS if c in items.columns])
    out = base.join(counts.rename({"key": on}), on=on, how="left")
    matched = int(out["difficulty"].is_not_null().sum())
    if matched == 0:
        raise UserError(f"no prediction key (e.g. {counts['key'][0]!r}) matches an item_id or orig_index in the workspace")
    return out, matched


@workspace_command("difficulty")
def write_difficulty(workdir: str | Path, runs: list[Predictions], *, matcher: str = "mmstar", source: str | None = None) -> dict:
    """Count solvers over ``runs`` and add ``n_solvers``/``n_models``/``difficulty`` to the newest stage file.

    The stage file is rewritten atomically (``Workspace.write``), so the balancer reads the
    bins from the same table it balances. ``source`` restricts matching to one source when
    the predictions are keyed by that source's own indices.
    """
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    stage = ws.newest()
    items = ws.read(stage)
    counts = solver_counts(runs, matcher=matcher)
    if source is not None:
        if source not in set(items["source"].to_list()):
            raise UserError(f"--source {source!r}: no such source in {ws.root} (sources: {sorted(set(items['source'].to_list()))})")
        part, rest = items.filter(pl.col("source") == source), items.filter(pl.col("source") != source)
        part, matched = add_difficulty(part, counts)
        table = pl.concat([part, rest], how="diagonal_relaxed").sort("row", "item_id", nulls_last=True)
        table = items.select("item_id").join(table, on="item_id", how="left")  # keep the original order
    else:
        table, matched = add_difficulty(items, counts)
    stage, path = ws.annotate("difficulty", table.select("item_id", *DIFFICULTY_COLUMNS))
    bins = {name: int((table["difficulty"] == name).sum()) for name, _ in DIFFICULTY_BINS}
    known = set(table["item_id"].to_list()) | set(table["orig_index"].to_list())
    unused = sum(1 for k in counts["key"].to_list() if k not in known)
    if unused:
        warnings.warn(f"{unused} predicted item(s) are not in the workspace (dropped at ingest or another source); ignored", stacklevel=2)
    return {
        "stage": stage, "path": str(path), "n_models": len(runs), "matched": matched,
        "unmatched": table.height - matched, "unused_predictions": unused, "bins": bins,
    }
