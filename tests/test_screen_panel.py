"""The default offline panel (Qwen2.5-Coder-1.5B) on real data: easy-VQA is not answerable blind.

easy-VQA colour questions ("what color is the shape?") all need the image: turned into 4-option
multiple choice, a text-only member can only guess. The claim is tested with Wilson 95 % intervals,
not single lucky numbers. That the same member answers MMLU clearly above chance (and the panel's
control rates) is asserted on the shipped controls in ``tests/test_calibrate.py``
(``test_shipped_default_panel_meets_the_control_targets``).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import polars as pl
import pytest

from curate.schema import ITEM_SCHEMA, LETTERS, conform
from curate.stats import wilson_interval
from filters.competence import control_items
from filters.panel import load_panel
from filters.screen import screen_with_report

pytestmark = pytest.mark.slow
N_MMLU, N_VQA = 100, 60
COLOURS = ["red", "green", "blue", "yellow", "teal", "brown", "gray", "black"]


def mmlu_items(shared_data: Path, n: int) -> pl.DataFrame:
    """MMLU test questions not in the shipped control sample (seeded)."""
    import csv

    used = {c["id"] for c in control_items()}
    rows = []
    for f in sorted((shared_data / "controls" / "mmlu" / "test").glob("*.csv")):
        subject = f.name.rsplit("_", 1)[0]
        with open(f, newline="", encoding="utf-8") as fh:
            for i, r in enumerate(csv.DictReader(fh)):
                iid = f"mmlu:test:{subject}:{i}"
                if iid not in used:
                    rows.append((iid, r["question"], [r[f"choice{k}"] for k in range(4)], LETTERS[int(r["answer"])]))
    rows = random.Random(7).sample(rows, n)
    return conform(pl.DataFrame(rows, schema=["item_id", "question", "options", "answer"], orient="row"), ITEM_SCHEMA)


def easy_vqa_items(shared_data: Path, n: int) -> pl.DataFrame:
    """easy-VQA colour questions as 4-option MCQ (key position and distractors seeded)."""
    qs = json.loads((shared_data / "easy_vqa" / "test" / "questions.json").read_text())
    colour = [(i, q, a) for i, (q, a, _img) in enumerate(qs) if a in COLOURS]
    rng = random.Random(11)
    rows = []
    for i, q, a in rng.sample(colour, n):
        opts = rng.sample([c for c in COLOURS if c != a], 3)
        pos = rng.randrange(4)
        opts.insert(pos, a)
        rows.append((f"easy_vqa:{i}", q, opts, LETTERS[pos]))
    return conform(pl.DataFrame(rows, schema=["item_id", "question", "options", "answer"], orient="row"), ITEM_SCHEMA)


@pytest.fixture(scope="module")
def panel():
    # The shipped default panel; a 40-question control set instead of 100 keeps the test short.
    return dataclasses.replace(load_panel(), control_size=40)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return tmp_path_factory.mktemp("panel") / "responses.sqlite"


def test_default_panel_stays_near_chance_on_easy_vqa(shared_data, panel, cache_path):
    out, report = screen_with_report(easy_vqa_items(shared_data, N_VQA), panel, cache_path=cache_path, progress=False, rules=False)
    member = report.members[0]
    hits = int(out["hits"].sum())
    lo, hi = wilson_interval(hits, N_VQA)
    acc = float((out["answer__qwen2.5-coder-1.5b"] == out["answer"]).mean())
    print(f"easy-VQA: {hits}/{N_VQA} chance-corrected hits, Wilson 95% [{lo:.2f}, {hi:.2f}], chance {member.expected_chance_hit_rate:.2f};"
          f" raw accuracy {acc:.2f}")
    # consistent with guessing: the rate a random key would give under the member's own answers and rule
    # (adaptive rotation: a chance hit must survive every rotation, so this is far below 0.25)
    guessing = float(out["chance__qwen2.5-coder-1.5b"].mean())
    print(f"easy-VQA: a random key would score {guessing:.3f}; {member.asks} prompts for {N_VQA} items")
    assert lo <= guessing
    assert hi < 0.5
    assert member.asks <= 1.6 * N_VQA  # issue #17: adaptive rotation costs at most 1.6x a single pass
