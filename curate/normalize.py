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
import unicodedata
from dataclasses import dataclass
from typing import Any

from curate.errors import RowError
from curate.formats import ImageRef, SourceRow, storable_name
from curate.images import (
    DEFAULT_MAX_PIXELS,
    decode_base64,
    image_from_file,
    image_struct,
)
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
#: Sources whose own category columns have other names. ``source_category`` / ``source_l2_category``
#: come first: our own exports (hf, parquet, jsonl, tsv) carry the source's categories there and
#: MMStar's capability / dimension in ``category`` / ``l2-category``, so a round trip keeps both.
SOURCE_CATEGORY_ALIASES = ("source_category", "category", "field", "subject", "question_category")
SOURCE_L2_ALIASES = ("source_l2_category", "l2-category", "l2_category", "subfield", "topic", "sub_category")

_EMBEDDED_OPTIONS = re.compile(r"\n\s*Options:\s*(?=A[:.)]\s)", re.IGNORECASE)
_OPTION_SPLIT = re.compile(r"(?:^|,\s+|\n\s*)([A-J])[:.)]\s+")
#: MathVista's style, as MMStar keeps it: "...\nChoices:\n(A) 1\n(B) 2" -- or the same lines with no
#: "Choices:" header at the very end of the question (7 of MMStar's MathVista rows).
_CHOICE_LINES = re.compile(r"(?:\n[ \t]*Choices:[ \t]*)?((?:\n[ \t]*\([A-J]\)[^\n]*)+)\s*$")
_CHOICE_LINE = re.compile(r"^[ \t]*\(([A-J])\)[ \t]?(.*)$", re.M)

#: Texts that stand for a missing value when a table went through pandas: ``str(float("nan"))`` is what
#: MMStar's own files pad 2- and 3-option items with ("C: nan, D: nan"). A blank cell counts too.
NA_TEXTS = frozenset({"nan", "NaN"})
#: What an NA cell that cannot be padding stood for: a real option follows it, or it is the key.
#: pandas reads the option text "None" as NaN (``na_values``), and that is what such cells held
#: wherever we could check: SEED-Bench in VLMEvalKit's xlsx ("How many tree stumps ...? A: <blank>,
#: B: Two, C: One", key A; 180 rows), and MMStar's own files, which show the cell as "nan" and still
#: count it as an option (items 268 and 273: the key; 391: "A: Two, B: One, C: nan, D: Three").
#: Shifting the letters would change the key; dropping the row would lose a real item. A restored
#: row is kept with ledger reason ``restored_none_option`` naming the letters, so it is never silent.
RESTORED_NA_TEXT = "None"
#: Most characters of question + hint + options an item may have (``text_too_long`` above it).
#: Why 16,000: about 4,000-5,000 tokens of English (3.5-4 characters a token), which with the
#: image tokens and the answer still fits an 8,192-token panel context, and is five times the
#: longest real item in ../shared/data (MMMU dev: 3,079; ScienceQA with its hint: 2,209). A
#: cell past it is a paste error or an attack (a 193 KB question made ``screen`` ask torch for
#: 32 GB); no panel model should ever be sent more. Checked at ingest, not truncated, so what
#: is screened is exactly what the source says. This is the ingest-wide ceiling; a panel member
#: with a smaller context (llama.cpp's default ``n_ctx`` is 2,048) still checks its own prompt.
MAX_TEXT_CHARS = 16_000
#: Option columns past J: a table that goes on to K has an 11th option we cannot hold.
EXTRA_LETTERS = "KLMNOPQRSTUVWXYZ"
#: Key of an item dict carrying (reason, field, detail) for the ledger of a *kept* row; ingest pops it.
NOTE_KEY = "_ledger_note"


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
    extra_letters: tuple[str, ...]  # option columns K, L, ... following a present J
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
            extra_letters=_extra_letters(present),
            source_category=source_aliases(SOURCE_CATEGORY_ALIASES, present),
            source_l2=source_aliases(SOURCE_L2_ALIASES, present),
        )
        opts._plans[keys] = plan
    return plan


def source_aliases(aliases: tuple[str, ...], present: set[str]) -> tuple[str, ...]:
    """The columns to take a source category from, in order. An explicit ``source_category`` /
    ``source_l2_category`` column (our exports) is the only one when present, even where blank:
    a blank there means the source had none, and ``category`` then holds MMStar's capability."""
    explicit = aliases[0]
    return (explicit,) if explicit in present else tuple(c for c in aliases if c in present)


def _extra_letters(present: set[str]) -> tuple[str, ...]:
    """Columns K, L, ... that continue A..J (only when J itself is a column: a lone "K" column
    in a table with options A-D is something else)."""
    if "J" not in present:
        return ()
    out = []
    for L in EXTRA_LETTERS:
        if L not in present:
            break
        out.append(L)
    return tuple(out)


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


#: Bytes that were not UTF-8 (surrogateescape), or a lone surrogate from a JSON ``\\udXXX`` escape:
#: neither can be written as UTF-8, so such a row must stop here, not crash the parquet writer.
_UNDECODABLE = re.compile("[\ud800-\udfff]")


def _check_text(value: str, field: str) -> str:
    # ASCII text cannot hold surrogates: skip the regex for the common case.
    if not value.isascii() and _UNDECODABLE.search(value):
        raise RowError("bad_encoding", field, f"field {field!r} is not valid UTF-8 text")
    if "\x00" in value:  # binary data pasted into a cell; C-string consumers would cut the text there
        raise RowError("bad_encoding", field, f"field {field!r} holds a NUL byte: binary data, not text")
    return value


def _invisible(text: str) -> bool:
    """Whether ``text`` shows nothing: only format (zero-width space, BOM, bidi marks), control and
    separator characters. ``str.isprintable`` answers the common case without a per-character loop."""
    if text.isprintable() and not text.isspace():
        return False
    return all(unicodedata.category(ch)[0] in "CZ" for ch in text)


def _scalar(value: Any, field: str, reason: str) -> Any:
    """A cell that must be one value: a list or struct (parquet/JSON) printed as "[1]" would be a
    silently invented text, so it is quarantined instead."""
    if isinstance(value, (list, tuple, dict, bytes, bytearray)):
        raise RowError(reason, field, f"field {field!r} must be a single text value, got {type(value).__name__}")
    return value


def _is_na(value: Any) -> bool:
    """An option cell that holds no option: blank, or the text pandas writes for NaN."""
    return _blank(value) or (isinstance(value, str) and value.strip() in NA_TEXTS)


def _options(data: dict, plan: ColumnPlan, question: str) -> tuple[list[Any], str, str]:
    """Option cells in letter order (missing ones as None, padding not yet removed), the question
    with any embedded options taken out, and the field the options came from."""
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
        return [None if _is_na(v) else _check_text(_text(_scalar(v, col, "bad_options")), col) for v in value], question, col
    if plan.letters:
        cells = [None if _is_na(data[L]) else _check_text(_text(_scalar(data[L], L, "bad_options")), L) for L in plan.letters]
        extra = next((L for L in plan.extra_letters if not _is_na(data[L])), None)
        if extra is not None:
            raise RowError("too_many_options", extra, f"option column {extra!r} is filled: more than {MAX_OPTIONS} options (A-J) cannot be held")
        if any(c is not None for c in cells):
            if list(plan.letters) != list(LETTERS[: len(plan.letters)]):
                raise RowError("options_not_contiguous", plan.letters[-1], f"option columns {list(plan.letters)} are not contiguous from A (a gap would shift letters)")
            return cells, question, "A"
    return split_embedded_options(question)


def split_embedded_options(question: str) -> tuple[list[Any], str, str]:
    """Options written inside the question, in MMStar's two styles ("Options: A: x, B: y" and
    MathVista's "Choices:\n(A) x\n(B) y"); ([], question, "options") when there are none."""
    match = _EMBEDDED_OPTIONS.search(question)
    if match:  # MMStar on the Hub: "...?\nOptions: A: x, B: y, C: z"
        parts = _OPTION_SPLIT.split(question[match.end() :])
        found = dict(zip(parts[1::2], (p.strip().rstrip(",").strip() for p in parts[2::2])))
        rest = question[: match.start()].rstrip()
    elif (match := _CHOICE_LINES.search(question)) is not None:
        found = {L: text.strip() for L, text in _CHOICE_LINE.findall(match.group(1))}
        rest = question[: match.start()].rstrip()
    else:
        return [], question, "options"
    letters = sorted(found)
    if not letters or letters != list(LETTERS[: len(letters)]) or not rest:
        return [], question, "options"
    return [None if _is_na(found[L]) else found[L] for L in letters], rest, "question"


def _settle_options(cells: list[Any], answer: Any, field: str) -> tuple[list[str], str | None]:
    """Real options from option cells, and a ledger note when a cell was restored.

    Trailing NA cells are padding and go (MMStar: "C: nan, D: nan" on a 2-option item). An NA
    cell that cannot be padding -- a real option follows it, or it is the key -- is restored as
    ``RESTORED_NA_TEXT`` (see there) instead of shifting the letters after it.
    """
    key = _text(answer)
    key_pos = LETTERS.index(key.upper()) if key and len(key) == 1 and key.upper() in LETTERS else None
    last = max((i for i, c in enumerate(cells) if c is not None), default=-1)
    if key_pos is not None and last < key_pos < len(cells):
        last = key_pos
    restored = [LETTERS[i] for i in range(last + 1) if cells[i] is None]
    if not restored:
        return list(cells[: last + 1]), None
    options = [RESTORED_NA_TEXT if c is None else c for c in cells[: last + 1]]
    return options, (f"option(s) {', '.join(restored)} empty or 'nan' before a real option or as the key: restored as "
                     f"{RESTORED_NA_TEXT!r} (pandas reads the option text 'None' as NaN)")


_LETTER_DECORATED = re.compile(r"\(?[A-J]\)?[.:]?")  # "(B)", "B.", "C:"


def _answer_letter(raw: Any, options: list[str], field: str, *, text_first: bool = False) -> str:
    """The key as a letter, from a letter ("B", "(B)", "B."), an option's text, or a 0-based index.

    A number can be both: options "1".."4" with answer "2" is option B by text and C by index.
    The rule: a value typed as an integer (HF ``ClassLabel``, MMLU's int column) is an index;
    a text answer is an option's text when options came as a list (MathVista's ``choices``,
    whose ``answer`` is always the choice text) and otherwise ambiguous -- quarantined
    (``ambiguous_answer``) rather than guessed. Text that matches no option may be an index.
    """
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
    typed_int = isinstance(raw, int) and not isinstance(raw, bool)
    by_index = int(text) if (typed_int or text.isdigit()) and 0 <= int(text) < len(options) else None
    if typed_int and by_index is not None:
        return letters[by_index]
    matches = [i for i, o in enumerate(options) if o.strip().lower() == text.lower()]
    # The same text twice (MathVista pid 781: "9, 12, 18, 18", answer "18"): the first, as MMStar keyed it
    # (its item 1236); the row's ledger note says the options repeat.
    by_text = matches[0] if matches and len({options[i] for i in matches}) == 1 else None
    if by_text is not None and by_index is not None and by_text != by_index and not text_first:
        raise RowError("ambiguous_answer", field, f"answer {text!r} is option {letters[by_text]}'s text and, as a 0-based index, option {letters[by_index]}")
    if by_text is not None:
        return letters[by_text]
    if by_index is not None:
        return letters[by_index]
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
    question = _text(_scalar(question, qcol or "question", "bad_field_type"))
    if question is None or _invisible(question):
        raise RowError("empty_question", qcol or "question", "the question is empty" if question is None else "the question holds only invisible characters (e.g. a zero-width space)")
    question = _check_text(question, qcol or "question")

    icol, index = _get(data, "index", plan)
    orig_index = _text(_scalar(index, icol or "index", "bad_field_type")) or str(src.row)
    if orig_index != str(src.row):
        _check_text(orig_index, icol or "index")
    item_id = f"{opts.source}:{orig_index}"

    cells, question, ocol = _options(data, plan, question)
    acol, answer = _get(data, "answer", plan)
    acol = acol or "answer"
    options, note = _settle_options(cells, answer, ocol) if cells else ([], None)
    notes = [("restored_none_option", ocol, note)] if note else []
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
        if "" in options or any(_invisible(o) for o in options):  # every option is text by now
            raise RowError("empty_option", ocol, "an option is empty or holds only invisible characters")
        normed = [" ".join(o.split()) for o in options]  # case matters: genotypes "XAXa" vs "XAXA"
        if len(set(normed)) != len(normed):
            # Kept, with its reason in the ledger: a published item (MMStar has 7) is still an item of
            # the source; the ``malformed`` rule filter decides at screening whether it can be scored.
            dup = next(o for o, n in zip(options, normed) if normed.count(n) > 1)
            notes.append(("duplicate_options", ocol, f"options repeat the same text ({dup[:40]!r})"))
        letter = _answer_letter(_scalar(answer, acol, "bad_field_type"), options, acol, text_first=ocol in FIELD_ALIASES["options"])

    images = _decode_images(src.images, opts)
    if src.has_image_column and not images and "_image_unavailable" not in data:
        raise Dropped("no_image", "the image cell is empty (VLMEvalKit skips such rows too)")

    hcol, hint = _get(data, "hint", plan)
    hint = _text(_scalar(hint, hcol or "hint", "bad_field_type"))
    hint = _check_text(hint, "hint") if hint else None
    _check_length(question, hint, options, qcol or "question", ocol)
    _, split = _get(data, "split", plan)
    source_category = _first(data, plan, "source_category", plan.source_category)
    source_l2 = _first(data, plan, "source_l2_category", plan.source_l2)
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
    if meta:  # MathVista: category lives in metadata (context + skills)
        source_category = source_category or ", ".join(meta.get("skills") or []) or None
        source_l2 = source_l2 or _text(meta.get("context"))
        split = split or meta.get("split")

    given_category = _first(data, plan, "category", plan.aliases["category"])
    given_l2 = _first(data, plan, "l2_category", plan.aliases["l2_category"])
    category, l2 = _dimension_lookup(opts.taxonomy, opts.source, source_category, source_l2, given_category, given_l2)
    return {
        "item_id": item_id,
        "source": opts.source,
        "source_file": opts.source_file,
        "row": src.row,
        "orig_index": orig_index,
        "split": _text(_scalar(split, "split", "bad_field_type")),
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
        "meta": _checked_meta(data),
    } | ({NOTE_KEY: _joined(notes)} if notes else {})


def _check_length(question: str, hint: str | None, options: list[str], qcol: str, ocol: str) -> None:
    """Quarantine an item whose prompt text is over ``MAX_TEXT_CHARS`` (see there for the number),
    naming the field that holds most of it."""
    parts = [(len(question), qcol), (len(hint or ""), "hint"), (sum(len(o) for o in options), ocol)]
    total = sum(n for n, _ in parts)
    if total > MAX_TEXT_CHARS:
        field = max(parts, key=lambda p: p[0])[1]
        raise RowError("text_too_long", field, f"question + hint + options are {total:,} characters, over the limit of {MAX_TEXT_CHARS:,} (no panel model context should see more)")


def _checked_meta(data: dict) -> str:
    """``_meta``, refusing what cannot be stored: text that is not UTF-8 in any field (a category
    byte would crash the parquet writer) and structures nested too deep to encode."""
    try:
        meta = _meta(data)
    except RecursionError:
        raise RowError("too_deeply_nested", None, "the row nests lists/objects too deeply to store") from None
    except (TypeError, ValueError) as exc:
        raise RowError("bad_field_type", None, f"the row cannot be stored as JSON ({exc})") from None
    if not meta.isascii() and _UNDECODABLE.search(meta):
        field = next((k for k, v in data.items() if _UNDECODABLE.search(k) or (isinstance(v, str) and _UNDECODABLE.search(v))), None)
        field = storable_name(field) if field is not None else None
        raise RowError("bad_encoding", field, f"field {field!r} is not valid UTF-8 text" if field else "a field is not valid UTF-8 text")
    return meta


def _joined(notes: list[tuple[str, str | None, str]]) -> tuple[str, str | None, str]:
    """Several ledger notes of one kept row as one (reason codes joined by '+')."""
    return "+".join(n[0] for n in notes), notes[0][1], "; ".join(n[2] for n in notes)


def _first(data: dict, plan: ColumnPlan, canonical: str, aliases: tuple[str, ...]) -> str | None:
    """The first present, non-blank, scalar value among ``aliases`` (or the mapped column)."""
    col = plan.mapped.get(canonical)
    if col is not None:
        return _text(data.get(col))
    for col in aliases:
        if not _blank(data[col]) and not isinstance(data[col], (dict, list, tuple, bytes, bytearray)):
            return _text(data[col])
    return None


@functools.lru_cache(maxsize=4096)
def _dimension_lookup(tax: Taxonomy, source: str, source_category: str | None, source_l2: str | None,
                      given_category: str | None = None, given_l2: str | None = None) -> tuple[str | None, str | None]:
    """MMStar's (capability, dimension): taken as is when the source already uses MMStar's strings
    (e.g. an MMStar TSV, or our own export's ``category`` / ``l2_category`` beside its
    ``source_category``), else from the taxonomy's source-category mappings, else unknown.
    Cached: a benchmark has a handful of categories and thousands of rows."""
    dims = {d.name for d in tax.dimensions}
    for value in (given_l2, given_category, source_l2, source_category):
        if value and value.strip().lower() in dims:
            dim = value.strip().lower()
            return tax.capability_of(dim), dim
    dim = tax.map_category(source, source_l2, source_category)
    if dim is None and "ai2d" in source.lower():
        dim = tax.map_category(source, "ai2d")
    return (tax.capability_of(dim), dim) if dim else (None, None)
