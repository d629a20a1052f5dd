"""The named answer matchers side by side (curate.mc): where they agree, and where they differ on purpose."""

from __future__ import annotations

import pytest

from curate.errors import UserError
from curate.mc import MATCHER_NAMES, extract

OPTIONS = ["red", "blue", "green", "yellow"]

# reply -> (mmstar, option_text, generated)
CASES = {
    "B": ("B", "B", "B"),
    "(C) green": ("C", "C", "C"),
    "The answer is D": ("D", "D", "D"),
    # MMStar's rule reads the character after "the answer is ": "(" is no letter.
    "The answer is (B).": (None, "B", "B"),
    # MMStar's known quirk, kept to reproduce its numbers: a leading article reads as option A.
    "a blue car": ("A", "B", "B"),
    "I think it is blue": (None, "B", "B"),
    "Sorry, I can't help with images": (None, None, None),
    "blue or green": ("B", None, None),
}


@pytest.mark.parametrize("reply", list(CASES))
def test_matchers_side_by_side(reply):
    got = tuple(extract(reply, OPTIONS, name) for name in MATCHER_NAMES)
    assert got == CASES[reply], f"{reply!r}: {dict(zip(MATCHER_NAMES, got))}"


def test_unknown_matcher_is_a_user_error():
    with pytest.raises(UserError, match="matcher='nope' is not known"):
        extract("B", OPTIONS, "nope")
