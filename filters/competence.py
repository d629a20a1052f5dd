"""How much a member's "hit" means: its accuracy on text-answerable controls and its letter bias.

Why: a panel verdict is only as good as its members. A model that always answers "A" hits a
quarter of all 4-option items by luck -- dropping good items -- and never reveals a real leak.
So every member is first scored on a shipped control set of questions that need no image
(a fixed sample of MMLU test questions, MIT licence, ``data/controls_mmlu.jsonl``):

* accuracy with a Wilson 95 % interval; a member whose interval reaches chance is *at chance*;
* letter bias: how often it picks each letter, and (loglik) its mean probability per option
  position -- the calibrated prior;
* chance-corrected hits: the option probabilities are divided by that prior and renormalised
  (contextual calibration); a hit needs the key to win after calibration with a calibrated
  probability at least ``margin`` above 1/n, so a member that puts 0.9 on "A" everywhere does
  not "hit" every item whose key is A.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from curate.schema import LETTERS
from curate.stats import wilson_interval
from filters.prompts import build_prompt
from filters.scoring import Response, score_prompts

CONTROL_FILE = "controls_mmlu.jsonl"


@dataclass(frozen=True)
class Competence:
    member: str
    n: int
    correct: int
    chance: float
    ci_low: float
    ci_high: float
    letter_bias: dict[str, float] = field(default_factory=dict)  # share of answers per letter
    prior: tuple[float, ...] | None = None  # mean probability per option position (4-option controls)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def at_chance(self) -> bool:
        """No evidence of knowledge: the 95 % interval of its accuracy reaches the chance rate."""
        return self.n == 0 or self.ci_low <= self.chance

    def as_dict(self) -> dict:
        return {
            "member": self.member, "n": self.n, "correct": self.correct, "accuracy": self.accuracy,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "chance": self.chance, "at_chance": self.at_chance,
            "letter_bias": self.letter_bias, "prior": list(self.prior) if self.prior else None,
        }


@lru_cache(maxsize=2)
def control_items(name: str = CONTROL_FILE) -> tuple[dict, ...]:
    from curate.assets import asset_path

    with open(asset_path(name), encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def assess(backend, cache, n: int, *, advance=None) -> Competence:
    """Score ``backend``'s member on the first ``n`` control questions (cached like any request)."""
    items = control_items()[:n]
    shots = backend.member.shots
    prompts = [build_prompt(it["question"], it["options"], it.get("hint"), shots=shots) for it in items]
    responses = score_prompts(backend, prompts, [it["options"] for it in items], cache, advance=advance)
    return summarise(backend.member.name, items, responses)


def summarise(member: str, items, responses: list[Response]) -> Competence:
    n = len(items)
    correct = sum(r.letter == it["answer"] for r, it in zip(responses, items))
    counts = Counter(r.letter or "none" for r in responses)
    bias = {k: counts[k] / n for k in sorted(counts)} if n else {}
    prior = None
    probs = [r.probs for r in responses if r.probs is not None and len(r.probs) == 4]
    if probs:
        prior = tuple(sum(p[j] for p in probs) / len(probs) for j in range(4))
    chance = sum(1 / len(it["options"]) for it in items) / n if n else 0.25
    lo, hi = wilson_interval(correct, n)
    return Competence(member, n, correct, chance, lo, hi, bias, prior)


def calibrated(probs: tuple[float, ...], competence: Competence | None) -> tuple[float, ...]:
    """Option probabilities divided by the member's prior for each position, renormalised.

    Contextual calibration: a member that puts 0.6 on "B" whatever the question gets a flat
    distribution back on a question it does not know. The prior is measured on 4-option
    controls; items with another option count are left as they are.
    """
    if competence is None or competence.prior is None or len(probs) != len(competence.prior):
        return probs
    raw = [p / max(q, 1e-9) for p, q in zip(probs, competence.prior)]
    total = sum(raw)
    return tuple(r / total for r in raw)


def accepted(response: Response, n_options: int, competence: Competence | None, *, margin: float, corrected: bool) -> int | None:
    """The option position this response would count as a hit if it were the key (None: no option).

    At most one option qualifies (the winner), which is what lets the screen evaluate the hit rule
    for every candidate key of an item from the answers it already has (``chance__<m>``).
    """
    if not corrected or response.probs is None:
        letter = response.letter
        return LETTERS.index(letter) if letter is not None and letter in LETTERS[:n_options] else None
    q = calibrated(response.probs, competence)
    best = max(range(len(q)), key=lambda i: (q[i], -i))
    return best if q[best] >= 1.0 / n_options + margin else None


def is_hit(response: Response, key: str, n_options: int, competence: Competence | None, *, margin: float, corrected: bool) -> bool:
    """A hit: the member picked the key; chance-corrected, the key must also win after calibration
    by the member's letter prior, with a calibrated probability at least ``margin`` above 1/n.

    Generated answers carry no probabilities, so they are hits when the letter is right.
    """
    if key not in LETTERS[:n_options]:
        return False
    return accepted(response, n_options, competence, margin=margin, corrected=corrected) == LETTERS.index(key)
