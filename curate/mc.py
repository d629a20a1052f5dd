"""Multiple choice in one place: option letters and the named answer matchers.

Three matchers read an option letter from a model's free-text reply, each for its own purpose, side by side
so their differences are visible and tested together:

* ``mmstar`` -- MMStar's official evaluator, literally (prefix checks on the lower-cased reply). It is
  what reproduces MMStar's published numbers, quirks included ("A cat ..." reads as option A; "The
  answer is (B)." reads as nothing, because the character after "the answer is " is "(").
* ``option_text`` -- VLMEvalKit ``can_infer``-like: a bare letter, one capital letter among the last
  tokens, "answer is X", or exactly one option's text in the reply.
* ``generated`` -- what the screening panel uses on its members' generated replies: MMStar's patterns
  anywhere in the reply, a leading letter, or exactly one option's text; "a"/"i" are never letters.

Option parsing from a question's text (MMStar's "Options: A: x, B: y" and MathVista's "Choices:")
is ``curate.normalize.split_embedded_options``.
"""

from __future__ import annotations

import re

from curate.errors import UserError
from curate.schema import LETTERS

#: The matchers by name (``extract(..., matcher=name)``); ``metrics`` accepts the first two for prediction files.
MATCHER_NAMES = ("mmstar", "option_text", "generated")

#: Phrases a model uses to refuse; such a reply never counts as an option.
_REFUSALS = ("sorry, i can't help with images", "i can't process this file", "without the image provided", "cannot determine the answer")
_TOKEN_SPLIT = re.compile(r"[\s.,:;!?()\[\]{}*#\"`]+")
_ANSWER_IS = re.compile(r"(?i)answer\s+is\s*:?\s*\(?([A-J])(?![A-Za-z])")
_BARE_LETTER = re.compile(r"^\(?([A-Ja-j])\)?[.:)]?$")



def _words(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def match_generated(reply: str, options: list[str]) -> str | None:
    """The option letter a free-text reply names, or ``None`` when it names none (or several).

    Rules in order (first that yields exactly one letter wins): MMStar's patterns "(x",
    "option x", "the answer is x" / "answer: x"; the reply starts with the letter followed by
    punctuation or the end ("B", "B.", "B) red"); exactly one option's text appears in the reply
    (whole words, lower-cased); the reply starts with the letter and a space (MMStar's plain
    first-character rule, last, and not for "a"/"i", which start "a circle" and "I think").

    >>> match_generated("The answer is (B).", ["red", "blue"])
    'B'
    >>> match_generated("blue", ["red", "blue"])
    'B'
    >>> match_generated("I cannot see the image.", ["red", "blue"]) is None
    True
    """
    letters = LETTERS[: len(options)].lower()
    s = reply.strip().lower().lstrip("*_`\"' ")
    if not s:
        return None
    cls = f"[{letters}]"
    patterns = [
        rf"\(({cls})\)", rf"\(({cls})\b", rf"\boption\s*({cls})\b", rf"\banswer\s*(?:is|:)\s*\(?({cls})\b",
    ]
    for pat in patterns:
        found = set(re.findall(pat, s))
        if len(found) == 1:
            return found.pop().upper()
        if len(found) > 1:
            return None
    m = re.match(rf"({cls})(?:$|[.):,\]*_`\"']|\s*$)", s)
    if m:
        return m.group(1).upper()
    norm_reply = f" {_words(s)} "
    matched = [i for i, opt in enumerate(options) if _words(str(opt)) and f" {_words(str(opt))} " in norm_reply]
    if len(matched) == 1:
        return LETTERS[matched[0]]
    if len(matched) > 1:  # "red" inside "dark red": prefer the one option whose text is longest and unique
        longest = max(matched, key=lambda i: len(_words(str(options[i]))))
        if all(_words(str(options[i])) in _words(str(options[longest])) for i in matched):
            return LETTERS[longest]
        return None
    m = re.match(rf"({cls})\s", s)
    if m and m.group(1) not in "ai":  # "a circle", "i think": an article or pronoun, not a letter
        return m.group(1).upper()
    return None


def match_mmstar(reply: str | None, n_options: int | None = None) -> str | None:
    """The option letter MMStar's official evaluator credits ``reply`` with, or None.

    MMStar lower-cases and strips the reply and checks, in order: the first character; the
    character after a leading ``(``; after a leading ``option ``; after a leading
    ``the answer is ``. (These are prefix checks in MMStar's script, not substring checks.)
    A reply is a hit when that character equals the key. Note the rule's known quirk, kept on
    purpose to reproduce MMStar's numbers: a sentence starting with the word "a" reads as
    option A. A letter beyond the item's option count is no answer.

    >>> match_mmstar("B. The cat"), extract_mmstar("(c) red"), extract_mmstar("The answer is D")
    ('B', 'C', 'D')
    >>> match_mmstar("Option 2") is None
    True
    """
    if reply is None:
        return None
    p = str(reply).lower().strip().replace("\n", " ")
    valid = LETTERS[: n_options or len(LETTERS)].lower()
    cand = None
    if p[:1] and p[0] in valid:
        cand = p[0]
    elif p.startswith("(") and len(p) > 1:
        cand = p[1]
    elif p.startswith("option ") and len(p) > 7:
        cand = p[7]
    elif p.startswith("the answer is ") and len(p) > 14:
        cand = p[14]
    return cand.upper() if cand and cand in valid else None


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def match_option_text(reply: str | None, options: list[str] | None) -> str | None:
    """A VLMEvalKit ``can_infer``-like extraction that also reads option texts.

    Order: a reply that is only a letter (``"b"``, ``"(C)"``); exactly one capital option
    letter among the reply's tokens, when it is among the last five tokens (VLMEvalKit's guard
    against "A" used as an article) or opens the reply as ``"C."``/``"C)"``/``"(C)"``; else
    ``answer is X``; else exactly one option's text found in the reply (whole words,
    case-insensitive). Anything else -- including refusals -- is no answer (None).

    >>> match_option_text("C. The clock tower", ["dog", "cat", "The clock tower", "bus"])
    'C'
    >>> match_option_text("A cat sitting on the mat next to the door", ["dog", "cat"])
    'B'
    >>> match_option_text("Both the dog and the cat", ["dog", "cat"]) is None
    True
    """
    if reply is None:
        return None
    text = str(reply).strip()
    if not text:
        return None
    # An empty option inside the range is still an option (SEED-Bench's "None" options were
    # lost to NaN in VLMEvalKit's files): its letter counts, its text cannot be matched.
    opts = [o if o is not None else "" for o in (options or [])]
    letters = LETTERS[: len(opts)] if opts else LETTERS
    valid = set(letters)
    lowered = _norm(text)
    if any(r in lowered for r in _REFUSALS):
        return None
    bare = _BARE_LETTER.match(text)
    if bare and bare.group(1).upper() in valid:
        return bare.group(1).upper()
    tokens = [t for t in _TOKEN_SPLIT.split(text) if t]
    found = {t for t in tokens if t in valid}
    if len(found) == 1:
        (letter,) = found
        last = max(i for i, t in enumerate(tokens) if t == letter)
        if last >= len(tokens) - 5 or re.match(rf"^\(?{letter}[.):]", text):
            return letter
    said = [m for m in _ANSWER_IS.findall(text) if m.upper() in valid]
    if said:
        return said[-1].upper()
    named = [
        L
        for L, opt in zip(letters, opts)
        if _norm(opt) and re.search(rf"(?<!\w){re.escape(_norm(opt))}(?!\w)", lowered)
    ]
    return named[0] if len(named) == 1 else None


def extract(reply: str | None, options: list[str] | None, matcher: str = "mmstar") -> str | None:
    """The option letter the named matcher (``mmstar``, ``option_text`` or ``generated``) reads in ``reply``."""
    if matcher == "mmstar":
        return match_mmstar(reply, len(options) if options else None)
    if matcher == "option_text":
        return match_option_text(reply, options)
    if matcher == "generated":
        return match_generated(reply or "", list(options or []))
    raise UserError(f"matcher={matcher!r} is not known; use one of {MATCHER_NAMES}")
