"""MMStar-style text-only prompts: the question as a VLM would see it, minus the image.

Why this shape: MMStar asks each LLM with the same hint / question / options / instruction
layout VLMEvalKit uses, so a text-only hit means "this item's text gives the answer away"
under the very prompt an evaluator will use. The few-shot prefix (0 or 2 worked examples from
a permissive text MCQ set shipped in ``data/``) is identical for every question, which is what
lets a backend compute its KV cache once and reuse it.

``TEMPLATE_VERSION`` is part of every cache key: change the wording, bump it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from curate.schema import LETTERS

TEMPLATE_VERSION = "mmstar-v1"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
ANSWER_CUE = "Answer:"
FEWSHOT_FILE = "fewshot_mmlu.jsonl"


@dataclass(frozen=True)
class Prompt:
    """One request: the shared prefix and the question-specific suffix, kept apart for KV reuse."""

    prefix: str  # few-shot examples ("" for 0-shot); identical for every question of a member
    body: str  # this question, ending with the answer cue
    n_options: int

    @property
    def text(self) -> str:
        return self.prefix + self.body


def format_question(question: str, options: list[str], hint: str | None = None) -> str:
    """The question block without the answer cue (MMStar / VLMEvalKit layout)."""
    lines = []
    if hint and hint.strip():
        lines.append(f"Hint: {hint.strip()}")
    lines.append(f"Question: {question.strip()}")
    lines.append("Options:")
    lines.extend(f"{LETTERS[i]}. {str(opt).strip()}" for i, opt in enumerate(options))
    lines.append(INSTRUCTION)
    return "\n".join(lines)


@lru_cache(maxsize=4)
def fewshot_examples(name: str = FEWSHOT_FILE) -> tuple[dict, ...]:
    from curate.assets import asset_path

    with open(asset_path(name), encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def fewshot_prefix(shots: int) -> str:
    """The worked examples every question of a member is preceded by (empty for 0-shot)."""
    if shots == 0:
        return ""
    examples = fewshot_examples()[:shots]
    if len(examples) < shots:
        raise ValueError(f"{FEWSHOT_FILE} holds {len(examples)} examples, {shots} requested")
    return "".join(
        f"{format_question(ex['question'], ex['options'], ex.get('hint'))}\n{ANSWER_CUE} {ex['answer']}\n\n" for ex in examples
    )


def build_prompt(question: str, options: list[str], hint: str | None = None, *, shots: int = 0) -> Prompt:
    """A loglik / completion prompt: prefix + question block + "Answer:" (next token: " A".." J")."""
    return Prompt(fewshot_prefix(shots), f"{format_question(question, options, hint)}\n{ANSWER_CUE}", len(options))


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The same request as chat turns, for ``generate`` with an instruct model's chat template.

    Few-shot examples become earlier user/assistant turns, so the shared prefix is still a
    shared token prefix once the template is applied.
    """
    messages: list[dict[str, str]] = []
    for block in [b for b in prompt.prefix.split("\n\n") if b.strip()]:
        q, _, a = block.rpartition(f"\n{ANSWER_CUE} ")
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}]
    body = prompt.body[: -len(ANSWER_CUE)].rstrip("\n")
    messages.append({"role": "user", "content": body})
    return messages


def rotate(options: list[str], answer: str, shift: int) -> tuple[list[str], str]:
    """Options rotated by ``shift`` positions (CircularEval) and the key's new letter."""
    n = len(options)
    shift %= n
    rotated = options[shift:] + options[:shift]
    old = LETTERS.index(answer) if answer in LETTERS[:n] else None
    new = LETTERS[(old - shift) % n] if old is not None else answer
    return rotated, new
