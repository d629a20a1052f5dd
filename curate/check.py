"""Release check: everything that would embarrass a published benchmark, found before it ships.

``check_table`` looks at one items table (a workspace stage, or an export read back with our
own readers) and returns a list of ``Problem``s; ``has_errors`` says whether any of them must
stop a release. ``export`` refuses a set with errors, ``mmcurate check`` prints the list.

What is checked, and why each is an error or only a warning:

* ``duplicate_id`` (error): item ids are how results are joined back to items.
* ``no_image`` (error unless ``allow_no_image``): a vision benchmark item without an image
  cannot be vision-dependent, and VLMEvalKit silently skips rows whose image cell is empty.
* ``too_few_options`` (error): a multiple-choice item needs at least two options.
* ``answer_not_in_options`` (error): the key must be the letter of one of the item's options.
* ``padding_option`` (error): an option that is empty or a missing-value placeholder
  (``nan``, ``-nan``, ``null``, any case). MMStar's own files pad 2- and 3-option items with the
  text ``nan``: such an "option" is padding, not a choice. (Ingest removes trailing padding
  and restores a padded cell that is the key or precedes a real option as ``None``; an export
  read back reports those restored cells here too, because the file holds them.)
* ``na_option`` (warning): an option whose text pandas reads as a missing value (its default
  ``na_values``: ``None``, ``NA``, ``N/A``, ``<NA>``, ...). The text can be a real option (SEED-
  Bench's "None", restored by ingest), but VLMEvalKit loads TSVs with pandas and would drop it.
* ``ambiguous_key`` (error): the key's option text occurs twice, so two letters are right.
* ``duplicate_options`` (warning): two options have the same text (not the key's).
* ``missing_category`` / ``missing_dimension`` (error): every item must have MMStar's
  capability (``category``) and dimension (``l2_category``); scores are reported per both.
* ``unknown_dimension`` (warning): a (category, l2_category) pair that is not one of MMStar's
  capability / dimension pairs (``data/taxonomy.toml``): a typo there becomes a score bucket
  of its own. A warning: a set may use its own taxonomy on purpose.
* ``same_group`` (error): two items of one group (circular copies, translations, the same
  image + question; see ``curate.groups``) would count one question twice.
* ``duplicate_image_question`` (error): the same image(s) with the same question text.
* ``answer_imbalance`` (warning): the keys' letters are spread unevenly. The rule: each item
  with ``k`` options contributes ``1/k`` to the expected count of each of its ``k`` letters
  (a uniform spread over the item's own options); letters with an expected count below 5 are
  pooled into one bin so the chi-square approximation holds. A warning is raised when the
  chi-square goodness-of-fit p-value is below ``IMBALANCE_P`` (0.001) **and** some letter's
  share is at least ``IMBALANCE_SHARE`` (5 percentage points) away from its expected share --
  the p-value alone flags harmless deviations in large sets, the share alone flags noise in
  small ones. It is a warning, not an error: a skewed key is a bias a model can exploit, not
  a broken item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from curate.errors import UserError
from curate.schema import LETTERS, MIN_OPTIONS

Severity = Literal["error", "warning"]

#: Option texts that are padding, not choices (compared stripped and lower-cased).
PADDING_TEXTS = frozenset({"", "nan", "-nan", "null"})
#: pandas' default ``na_values`` (``pandas._libs.parsers.STR_NA_VALUES``), compared stripped, case as is:
#: an option with one of these texts vanishes when VLMEvalKit reads the TSV.
PANDAS_NA_TEXTS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                             "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
#: answer_imbalance: chi-square p-value and share deviation that must both be exceeded.
IMBALANCE_P = 0.001
IMBALANCE_SHARE = 0.05
#: Item ids shown in a message (all of them are in ``Problem.item_ids``).
SHOWN = 5
REQUIRED_COLUMNS = ("item_id", "question", "options", "answer")
#: Problem codes in report order (errors first).
CODES = (
    "missing_column", "empty", "unreadable_row", "duplicate_id", "no_image", "too_few_options",
    "answer_not_in_options", "padding_option", "ambiguous_key", "missing_category", "missing_dimension", "same_group",
    "duplicate_image_question", "no_image_skipped", "na_option", "duplicate_options", "unknown_dimension",
    "answer_imbalance",
)


@dataclass(frozen=True)
class Problem:
    """One kind of problem found in a table, with every item it concerns."""

    code: str
    severity: Severity
    message: str
    item_ids: tuple[str, ...]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["item_ids"] = list(self.item_ids)
        return d


def has_errors(problems: Iterable[Problem]) -> bool:
    """True when any problem must stop a release (warnings do not)."""
    return any(p.severity == "error" for p in problems)


def summary(problems: Sequence[Problem]) -> dict:
    """The JSON object ``mmcurate check --json`` prints: ok, counts and every problem."""
    errors = sum(p.severity == "error" for p in problems)
    return {"ok": errors == 0, "errors": errors, "warnings": len(problems) - errors,
            "problems": [p.as_dict() for p in problems]}


def _ids_text(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f", ... (+{len(ids) - SHOWN} more)" if len(ids) > SHOWN else "")


def _problem(code: str, severity: Severity, what: str, ids: Sequence[str]) -> Problem:
    """``what`` is the sentence before the ids, e.g. '3 items have no image'."""
    ids = tuple(ids)
    return Problem(code, severity, f"{what}: {_ids_text(ids)}" if ids else what, ids)


def _plural(n: int, word: str, verb: str = "") -> str:
    """'1 item has' / '3 items have' (``verb`` given in the plural: have, share, repeat, occur, hold)."""
    singular = {"have": "has"}.get(verb, verb + "s") if verb else ""
    return f"{n} {word}" + ("" if n == 1 else "s") + (f" {singular if n == 1 else verb}" if verb else "")


# --------------------------------------------------------------------------------------
# The checks (each takes the table with an ``_id`` column and returns a list of problems)
# --------------------------------------------------------------------------------------
def _ids_where(df: pl.DataFrame, mask: pl.Expr) -> list[str]:
    return df.filter(mask)["_id"].to_list()


def _check_duplicate_ids(df: pl.DataFrame) -> list[Problem]:
    dup = df.filter(pl.col("item_id").is_duplicated() | pl.col("item_id").is_null())
    if dup.height == 0:
        return []
    ids = sorted(set(dup["_id"].to_list()))
    return [_problem("duplicate_id", "error", f"{_plural(dup.height, 'item', 'share')} an item_id with another item (or have none)", ids)]


def _n_images(df: pl.DataFrame) -> pl.Expr:
    if "images" in df.columns:
        return pl.col("images").list.len().fill_null(0)
    if "n_images" in df.columns:
        return pl.col("n_images").fill_null(0)
    return pl.lit(0)


def _check_no_image(df: pl.DataFrame, allow_no_image: bool) -> list[Problem]:
    if allow_no_image:
        return []
    ids = _ids_where(df, _n_images(df) == 0)
    if not ids:
        return []
    return [_problem("no_image", "error", f"{_plural(len(ids), 'item', 'have')} no image (pass --allow-no-image for a text-only set)", ids)]


def _check_options(df: pl.DataFrame) -> list[Problem]:
    n_opts = pl.col("options").list.len().fill_null(0)
    out = []
    few = _ids_where(df, n_opts < MIN_OPTIONS)
    if few:
        out.append(_problem("too_few_options", "error", f"{_plural(len(few), 'item', 'have')} fewer than {MIN_OPTIONS} options", few))
    letter_index = pl.col("answer").str.strip_chars().replace_strict(
        {L: i for i, L in enumerate(LETTERS)}, default=None, return_dtype=pl.Int64)
    bad_key = pl.col("answer").is_null() | letter_index.is_null() | (letter_index >= n_opts)
    keys = _ids_where(df, bad_key)
    if keys:
        out.append(_problem("answer_not_in_options", "error",
                            f"{_plural(len(keys), 'item', 'have')} a key that is not the letter of one of their options", keys))
    is_padding = pl.element().is_null() | pl.element().str.strip_chars().str.to_lowercase().is_in(list(PADDING_TEXTS))
    pads = _ids_where(df, pl.col("options").list.eval(is_padding).list.any().fill_null(False))
    if pads:
        out.append(_problem("padding_option", "error",
                            f"{_plural(len(pads), 'item', 'have')} an empty or padding option ('', nan, null)", pads))
    na_like = pl.element().str.strip_chars().is_in(list(PANDAS_NA_TEXTS - {""})) & ~is_padding
    nas = _ids_where(df, pl.col("options").list.eval(na_like).list.any().fill_null(False))
    if nas:
        out.append(_na_option_problem(nas))
    out += _check_repeated_options(df)
    return out


def _na_option_problem(ids: Sequence[str]) -> Problem:
    return _problem("na_option", "warning", f"{_plural(len(ids), 'item', 'have')} an option pandas reads as missing "
                    "('None', 'NA', 'N/A', ...): VLMEvalKit would drop it from a TSV", ids)


def _check_repeated_options(df: pl.DataFrame) -> list[Problem]:
    """Options with the same text (whitespace collapsed, case kept: "XAXa" and "XAXA" differ)."""
    normed = pl.col("options").list.eval(pl.element().str.replace_all(r"\s+", " ").str.strip_chars())
    t = df.select("_id", "answer", normed.alias("_opts")).filter(
        pl.col("_opts").list.len() > pl.col("_opts").list.n_unique())
    ambiguous, repeated = [], []
    for item_id, answer, opts in t.iter_rows():
        k = LETTERS.find((answer or "").strip()) if answer and len((answer or "").strip()) == 1 else -1
        key_text = opts[k] if 0 <= k < len(opts) else None
        (ambiguous if key_text is not None and opts.count(key_text) > 1 else repeated).append(item_id)
    out = []
    if ambiguous:
        out.append(_problem("ambiguous_key", "error",
                            f"{_plural(len(ambiguous), 'item', 'have')} the key's text under two letters (two right answers)", ambiguous))
    if repeated:
        out.append(_problem("duplicate_options", "warning", f"{_plural(len(repeated), 'item', 'repeat')} an option's text", repeated))
    return out


def _check_categories(df: pl.DataFrame) -> list[Problem]:
    out = []
    for col, code, what in (("category", "missing_category", "capability (category)"),
                            ("l2_category", "missing_dimension", "dimension (l2_category)")):
        if col not in df.columns:
            out.append(_problem(code, "error", f"the table has no {col} column: no item has a {what}", df["_id"].to_list()))
            continue
        blank = pl.col(col).cast(pl.String).str.strip_chars().fill_null("") == ""
        ids = _ids_where(df, blank)
        if ids:
            out.append(_problem(code, "error", f"{_plural(len(ids), 'item', 'have')} no {what}", ids))
    return out


def _check_taxonomy(df: pl.DataFrame) -> list[Problem]:
    """Items whose (capability, dimension) is not a pair of the taxonomy (missing ones are reported above)."""
    if "category" not in df.columns or "l2_category" not in df.columns:
        return []
    from curate.taxonomy import default_taxonomy

    pairs = [f"{d.capability}\x00{d.name}" for d in default_taxonomy().dimensions]
    text = [pl.col(c).cast(pl.String).str.strip_chars() for c in ("category", "l2_category")]
    both = text[0].is_not_null() & (text[0] != "") & text[1].is_not_null() & (text[1] != "")
    odd = df.filter(both & ~pl.concat_str(text[0], pl.lit("\x00"), text[1]).is_in(pairs))
    if odd.height == 0:
        return []
    seen = odd.select(pl.format("'{} / {}'", "category", "l2_category")).unique(maintain_order=True).to_series().head(3)
    return [_problem("unknown_dimension", "warning", f"{_plural(odd.height, 'item', 'have')} a capability / dimension pair "
                     f"that is not MMStar's (e.g. {', '.join(seen)})", odd["_id"].to_list())]


def _groups(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with ``group_id`` / ``group_reason``: as given, or computed by ``curate.groups``."""
    if "group_id" in df.columns and df["group_id"].null_count() < df.height:
        return df if "group_reason" in df.columns else df.with_columns(group_reason=pl.lit(None, pl.String))
    from curate.groups import assign_groups

    grouped = assign_groups(df.drop("_id"))
    return df.with_columns(grouped["group_id"].alias("group_id"), grouped["group_reason"].alias("group_reason"))


def _check_groups(df: pl.DataFrame) -> list[Problem]:
    """Groups with several items; a group that is nothing but one image + question repeated is left
    to ``duplicate_image_question`` (the same finding is not reported twice)."""
    g = _groups(df).with_columns(pl.col("group_id").fill_null(pl.col("_id")), _dup_key(df))
    multi = (
        g.group_by("group_id", maintain_order=True)
        .agg(pl.col("_id"), pl.col("group_reason").drop_nulls().unique(maintain_order=True),
             ((pl.col("_dup_key").null_count() == 0) & (pl.col("_dup_key").n_unique() == 1)).alias("_one_key"))
        .filter((pl.col("_id").list.len() > 1) & ~pl.col("_one_key"))
    )
    if multi.height == 0:
        return []
    ids = [i for members in multi["_id"].to_list() for i in members]
    shown = "; ".join(
        f"{'/'.join(reasons) or 'same group'}: {', '.join(members[:3])}" + (" ..." if len(members) > 3 else "")
        for members, reasons in zip(multi["_id"].head(3).to_list(), multi["group_reason"].head(3).to_list())
    )
    more = f"; ... (+{multi.height - 3} more groups)" if multi.height > 3 else ""
    msg = f"{_plural(multi.height, 'group', 'have')} more than one item in the set ({len(ids)} items): {shown}{more}"
    return [Problem("same_group", "error", msg, tuple(ids))]


def _image_key(df: pl.DataFrame) -> pl.Expr:
    """The item's images as one string: their sha256s, or a hash of the bytes when none is stored."""
    if "images" not in df.columns:
        return pl.lit("")
    fields = df.schema["images"].inner.fields if isinstance(df.schema["images"], pl.List) else []  # type: ignore[union-attr]
    names = {f.name for f in fields}
    parts = []
    if "sha256" in names:
        parts.append(pl.element().struct.field("sha256"))
    if "bytes" in names:
        parts.append(pl.element().struct.field("bytes").hash().cast(pl.String))
    if not parts:
        return pl.lit("")
    return pl.col("images").list.eval(pl.coalesce(parts)).list.join(",").fill_null("")


def _dup_key(df: pl.DataFrame) -> pl.Expr:
    """Image(s) + question, the question lower-cased with whitespace collapsed; null without an image
    (text-only items sharing a template question are not duplicates; ``curate.groups`` links real
    text-only copies, which ``same_group`` reports)."""
    question = pl.col("question").cast(pl.String).fill_null("").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    images = _image_key(df)
    return pl.when(images != "").then(pl.concat_str(images, pl.lit("\x00"), question)).alias("_dup_key")


def _check_duplicate_image_question(df: pl.DataFrame) -> list[Problem]:
    dups = (
        df.with_columns(_dup_key(df)).filter(pl.col("_dup_key").is_not_null())
        .group_by("_dup_key", maintain_order=True).agg(pl.col("_id"))
        .filter(pl.col("_id").list.len() > 1)
    )
    if dups.height == 0:
        return []
    ids = [i for members in dups["_id"].to_list() for i in members]
    shown = "; ".join(", ".join(m) for m in dups["_id"].head(3).to_list())
    more = f"; ... (+{dups.height - 3} more)" if dups.height > 3 else ""
    msg = f"{_plural(dups.height, 'image + question', 'occur')} more than once ({len(ids)} items): {shown}{more}"
    return [Problem("duplicate_image_question", "error", msg, tuple(ids))]


def letter_balance(df: pl.DataFrame) -> pl.DataFrame:
    """Per key letter: observed count, expected count under a uniform spread over each item's options.

    Items whose key is not one of their options are left out (``answer_not_in_options``
    reports them).
    """
    t = df.select(n=pl.col("options").list.len().fill_null(0), a=pl.col("answer").str.strip_chars())
    t = t.filter((pl.col("n") > 0) & pl.col("a").is_in(list(LETTERS)))
    t = t.filter(pl.col("a").replace_strict({L: i for i, L in enumerate(LETTERS)}, return_dtype=pl.Int64) < pl.col("n"))
    observed = dict(t.group_by("a").len().iter_rows())
    per_k = dict(t.group_by("n").len().iter_rows())
    rows = []
    for i, L in enumerate(LETTERS):
        expected = sum(cnt / k for k, cnt in per_k.items() if k > i)
        if expected > 0:
            rows.append((L, observed.get(L, 0), expected))
    return pl.DataFrame(rows, schema={"letter": pl.String, "observed": pl.Int64, "expected": pl.Float64}, orient="row")


def _chi_square_p(observed: list[float], expected: list[float]) -> float:
    """Goodness-of-fit p-value, letters with expected < 5 pooled into one bin."""
    from scipy.special import chdtrc  # chi2.sf without importing scipy.stats (0.4 s more at start-up)

    big = [(o, e) for o, e in zip(observed, expected) if e >= 5]
    small = [(o, e) for o, e in zip(observed, expected) if e < 5]
    if small:
        big.append((sum(o for o, _ in small), sum(e for _, e in small)))
    if len(big) < 2:
        return 1.0
    stat = sum((o - e) ** 2 / e for o, e in big)
    return float(chdtrc(len(big) - 1, stat))


def _check_answer_balance(df: pl.DataFrame) -> list[Problem]:
    bal = letter_balance(df)
    n = int(bal["observed"].sum()) if bal.height else 0
    if n == 0 or bal.height < 2:
        return []
    obs, exp = bal["observed"].to_list(), bal["expected"].to_list()
    p = _chi_square_p(obs, exp)
    dev = [(o - e) / n for o, e in zip(obs, exp)]
    worst = max(range(len(dev)), key=lambda i: abs(dev[i]))
    if not (p < IMBALANCE_P and abs(dev[worst]) >= IMBALANCE_SHARE):
        return []
    letters = bal["letter"].to_list()
    spread = ", ".join(f"{L} {o / n:.0%} (expected {e / n:.0%})" for L, o, e in zip(letters, obs, exp))
    over = letters[max(range(len(dev)), key=lambda i: dev[i])]
    ids = df.filter(pl.col("answer").str.strip_chars() == over)["_id"].to_list()
    msg = (f"answer letters are unevenly spread over {n} items (chi-square p = {p:.1e}): {spread}; "
           f"items keyed {over}")
    return [_problem("answer_imbalance", "warning", msg, ids)]


def check_table(df: pl.DataFrame, *, allow_no_image: bool = False) -> list[Problem]:
    """Every problem of ``df`` that would embarrass a published benchmark, errors first.

    ``df`` is an items table (any stage file, or an export read back by ingest). Deterministic:
    the same table gives the same problems in the same order.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        return [Problem("missing_column", "error", f"the table lacks column(s) {missing}: not an mmcurate items table", ())]
    if df.height == 0:
        return [Problem("empty", "error", "the table has no items", ())]
    df = df.with_columns(_id=pl.col("item_id").cast(pl.String).fill_null(
        pl.format("(row {})", pl.int_range(1, pl.len() + 1))))
    problems = [
        *_check_duplicate_ids(df),
        *_check_no_image(df, allow_no_image),
        *_check_options(df),
        *_check_categories(df),
        *_check_taxonomy(df),
        *_check_groups(df),
        *_check_duplicate_image_question(df),
        *_check_answer_balance(df),
    ]
    return sort_problems(problems)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Errors first, then in ``CODES`` order (unknown codes last, by name)."""
    order = {c: i for i, c in enumerate(CODES)}
    return sorted(problems, key=lambda p: (p.severity != "error", order.get(p.code, len(order)), p.code))


# --------------------------------------------------------------------------------------
# Folders: a workspace stage, or an export read back with our own readers
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    """What ``check_folder`` looked at and what it found."""

    what: str  # e.g. "ws/balanced.parquet" or "out/tsv/set.tsv (export, tsv)"
    items: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not has_errors(self.problems)

    def as_dict(self) -> dict:
        return {**summary(self.problems), "checked": self.what, "items": self.items}


#: How ingest's reasons for not keeping a row of an export map to check codes.
_LEDGER_CODES = {
    "empty_option": "padding_option",
    "options_not_contiguous": "padding_option",
    "answer_not_in_options": "answer_not_in_options",
    "missing_answer": "answer_not_in_options",
    "duplicate_id": "duplicate_id",
    "too_few_options": "too_few_options",
    "no_image": "no_image",
    "restored_none_option": "padding_option",
}
#: Reasons of kept rows (ledger notes) that the table checks do not see again.
_LEDGER_NOTES = ("restored_none_option",)


def is_workspace(path: Path) -> bool:
    from curate.workspace import STAGE_FILES

    return path.is_dir() and any((path / f).is_file() for f in STAGE_FILES.values())


def export_source(path: Path) -> Path:
    """The file or folder of an export that ingest reads (hf: the save_to_disk folder itself)."""
    if path.is_file():
        return path
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return path
    if any((path / "data").glob("*.parquet")) or any(path.glob("*.parquet")):
        return path
    files = sorted(f for ext in ("*.tsv", "*.jsonl") for f in path.glob(ext))
    if len(files) == 1:
        return files[0]
    if len(files) > 1:
        raise UserError(f"{path}: several data files ({', '.join(f.name for f in files)}); check one of them")
    raise UserError(f"{path}: neither a workspace (no stage .parquet files) nor an export "
                    "(no dataset_dict.json, data/*.parquet, .tsv or .jsonl)")


def check_folder(path: str | Path, *, stage: str | None = None, allow_no_image: bool = False) -> CheckResult:
    """Check a workspace's stage (default: the newest one) or an export folder / file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such workspace or export folder")
    if is_workspace(path):
        from curate.export import EXPORT_STAGES
        from curate.workspace import Workspace

        ws = Workspace(path)
        stage = stage or ws.newest(EXPORT_STAGES)
        df = ws.read(stage)
        return CheckResult(str(ws.path(stage)), df.height, check_table(df, allow_no_image=allow_no_image))
    if stage is not None:
        raise UserError(f"--stage {stage}: {path} is an export, not a workspace; --stage picks a workspace's stage file")
    return check_export(path, allow_no_image=allow_no_image)


def check_export(path: str | Path, *, allow_no_image: bool = False) -> CheckResult:
    """Read an export back with ``curate.ingest`` (as a user of the set would) and check it.

    Rows ingest does not keep become problems; kept rows get back the export's own
    ``item_id``, ``category`` and ``l2_category`` before ``check_table``.
    """
    import tempfile

    from curate.formats import detect_format
    from curate.ingest import ingest_to_workspace
    from curate.workspace import Workspace

    src = export_source(Path(path))
    fmt = detect_format(src)
    with tempfile.TemporaryDirectory(prefix="mmcurate-check-") as tmp:
        ingest_to_workspace([src], tmp)
        ws = Workspace(tmp)
        items, ledger = ws.read("items"), ws.ledger()
    items = _restore_export_fields(items)
    not_kept = ledger.filter((pl.col("status") != "kept") | pl.col("reason").is_in(list(_LEDGER_NOTES)))
    problems = check_table(items, allow_no_image=allow_no_image) if items.height else []
    restored = set(_row_ids(src, fmt, not_kept.filter(pl.col("reason") == "restored_none_option")).values())
    problems = _without_restored(problems, restored)
    if items.height == 0 and not_kept.height == 0:
        problems = [Problem("empty", "error", "the export has no items", ())]
    problems += _ledger_problems(not_kept, _row_ids(src, fmt, not_kept), allow_no_image)
    rows = items.height + ledger.filter(pl.col("status") != "kept").height
    return CheckResult(f"{src} (export, {fmt})", rows, _merge(problems))


def _without_restored(problems: list[Problem], restored: set[str]) -> list[Problem]:
    """Items whose padding ingest restored as 'None' are reported as ``padding_option`` (the file holds
    the padding); the 'None' they now show is not a second finding."""
    out = []
    for p in problems:
        if p.code == "na_option" and restored:
            rest = [i for i in p.item_ids if i not in restored]
            if rest:
                out.append(_na_option_problem(rest))
            continue
        out.append(p)
    return out


def _restore_export_fields(items: pl.DataFrame) -> pl.DataFrame:
    """The export's own item_id / category / l2_category from each item's ``meta`` (the original row).

    Ingest names items ``<source>:<index>`` and maps categories through the taxonomy; the check
    must judge (and name) what the export holds. The readers have already turned ``ClassLabel``
    ids into their names (``curate.formats.tables``)."""
    if items.height == 0:
        return items
    ids, cats, l2s = [], [], []
    for item_id, meta, cat, l2 in items.select("item_id", "meta", "category", "l2_category").iter_rows():
        row = json.loads(meta) if meta else {}
        ids.append(str(row["item_id"]) if row.get("item_id") not in (None, "") else item_id)
        cats.append(_label(row, ("category",), cat))
        l2s.append(_label(row, ("l2_category", "l2-category"), l2))
    return items.with_columns(item_id=pl.Series(ids, dtype=pl.String), category=pl.Series(cats, dtype=pl.String),
                              l2_category=pl.Series(l2s, dtype=pl.String))


def _label(row: dict, keys: tuple[str, ...], fallback: str | None) -> str | None:
    """A category cell as text: the export's own value when it has the column, else ingest's mapping."""
    for key in keys:
        if key not in row:
            continue
        value = row[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return str(value).strip() or None
    return fallback


def _row_ids(src: Path, fmt: str, not_kept: pl.DataFrame) -> dict[int, str]:
    """Row number -> the export's item_id for rows ingest did not keep (read again, cheaply)."""
    if not_kept.height == 0:
        return {}
    from curate.formats import ReadOptions, get_reader

    wanted = set(not_kept["row"].to_list())
    out = {}
    for srow in get_reader(fmt)(src, ReadOptions()):
        if srow.row in wanted and srow.data.get("item_id") not in (None, ""):
            out[srow.row] = str(srow.data["item_id"])
    return out


def _ledger_problems(not_kept: pl.DataFrame, row_ids: dict[int, str], allow_no_image: bool) -> list[Problem]:
    """Rows of an export that ingest dropped or quarantined, as problems (one per code)."""
    by_code: dict[tuple[str, Severity], list[tuple[str, str]]] = {}
    for r in not_kept.sort("row").iter_rows(named=True):
        code = _LEDGER_CODES.get(r["reason"], "unreadable_row")
        severity: Severity = "error"
        if code == "no_image" and allow_no_image:
            code, severity = "no_image_skipped", "warning"
        ident = row_ids.get(r["row"]) or f"row {r['row']}"
        by_code.setdefault((code, severity), []).append((ident, r["detail"] or r["reason"] or ""))
    out = []
    for (code, severity), rows in by_code.items():
        ids = [i for i, _ in rows]
        if code == "no_image_skipped":
            what = (f"{_plural(len(ids), 'row', 'have')} an empty image cell: readers (ingest, VLMEvalKit) skip them, "
                    "so they are not checked further")
        elif code == "padding_option":
            what = f"{_plural(len(ids), 'row')} of the export {'holds' if len(ids) == 1 else 'hold'} an empty or 'nan' option (first: {rows[0][1]})"
        else:
            what = f"{_plural(len(ids), 'row')} of the export cannot be read back as items (first: {rows[0][1]})"
        out.append(_problem(code, severity, what, ids))
    return out


def _merge(problems: list[Problem]) -> list[Problem]:
    """One problem per (code, severity): rows ingest refused and items the table checks found, together."""
    merged: dict[tuple[str, str], Problem] = {}
    for p in problems:
        key = (p.code, p.severity)
        if key in merged:
            old = merged[key]
            ids = old.item_ids + tuple(i for i in p.item_ids if i not in old.item_ids)
            merged[key] = Problem(p.code, p.severity, f"{old.message}; {p.message}", ids)
        else:
            merged[key] = p
    return sort_problems(merged.values())
