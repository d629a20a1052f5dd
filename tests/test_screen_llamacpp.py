"""The in-process llama.cpp backend's sequential path, with a real GGUF model (SmolLM2-135M).

llama.cpp evaluates one prompt at a time and keeps the KV cache of the tokens a prompt shares
with the previous one. Scoring therefore sorts its requests by text and skips cached prompts
inside a batch. Both are only sound if a prompt's answer does not depend on what was evaluated
before it: that is what these tests check, on real model output.
"""

from __future__ import annotations

import importlib.util

import pytest

from filters.backends.packaged import resolve_packaged
from filters.cache import ResponseCache
from filters.panel import panel_from_dict
from filters.prompts import build_prompt
from filters.scoring import plan_batches, request_keys, score_prompts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"),
]

# Two question families whose lengths interleave (as SEED-Bench's do): longest-first order
# alternates between them, text order keeps each family's stem together.
THINGS = ["car", "kite", "horse", "balloon", "sailboat", "motorcycle", "refrigerator"]
QUESTIONS = (
    [f"What color is the {t} in this picture?" for t in THINGS]
    + [f"How many {t}s can be seen in the photo?" for t in THINGS]
    + ["Where is the dog sitting?", "Which object is closest to the camera?"]
)
OPTIONS = [["red", "blue", "green", "white"], ["one", "two", "three", "four"]]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from filters.backends.llamacpp import LlamaCppBackend

    member = panel_from_dict(
        {"member": [{"name": "smol", "backend": "llamacpp", "model": str(resolve_packaged("smollm2-135m-instruct")), "n_threads": 2}]}
    ).members[0]
    with ResponseCache(tmp_path_factory.mktemp("ids") / "ids.sqlite") as cache:
        b = LlamaCppBackend(member, cache)
    yield b
    b.close()


def prompts():
    return [build_prompt(q, OPTIONS[i % 2], shots=2) for i, q in enumerate(QUESTIONS)]


def test_answers_do_not_depend_on_the_previous_prompt(backend):
    ps = prompts()
    alone = []
    for p in ps:
        backend.llm.n_tokens = 0  # forget everything: the whole prompt is evaluated from scratch
        alone.append(backend.letter_logprobs([p], 4)[0])
    in_prefix_order = {}
    for i in [i for batch in plan_batches([str(i) for i in range(len(ps))], ps, 4, "prefix") for i in batch]:
        in_prefix_order[i] = backend.letter_logprobs([ps[i]], 4)[0]
    for i, row in enumerate(alone):
        assert in_prefix_order[i] == pytest.approx(row, abs=1e-4), QUESTIONS[i]


def test_prefix_order_evaluates_fewer_tokens(backend):
    ps = prompts()
    keys = [str(i) for i in range(len(ps))]
    spent = {}
    for order in ("length", "prefix"):
        backend.llm.n_tokens = 0
        before = backend.tokens_processed
        for batch in plan_batches(keys, ps, 4, order):
            backend.letter_logprobs([ps[i] for i in batch], 4)
        spent[order] = backend.tokens_processed - before
    # the few-shot prefix once, then each question; sorted by text, the shared stems are evaluated once
    assert spent["prefix"] < spent["length"], spent


def test_cached_prompts_are_not_asked_again(backend, tmp_path):
    ps = prompts()
    opts = [OPTIONS[i % 2] for i in range(len(ps))]
    with ResponseCache(tmp_path / "fresh.sqlite") as cache:
        fresh = score_prompts(backend, ps, opts, cache)
    with ResponseCache(tmp_path / "partial.sqlite") as cache:
        score_prompts(backend, ps[::3], opts[::3], cache)  # a third answered before (a killed run, another source)
        stats: dict[str, float] = {}
        resumed = score_prompts(backend, ps, opts, cache, stats=stats)
        assert len(set(request_keys(backend, ps))) == len(ps)
    assert stats["cached"] == len(ps[::3]) and stats["asked"] == len(ps) - len(ps[::3])
    for a, b in zip(fresh, resumed):
        assert a.letter == b.letter and a.probs == pytest.approx(b.probs, abs=1e-4)
