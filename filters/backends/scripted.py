"""A deterministic in-process backend whose answers are written down in advance (a *script*).

Why: every decision of the screen (rotation, chance correction, thresholds, copies, ledger) must be
tested against hand-worked expectations, in about a second, without a model whose answers nobody
fixed. This is a real backend -- it implements the contract of :mod:`filters.backends` on the real
prompts that :mod:`filters.prompts` builds (it reads the options back out of the prompt text, so a
rotated prompt moves an option's mass with its text) -- not a stand-in for any library.

A panel member uses it with ``backend = "scripted"`` and ``model`` = a JSON file, or the script
itself inline (a JSON object string, or a dict given to ``panel_from_dict``)::

    {"seed": 0,
     "default": {"letter": "A", "p": 0.7},
     "rules": [
        {"match": "capital of France", "text": "Paris", "p": 0.9},
        {"match": "colour of the car", "random": true, "p": 0.9},
        {"match": "largest planet", "probs": [0.1, 0.6, 0.2, 0.1]},
        {"match": "Tell me", "reply": "The answer is (B)."}
     ]}

The first rule whose ``match`` occurs in the question block of the prompt (hint, question and
options; never the few-shot examples) decides; else ``default`` (else a flat distribution). A
rule's distribution is one of:

* ``text`` + ``p``: mass ``p`` on the option whose text is ``text`` (trimmed, case-folded), the
  rest shared evenly by the other options -- a member that *knows* the item: rotating the options
  moves the mass with the text. A ``text`` that is not an option gives a flat distribution.
* ``letter`` + ``p``: mass ``p`` on that letter whatever the question -- a position-biased guesser.
* ``random`` + ``p``: mass ``p`` on a letter drawn uniformly from the options by a generator
  seeded with ``seed`` and the prompt text -- a guesser, deterministic per prompt.
* ``probs``: the distribution by letter (cut to the prompt's options and renormalised).
* ``uniform``: flat.

``generate`` replies ``reply`` when the rule has one, else the letter with the most mass.
``identity`` holds the sha256 of the canonical script, so two scripts never share cached answers.
Every prompt the backend is asked is recorded (``asked`` on the instance, and per identity in
:data:`HISTORY`, since the screen opens and closes its backends itself).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.schema import LETTERS
from filters.panel import Member
from filters.prompts import INSTRUCTION, Prompt

#: identity -> prompt texts asked, in order, over every instance of that script in this process.
HISTORY: dict[str, list[str]] = defaultdict(list)
_KINDS = ("text", "letter", "random", "probs", "uniform")
_OPTION = re.compile(r"^([A-J])\. (.*)$")
_FLOOR = 1e-12  # probability given to letters beyond the prompt's options (log of 0 is undefined)


def load_script(member: Member) -> dict[str, Any]:
    """The member's script: inline JSON (``model`` starts with "{") or a JSON file."""
    text = member.model.strip()
    where = f"member {member.name!r}"
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"{where}: script file {path} not found; fix `model` in the panel file")
        text = path.read_text(encoding="utf-8")
    try:
        script = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: the script is not valid JSON ({exc})") from exc
    if not isinstance(script, dict):
        raise UserError(f"{where}: the script must be a JSON object with 'rules' and/or 'default'")
    unknown = set(script) - {"seed", "default", "rules"}
    if unknown:
        raise UserError(f"{where}: unknown script key(s) {sorted(unknown)}; a script has 'seed', 'default' and 'rules'")
    for k, rule in enumerate(script.get("rules", [])):
        if not isinstance(rule, dict) or not isinstance(rule.get("match"), str):
            raise UserError(f"{where}: script rule {k + 1} needs a 'match' string")
        _check_rule(where, f"rule {k + 1}", rule)
    if "default" in script:
        _check_rule(where, "default", script["default"])
    return script


def _check_rule(where: str, name: str, rule: dict) -> None:
    kinds = [k for k in _KINDS if k in rule]
    if len(kinds) > 1 or (not kinds and "reply" not in rule):
        raise UserError(f"{where}: script {name} must give exactly one of {list(_KINDS)} (or only 'reply')")
    p = rule.get("p", 1.0)
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise UserError(f"{where}: script {name}.p = {p!r} must be in [0, 1]")


def parse_options(prompt: Prompt) -> list[str]:
    """The option texts of a prompt's question block ("A. red" ... up to the instruction line)."""
    out: list[str] = []
    in_options = False
    for line in prompt.body.splitlines():
        if line == "Options:":
            in_options = True
        elif line == INSTRUCTION:
            break
        elif in_options:
            m = _OPTION.match(line)
            if m and m.group(1) == LETTERS[len(out)]:
                out.append(m.group(2))
            elif out:
                out[-1] += "\n" + line  # an option text spanning lines
    return out


def _spread(n: int, j: int | None, p: float) -> list[float]:
    """Mass ``p`` on option ``j``, the rest shared evenly (flat when ``j`` is None)."""
    if j is None or n == 1:
        return [1.0 / n] * n
    rest = (1.0 - p) / (n - 1)
    return [p if i == j else rest for i in range(n)]


class ScriptedBackend:
    """Answers every prompt from its script; see the module docstring for the script format."""

    batch_independent = True  # an answer depends on its prompt only

    def __init__(self, member: Member, cache=None, **_options):
        self.member = member
        self.script = load_script(member)
        blob = json.dumps(self.script, sort_keys=True, separators=(",", ":"))
        self.identity = "scripted|sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()
        self.asked: list[str] = []

    def _rule(self, prompt: Prompt) -> dict:
        block = prompt.body
        for rule in self.script.get("rules", []):
            if rule["match"] in block:
                return rule
        return self.script.get("default", {"uniform": True})

    def distribution(self, prompt: Prompt) -> list[float]:
        """The scripted option distribution for ``prompt`` (length = its option count)."""
        options = parse_options(prompt)
        n = len(options) or prompt.n_options
        rule = self._rule(prompt)
        p = float(rule.get("p", 1.0))
        if "text" in rule:
            want = str(rule["text"]).strip().casefold()
            found = [i for i, o in enumerate(options) if o.strip().casefold() == want]
            return _spread(n, found[0] if found else None, p)
        if "letter" in rule:
            j = LETTERS.index(rule["letter"]) if rule["letter"] in LETTERS[:n] else None
            return _spread(n, j, p)
        if "random" in rule:
            seed = hashlib.sha256(f"{self.script.get('seed', 0)}|{prompt.text}".encode()).digest()
            return _spread(n, random.Random(seed).randrange(n), p)
        if "probs" in rule:
            raw = [max(float(x), 0.0) for x in rule["probs"][:n]] + [0.0] * max(0, n - len(rule["probs"]))
            total = sum(raw)
            return [x / total for x in raw] if total > 0 else [1.0 / n] * n
        return [1.0 / n] * n

    def _record(self, prompts: list[Prompt]) -> None:
        texts = [p.text for p in prompts]
        self.asked.extend(texts)
        HISTORY[self.identity].extend(texts)

    def letter_logprobs(self, prompts: list[Prompt], n_letters: int) -> list[list[float]]:
        self._record(prompts)
        rows = []
        for prompt in prompts:
            probs = self.distribution(prompt)
            row = [math.log(max(q, _FLOOR)) for q in probs][:n_letters]
            rows.append(row + [math.log(_FLOOR)] * (n_letters - len(row)))
        return rows

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        self._record(prompts)
        out = []
        for prompt in prompts:
            rule = self._rule(prompt)
            if "reply" in rule:
                out.append(str(rule["reply"]))
                continue
            probs = self.distribution(prompt)
            out.append(LETTERS[max(range(len(probs)), key=lambda j: (probs[j], -j))])
        return out

    def close(self) -> None:
        """Nothing to release (the record of asked prompts stays readable)."""
