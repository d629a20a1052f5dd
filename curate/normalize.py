"""One source row -> one item of the schema, the same way for every format.

Column names differ between benchmarks; ``FIELD_ALIASES`` lists the spellings we know and
``--map canonical=column`` adds the user's own. A row that cannot become a valid item
raises ``RowError`` (quarantined, with field and reason); a row that is valid but out of
scope (an open question, a row without its image) raises ``Dropped``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from curate.errors import RowError
from curate.formats import ImageRef, SourceRow
from curate.images import DEFAULT_MAX_PIXELS, decode_base64, image_from_file, image_struct
from curate.schema import LETTERS, MAX_OPTIONS, MIN_OPTIONS
from curate.taxonomy import Taxonomy

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "index": ("index", "id", "pid", "question_id", "qid", "idx"),
    "question": ("question", "query", "Question", "prompt"),
    "hint": ("hint", "context", "Hint"),
    "answer": ("answer", "Answer", "label", "answer_idx", "gt_answer", "correct_answer"),
    "options": ("options", "choices", "Options", "Choices"),
    "category": ("category",),
    "l2_category": ("l2-category", "l2_category"),
    "split": ("split",),
}
#: Sources whose own category columns have other names.
SOURCE_CATEGORY_ALIASES = ("category", "field", "subject", "question_category")
SOURCE_L2_ALIASES = ("l2-category", "l2_category", "subfield", "topic", "sub_category")

_EMBEDDED_OPTIONS = re.compile(r"\n\s*Options:\s*(?=A[:.)]\s)", re.IGNORECASE)
_OPTION_SPLIT = re.compile(r"(?:^|,\s+|\n\s*)([A-J])[:.)]\s+")


class Dropped(Exception):
    """A valid row that mmcurate does not turn into an item (reason code + sentence)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class NormalizeOptions:
    source: str
    source_file: str
    column_map: dict[str, str]
    taxonomy: Taxonomy
    open_to_mcq: bool = False
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: ColumnPlan per distinct set of row keys (see ``_plan``); filled as rows arrive.
    _plans: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)


def _blank(v: Any) -> bool:
    if type(v) is str:  # the common case first: most cells are text
        return not v.strip()
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _text(v: Any) -> str | None:
    if type(v) is str:  # fast path, same result as below: blank text -> None, else stripped
        return v.strip() or None
    if _blank(v):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


@dataclass(frozen=True)
class ColumnPlan:
    """Which columns a row can take each field from, resolved once per header instead of per row.

    A field's value is the first of its alias columns that is present and not blank; which
    aliases are *present* depends only on the row's keys, and a table's keys are its fixed
    header. Probing every alias of every field in every row was the main per-row cost of
    text-only ingest, so the present ones are listed here once and rows only check blankness.
    ``mapped`` holds the user's ``--map`` columns, which are taken as they are (even if blank).
    """

    mapped: dict[str, str]
    aliases: dict[str, tuple[str, ...]]  # canonical -> present alias columns, in preference order
    letters: tuple[str, ...]  # option columns A..J present in the row
    source_category: tuple[str, ...]
    source_l2: tuple[str, ...]


_MAX_PLANS = 64  # JSON records may vary their keys; a few plans cover real files


def _plan(data: dict, opts: NormalizeOptions) -> ColumnPlan:
    """The ColumnPlan for ``data``'s keys (cached on ``opts``; built on first sight of a header)."""
    keys = tuple(data)
    plan = opts._plans.get(keys)
    if plan is None:
        if len(opts._plans) >= _MAX_PLANS:
            opts._plans.clear()
        present = set(keys)
        plan = ColumnPlan(
            mapped=dict(opts.column_map),
            aliases={k: tuple(c for c in cols if c in present) for k, cols in FIELD_ALIASES.items()},
            letters=tuple(L for L in LETTERS if L in present),
            source_category=tuple(c for c in SOURCE_CATEGORY_ALIASES if c in present),
            source_l2=tuple(c for c in SOURCE_L2_ALIASES if c in present),
        )
        opts._plans[keys] = plan
    return plan


def _get(data: dict, canonical: str, plan: ColumnPlan) -> tuple[str | None, Any]:
    """The (column, value) for a canonical field, honouring the user's column map."""
    col = plan.mapped.get(canonical)
    if col is not None:
        return col, data.get(col)
    for col in plan.aliases[canonical]:
        value = data[col]
        if (value.strip() if type(value) is str else not _blank(value)):  # str: _blank inlined
            return col, value
    return None, None


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)


def _check_text(value: str, field: str) -> str:
    # ASCII text cannot hold surrogates: skip the regex for the common case.
    if not value.isascii() and _UNDECODABLE.search(value):
        raise RowError("bad_encoding", field, f"field {field!r} is not valid UTF-8 text")
    return value


def _options(data: dict, plan: ColumnPlan, question: str) -> tuple[list[str], str, str]:
    """Options as a list in letter order, plus the question (embedded options removed) and the field name."""
    col, value = _get(data, "options", plan)
    if col is not None and not _blank(value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise RowError("bad_options", col, f"field {col!r} is text but not a JSON list of options") from None
        if isinstance(value, dict):
            value = [value[k] for k in sorted(value)]
        if not isinstance(value, (list, tuple)):
            raise RowError("bad_options", col, f"field {col!r} must be a list of options, got {type(value).__name__}")
        return [_check_text(_text(v) or "", col) for v in value], question, col
    if plan.letters:
        present = [L for L in plan.letters if not _blank(data[L])]
        if present:
            expected = list(LETTERS[: len(present)])
            if present != expected:
                raise RowError("options_not_contiguous", present[-1], f"option columns {present} are not contiguous from A (a gap would shift letters)")
            return [_check_text(_text(data[L]), L) for L in present], question, "A"
    match = _EMBEDDED_OPTIONS.search(question)
    if match:  # MMStar on the Hub: "...?\nOptions: A: x, B: y, C: z"
        tail = question[match.end() :]
        parts = _OPTION_SPLIT.split(tail)
        found = dict(zip(parts[1::2], (p.strip().rstrip(",").strip() for p in parts[2::2])))
        letters = sorted(found)
        if letters and letters == list(LETTERS[: len(letters)]):
            return [found[L] for L in letters], question[: match.start()].rstrip(), "question"
    return [], question, "options"


_LETTER_DECORATED = re.compile(r"\(?[A-J]\)?[.:]?")  # "(B)", "B.", "C:"


def _answer_letter(raw: Any, options: list[str], field: str) -> str:
    text = _text(raw)
    if text is None:
        raise RowError("missing_answer", field, f"field {field!r} is empty: no answer key")
    letters = LETTERS[: len(options)]
    if len(text) == 1 and text.upper() in LETTERS:
        if text.upper() not in letters:
            raise RowError("answer_not_in_options", field, f"answer {text!r} is not among the {len(options)} options ({letters[0]}-{letters[-1]})")
        return text.upper()
    if _LETTER_DECORATED.fullmatch(text):
        return _answer_letter(text.strip("().:"), options, field)
    if isinstance(raw, int) or text.isdigit():
        idx = int(text)  # integer label = index into the options (MMLU, HF datasets)
        if 0 <= idx < len(options):
            return letters[idx]
    matches = [i for i, o in enumerate(options) if o.strip().lower() == text.lower()]
    if len(matches) == 1:  # the answer given as the option's text (MathVista)
        return letters[matches[0]]
    raise RowError("answer_not_in_options", field, f"answer {text[:60]!r} is neither an option letter nor the text of one option")


def _seeded_rng(seed: int, item_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def numeric_distractors(answer: str, *, rng: random.Random, precision: int | None = None, n: int = 3) -> list[str]:
    """Plausible wrong numbers near ``answer`` (MMStar turned MathVista free-form items into MCQ so).

    Integers get nearby integers and simple slips (x2, /2, +-10 %); decimals get values
    within +-50 % rounded to the answer's own precision. Deterministic for ``rng``.
    """
    value = float(answer)
    decimals = precision if precision is not None else (len(answer.split(".")[1]) if "." in answer else 0)
    is_int = decimals == 0 and value.is_integer()

    def fmt(x: float) -> str:
        return str(int(round(x))) if is_int else f"{x:.{decimals}f}"

    pool: list[str] = []
    if is_int:
        v = int(value)
        steps = [1, 2, 3, 5, 10] if abs(v) >= 10 else [1, 2, 3]
        pool += [fmt(v + s) for s in steps] + [fmt(v - s) for s in steps]
        pool += [fmt(v * 2), fmt(v / 2), fmt(v * 1.5)]
    else:
        for _ in range(40):
            pool.append(fmt(value * (1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.5))))
    seen = {fmt(value)}
    out: list[str] = []
    rng.shuffle(pool)
    for cand in pool:
        if cand not in seen and not (value >= 0 and float(cand) < 0):
            seen.add(cand)
            out.append(cand)
        if len(out) == n:
            break
    if len(out) < n:
        raise Dropped("open_question_no_distractors", f"could not make {n} distinct distractors for {answer!r}")
    return out


def _open_to_mcq(answer: Any, item_id: str, data: dict, opts: NormalizeOptions) -> tuple[list[str], str]:
    text = _text(answer)
    try:
        float(text or "x")
    except ValueError:
        raise Dropped("open_question", f"open question with a non-numeric answer {text!r:.40}; only numeric answers can become multiple choice") from None
    precision = data.get("precision")
    precision = int(precision) if isinstance(precision, (int, float)) and not _blank(precision) else None
    rng = _seeded_rng(opts.seed, item_id)
    correct = text if precision is None else f"{float(text):.{precision}f}"
    options = [correct] + numeric_distractors(text, rng=rng, precision=precision)
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


def _decode_images(refs: list[ImageRef], opts: NormalizeOptions) -> list[dict]:
    images = []
    for ref in refs:
        if ref.kind == "b64":
            data = decode_base64(ref.value, ref.field)
            images.append(image_struct(data, path=None, field=ref.field, max_pixels=opts.max_pixels))
        elif ref.kind == "bytes":
            images.append(image_struct(ref.value, path=ref.path, field=ref.field, max_pixels=opts.max_pixels))
        elif ref.kind == "path":
            images.append(image_from_file(ref.value, root=ref.root, field=ref.field, max_pixels=opts.max_pixels))
        else:  # pragma: no cover - readers resolve refs
            raise RowError("bad_image", ref.field, f"unresolved image reference {ref.value!r}")
    return images


#: The encoder ``json.dumps(data, ensure_ascii=False, default=str, sort_keys=True)`` builds on
#: every call, built once (same bytes; saves constructing an encoder per row).
_META_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, sort_keys=True)


def _meta(data: dict) -> str:
    return _META_ENCODER.encode(data)


def normalize_row(src: SourceRow, opts: NormalizeOptions) -> dict:
    """Turn ``src`` into an item dict; raise RowError (quarantine) or Dropped (out of scope)."""
    if src.error is not None:
        raise src.error
    data = src.data
    plan = _plan(data, opts)
    qcol, question = _get(data, "question", plan)
    if qcol is None and "question" in opts.column_map:
        raise RowError("missing_field", opts.column_map["question"], f"column {opts.column_map['question']!r} (mapped to question) is missing")
    question = _text(question)
    if question is None:
        raise RowError("empty_question", qcol or "question", "the question is empty")
    question = _check_text(question, qcol or "question")

    icol, index = _get(data, "index", plan)
    orig_index = _text(index) or str(src.row)
    item_id = f"{opts.source}:{orig_index}"

    options, question, ocol = _options(data, plan, question)
    acol, answer = _get(data, "answer", plan)
    acol = acol or "answer"
    if not options:
        if opts.open_to_mcq:
            options, letter = _open_to_mcq(answer, item_id, data, opts)
        else:
            raise Dropped("open_question", "no options: an open question (use --open-to-mcq to turn numeric ones into multiple choice)")
    else:
        if len(options) < MIN_OPTIONS:
            raise RowError("too_few_options", ocol, f"only {len(options)} option(s); a multiple-choice item needs at least {MIN_OPTIONS}")
        if len(options) > MAX_OPTIONS:
            raise RowError("too_many_options", ocol, f"{len(options)} options; at most {MAX_OPTIONS} are supported")
        if "" in options:  # every option is text by now
            raise RowError("empty_option", ocol, "an option is empty")
        normed = [" ".join(o.lower().split()) for o in options]
        if len(set(normed)) != len(normed):
            dup = next(o for o in options if normed.count(" ".join(o.lower().split())) > 1)
            raise RowError("duplicate_options", ocol, f"options repeat the same text ({dup[:40]!r})")
        letter = _answer_letter(answer, options, acol)

    images = _decode_images(src.images, opts)
    if src.has_image_column and not images and "_image_unavailable" not in data:
        raise Dropped("no_image", "the image cell is empty (VLMEvalKit skips such rows too)")

    _, hint = _get(data, "hint", plan)
    hint = _text(hint)
    hint = _check_text(hint, "hint") if hint else None
    _, split = _get(data, "split", plan)
    source_category = _first(data, plan, "source_category", plan.source_category)
    source_l2 = _first(data, plan, "source_l2_category", plan.source_l2)
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
    if meta:  # MathVista: category lives in metadata (context + skills)
        source_category = source_category or ", ".join(meta.get("skills") or []) or None
        source_l2 = source_l2 or _text(meta.get("context"))
        split = split or meta.get("split")

    category, l2 = _mmstar_dimension(data, opts, source_category, source_l2)
    return {
        "item_id": item_id,
        "source": opts.source,
        "source_file": opts.source_file,
        "row": src.row,
        "orig_index": orig_index,
        "split": _text(split),
        "question": question,
        "hint": hint,
        "options": options,
        "answer": letter,
        "answer_text": options[LETTERS.index(letter)],
        "images": images,
        "n_images": len(images),
        "category": category,
        "l2_category": l2,
        "source_category": source_category,
        "source_l2_category": source_l2,
        "meta": _meta(data),
    }


def _first(data: dict, plan: ColumnPlan, canonical: str, aliases: tuple[str, ...]) -> str | None:
    """The first present, non-blank, scalar value among ``aliases`` (or the mapped column)."""
    col = plan.mapped.get(canonical)
    if col is not None:
        return _text(data.get(col))
    for col in aliases:
        if not _blank(data[col]) and not isinstance(data[col], (dict, list)):
            return _text(data[col])
    return None


def _mmstar_dimension(data: dict, opts: NormalizeOptions, source_category: str | None, source_l2: str | None) -> tuple[str | None, str | None]:
    return _dimension_lookup(opts.taxonomy, opts.source, source_category, source_l2)


@functools.lru_cache(maxsize=4096)
def _dimension_lookup(tax: Taxonomy, source: str, source_category: str | None, source_l2: str | None) -> tuple[str | None, str | None]:
    """MMStar's (capability, dimension): taken as is when the source already uses MMStar's strings
    (e.g. an MMStar TSV), else from the taxonomy's source-category mappings, else unknown.
    Cached: a benchmark has a handful of categories and thousands of rows."""
    dims = {d.name for d in tax.dimensions}
    for value in (source_l2, source_category):
        if value and value.strip().lower() in dims:
            dim = value.strip().lower()
            return tax.capability_of(dim), dim
    dim = tax.map_category(source, source_l2, source_category)
    if dim is None and "ai2d" in source.lower():
        dim = tax.map_category(source, "ai2d")
    return (tax.capability_of(dim), dim) if dim else (None, None)
