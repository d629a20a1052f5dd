"""Malformed items: broken option lists, answers that point nowhere, and trap options.

Two severities, because they call for different actions:

- *drop* (``malformed_drop`` true): the item cannot be asked or scored as written -- an empty
  question, fewer than 2 options, an empty option, an answer letter that is missing or beyond
  the options, or the correct option repeated by another option (two right answers).
- *flag only*: the item still has one right answer but is weaker than it looks -- two
  distractors identical after normalisation (fewer real choices, higher chance rate), or a trap
  option such as "All of the above", "None of these", "Both A and B". MMStar-style curation keeps
  those for a reviewer to judge; set ``drop_trap_options = true`` to drop them instead.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

import polars as pl

from curate.schema import LETTERS
from filters.checks import check_frame
from filters.leak import normalise_text

if TYPE_CHECKING:
    from filters.rules import RuleConfig

NAME = "malformed"

#: Option texts that refer to other options instead of stating an answer (matched on normalised text).
_TRAPS = [
    re.compile(r"\b(all|none|neither|both|any) of (the )?(above|these|those|them|the above|previous|preceding)\b"),
    re.compile(r"\b(all|none) (of )?the (above|options|choices)\b"),
    re.compile(r"^(both|either|neither)? ?[a-j] (and|or|nor|&) [a-j]$"),
    re.compile(r"^(both|all|none|neither) (are|is) (correct|right|true)$"),
    re.compile(r"以上(都|皆|全)(是|对|不是|不对|正确|错误)|以上(选项|答案)?均"),
]


def _option_key(option: str | None) -> str:
    """Comparison key for duplicate options: case and spacing ignored, signs and symbols kept
    ("-$1,890.98" and "$1,890.98" are different answers)."""
    text = unicodedata.normalize("NFKC", option or "").casefold()
    return "".join(text.split()).rstrip(".")


def _trap(option: str) -> bool:
    norm = normalise_text(option)
    return any(p.search(norm) for p in _TRAPS)


def _findings(question: str | None, options: list[str | None] | None, answer: str | None) -> tuple[list[str], list[str]]:
    """(hard findings, soft findings) as human sentences."""
    hard: list[str] = []
    soft: list[str] = []
    options = list(options or [])
    if not normalise_text(question):
        hard.append("the question is empty (no words)")
    if len(options) < 2:
        hard.append(f"only {len(options)} option(s); a multiple-choice item needs at least 2")
    for i, opt in enumerate(options):
        if opt is None or not str(opt).strip():
            hard.append(f"option {LETTERS[i] if i < len(LETTERS) else i + 1} is empty")
    idx = -1
    if not answer or len(answer.strip()) != 1 or answer.strip().upper() not in LETTERS:
        hard.append(f"the answer {answer!r} is not an option letter")
    else:
        idx = LETTERS.index(answer.strip().upper())
        if idx >= len(options):
            last = LETTERS[len(options) - 1] if options else "none"
            hard.append(f"the answer {answer.strip()} is not among the options (A-{last})")
            idx = -1

    seen: dict[str, int] = {}
    for i, opt in enumerate(options):
        key = _option_key(opt)
        if not key:
            continue
        if key in seen:
            j = seen[key]
            pair = f'options {LETTERS[j]} and {LETTERS[i]} are the same ("{(opt or "").strip()}")'
            if idx in (i, j):
                hard.append(pair + ", and one of them is the correct answer")
            else:
                soft.append(pair + " (flag only: one distractor fewer)")
        else:
            seen[key] = i
    for i, opt in enumerate(options):
        if opt and _trap(opt):
            soft.append(f'option {LETTERS[i]} "{opt.strip()}" is an all/none-of-the-above-style trap (flag only)')
    return hard, soft


def check_malformed(items: pl.DataFrame, config: RuleConfig) -> pl.DataFrame:
    """Flag malformed items; ``malformed_drop`` says which findings are severe enough to drop.

    Columns: ``item_id``, ``malformed_flag`` (any finding), ``malformed_score`` (1.0 when it
    drops, 0.5 for flag-only findings, else 0.0), ``malformed_reason`` (findings joined by
    "; "), ``malformed_drop``.
    """
    flags, scores, reasons, drops = [], [], [], []
    for q, opts, ans in zip(items["question"].to_list(), items["options"].to_list(), items["answer"].to_list()):
        hard, soft = _findings(q, opts, ans)
        traps_drop = config.drop_trap_options and any("trap" in s for s in soft)
        drop = bool(hard) or traps_drop
        flags.append(bool(hard or soft))
        scores.append(1.0 if drop else 0.5 if soft else 0.0)
        reasons.append("; ".join(hard + soft) or None)
        drops.append(drop)
    return check_frame(NAME, items["item_id"], flags, scores, reasons, drop=pl.Series(drops, dtype=pl.Boolean))
