"""Answer leak: the correct option is already written in the question or the hint.

MMStar drops such items because a text-only model answers them by copying, e.g.
"What shape is this circular ring?" -> "circle". Matching is done on canonical word tokens:
lower-cased, punctuation removed, plurals singularised (``inflect``), number words turned into
digits, and a few derived adjectives mapped to their noun (circular -> circle, wooden -> wood).

Why the extra conditions (each was a false positive on real benchmarks before it was added):

- *Distinctive*: when a distractor is written in the text too ("Is the light red or green?"),
  the text names several options and does not single out the answer; not a leak.
- *Non-trivial answers*: "yes"/"no"/"true"/"none", single characters ("A", "3") and answers made
  only of stop words match by accident far too often, so they are never flagged.
- *Whole words*: "cat" does not leak into "category"; for Chinese/Japanese text, which has no
  word breaks, the answer must be at least two characters and appear as a substring.
- Numbers: an answer "3" / "three" leaks only through a number *word* in the text ("three
  apples"); digits there are givens or labels ("AC = 6", "Question 1."). "one" in "which one" /
  "one of" is a pronoun, not the number 1.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import TYPE_CHECKING

import polars as pl

from filters.checks import check_frame

if TYPE_CHECKING:
    from filters.rules import RuleConfig

NAME = "answer_leak"

_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")

#: Number words -> digits, so "Three" in an option meets "3" in the question and vice versa.
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
                      "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000"})

#: Derived forms that name the same thing as an option (adjective -> noun). Kept small and
#: concrete: every entry is a form that benchmark questions use to describe the image.
_DERIVED = {
    "circular": "circle", "triangular": "triangle", "rectangular": "rectangle",
    "spherical": "sphere", "cylindrical": "cylinder", "cubic": "cube", "cubical": "cube",
    "conical": "cone", "hexagonal": "hexagon", "pentagonal": "pentagon", "octagonal": "octagon",
    "elliptical": "ellipse", "oval": "oval", "squared": "square",
    "wooden": "wood", "metallic": "metal", "golden": "gold", "woolen": "wool", "woollen": "wool",
    "reddish": "red", "bluish": "blue", "greenish": "green", "yellowish": "yellow",
    "purplish": "purple", "pinkish": "pink", "brownish": "brown", "greyish": "grey",
    "grayish": "gray", "whitish": "white", "blackish": "black", "orangish": "orange",
}

#: Words that carry no content: an answer made only of these is never flagged.
_STOP = frozenset(
    "a an the of to in on at by for with and or is are was were be it its this that these those "
    "there here as from into onto than then so not no yes true false none both neither all any "
    "some other others unknown unsure cannot determined can be determined image picture photo "
    "many much few several more less same different".split()
)
#: Answers that are trivially short or generic (matched after normalisation, whole answer).
_TRIVIAL = frozenset({"yes", "no", "true", "false", "none", "both", "neither", "all", "not sure",
                      "unknown", "cannot be determined", "can not be determined", "other"})
_ARTICLES = frozenset({"a", "an", "the"})
#: Words before "one" that make it a pronoun ("which one", "the one on the left").
_ONE_PRONOUN_BEFORE = frozenset({"which", "each", "this", "that", "the", "any", "every", "another",
                                 "no", "only", "other", "same", "what", "first", "last"})


@functools.lru_cache(maxsize=1)
def _inflect_engine():
    import inflect  # well-kept pluraliser; imported lazily, it is slow to import

    return inflect.engine()


@functools.lru_cache(maxsize=200_000)
def canonical_token(token: str) -> str:
    """One lower-case word -> its canonical form (number digits, noun for derived adjective, singular)."""
    if token in _NUMBER_WORDS:
        return _NUMBER_WORDS[token]
    if token in _DERIVED:
        return _DERIVED[token]
    # inflect strips any final "s" ("this" -> "thi", "bus" -> "bu"): only singularise
    # words that look like regular or irregular plurals, never short function words.
    if len(token) > 3 and not token.isdigit() and not token.endswith(("ss", "us", "is", "ous")):
        singular = _inflect_engine().singular_noun(token)
        if singular:
            return singular
    return token


def normalise_text(text: str | None) -> str:
    """Unicode-fold, lower-case, punctuation to spaces, whitespace collapsed. None -> ''."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_WORD.findall(text.replace("_", " ")))


def tokens(text: str | None) -> tuple[list[str], list[str]]:
    """Return (surface words, canonical words) of a text, position by position."""
    surface = normalise_text(text).split()
    canon = [canonical_token(t) for t in surface]
    for i, word in enumerate(surface):
        if word == "one" and (
            (i > 0 and surface[i - 1] in _ONE_PRONOUN_BEFORE) or (i + 1 < len(surface) and surface[i + 1] == "of")
        ):
            canon[i] = "one"  # pronoun, not the number
    return surface, canon


def _find(needle: list[str], hay: list[str], surface: list[str] | None = None) -> int:
    """Index of the first whole-word occurrence of ``needle`` in ``hay``, or -1.

    With ``surface``, a number answer only matches a number written as a *word* in the text
    ("three apples" -> 3). Digits in a question are givens or labels ("AC = 6", "Question 1.",
    "figure 2"); on MathVista they made every match of a numeric answer a false leak.
    """
    n = len(needle)
    if n == 0:
        return -1
    first = needle[0]
    numeric = surface is not None and all(w.isdigit() for w in needle)
    for i in range(len(hay) - n + 1):
        if hay[i] == first and hay[i : i + n] == needle:
            if numeric and any(w.isdigit() for w in surface[i : i + n]):
                continue
            return i
    return -1


def _answer_phrase(option: str | None) -> list[str]:
    """Canonical words of an option, leading articles removed ("A hotel" -> ["hotel"])."""
    _, canon = tokens(option)
    while canon and canon[0] in _ARTICLES:
        canon = canon[1:]
    return canon


def _is_trivial(option: str | None, phrase: list[str], min_chars: int) -> bool:
    norm = normalise_text(option)
    if norm in _TRIVIAL:
        return True
    # a single digit may leak ("How many? ... three apples"); _find wants it as a word
    if len(norm.replace(" ", "")) < min_chars and not (len(phrase) == 1 and phrase[0].isdigit()):
        return True
    return all(w in _STOP for w in phrase)


def _leak_one(question: str | None, hint: str | None, options: list[str] | None, answer: str | None,
              min_chars: int, fields: tuple[str, ...]) -> tuple[bool, float, str | None]:
    if not options or not answer or len(answer) != 1:
        return False, 0.0, None
    idx = ord(answer.upper()) - ord("A")
    if not 0 <= idx < len(options) or not options[idx]:
        return False, 0.0, None
    correct = options[idx]
    texts = {"question": question, "hint": hint}
    phrase = _answer_phrase(correct)
    if not phrase or _is_trivial(correct, phrase, min_chars):
        return False, 0.0, None

    # Score: share of the answer's content words found anywhere in the text (a soft signal).
    content = {w for w in phrase if w not in _STOP} or set(phrase)
    all_canon: set[str] = set()
    parsed: dict[str, tuple[list[str], list[str]]] = {}
    for field in fields:
        parsed[field] = tokens(texts.get(field))
        all_canon.update(parsed[field][1])
    score = len(content & all_canon) / len(content)

    cjk = bool(_CJK.search(correct))
    for field in fields:
        surface, canon = parsed[field]
        if cjk:
            hay = "".join(surface)
            needle = "".join(normalise_text(correct).split())
            if needle not in hay:
                continue
            where, shown = 0, needle
        else:
            where = _find(phrase, canon, surface)
            if where < 0:
                continue
            shown = " ".join(surface[where : where + len(phrase)])
        # Distinctive: no other option (that is not just part of the answer) is written too,
        # and the answer is not part of another option ("same" vs "not the same").
        for j, other in enumerate(options):
            if j == idx or not other:
                continue
            other_phrase = _answer_phrase(other)
            if not other_phrase or _find(other_phrase, phrase) >= 0:
                continue
            if _find(phrase, other_phrase) >= 0:
                return False, score, None
            if _is_trivial(other, other_phrase, min_chars):
                continue
            found = (
                "".join(normalise_text(other).split()) in "".join(s for f in fields for s in parsed[f][0])
                if _CJK.search(other)
                else any(_find(other_phrase, parsed[f][1]) >= 0 for f in fields)
            )
            if found:
                return False, score, None
        said = normalise_text(correct)
        how = "" if shown == said else f' as "{shown}"'
        return True, 1.0, f'answer "{correct.strip()}" appears in the {field}{how}'
    return False, score, None


def check_answer_leak(items: pl.DataFrame, config: RuleConfig) -> pl.DataFrame:
    """Flag items whose correct option is written (normalised) in the question or hint.

    Columns: ``item_id``, ``answer_leak_flag``, ``answer_leak_score`` (1.0 when flagged, else
    the share of the answer's content words that occur in the text), ``answer_leak_reason``.
    """
    flags, scores, reasons = [], [], []
    hints = items["hint"] if "hint" in items.columns else pl.Series([None] * items.height)
    for q, h, opts, ans in zip(items["question"].to_list(), hints.to_list(), items["options"].to_list(), items["answer"].to_list()):
        f, s, r = _leak_one(q, h, opts, ans, config.leak_min_answer_chars, config.leak_fields)
        flags.append(f)
        scores.append(s)
        reasons.append(r)
    return check_frame(NAME, items["item_id"], flags, scores, reasons)
