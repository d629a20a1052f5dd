"""Ask one member a list of prompts: cache lookup, length-sorted batches, answers in input order.

Two methods:

* ``loglik`` -- one forward pass per prompt; the next-token log-probabilities of " A".." J"
  after "Answer:" are renormalised over the item's options. lm-evaluation-harness style:
  requests are sorted longest first (an out-of-memory shows at once, padding stays small),
  batched, and returned in the caller's order.
* ``generate`` -- greedy text, then MMStar's answer extraction (lower-cased: the reply starts with
  the letter, or contains "(x", "option x", "the answer is x"), extended to matching an option's
  text. A reply that matches no option is a miss (letter ``None``) with its raw text kept.

Why batches are fixed by the full request list and not by what is missing: a run killed with
``kill -9`` and resumed then computes every remaining batch with exactly the same neighbours
(same padding) as an uninterrupted run, so the results -- and ``screened.parquet`` -- are
byte-identical. Each batch is committed to the cache as soon as it is done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from curate.mc import match_generated as extract_answer  # one implementation, in curate.mc
from curate.schema import LETTERS
from filters.cache import ResponseCache, request_key
from filters.prompts import TEMPLATE_VERSION, Prompt


@dataclass(frozen=True)
class Response:
    letter: str | None  # the member's answer, None when a generated reply matches no option
    probs: tuple[float, ...] | None  # loglik: probability of each option (sums to 1)
    raw: str | None  # generate: the reply text


def softmax(logprobs: list[float]) -> tuple[float, ...]:
    m = max(logprobs)
    exps = [math.exp(x - m) for x in logprobs]
    total = sum(exps)
    return tuple(e / total for e in exps)


def request_keys(backend, prompts: list[Prompt]) -> list[str]:
    m = backend.member
    if m.method == "loglik":
        return [request_key(backend.identity, "loglik", TEMPLATE_VERSION, p.text, n_letters=p.n_options) for p in prompts]
    chat = m.chat
    return [
        request_key(backend.identity, "generate", TEMPLATE_VERSION, p.text, max_new_tokens=m.max_new_tokens, chat=chat)
        for p in prompts
    ]


def plan_batches(keys: list[str], prompts: list[Prompt], batch_size: int, order: str = "length") -> list[list[int]]:
    """Unique requests cut into fixed batches of indices into ``prompts``.

    ``order="length"``: longest first (ties by key), so a padded batch holds prompts of like
    length. ``order="prefix"``: sorted by prompt text, so consecutive prompts share their longest
    common stems -- a backend that keeps the previous prompt's KV cache (llama.cpp) then
    evaluates only what differs. On SEED-Bench, whose questions repeat stems such as "What is
    the main color of", the default member evaluates 585,456 instead of 633,393 tokens
    (``bench/prefix_order.py``). Either order depends only on the request list, never on the
    cache state.
    """
    if order not in ("length", "prefix"):
        raise ValueError(f"order must be 'length' or 'prefix', not {order!r}")
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    if order == "prefix":
        ranked = sorted(first.values(), key=lambda i: (prompts[i].text, keys[i]))
    else:
        ranked = sorted(first.values(), key=lambda i: (-len(prompts[i].text), keys[i]))
    return [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]


def score_prompts(
    backend,
    prompts: list[Prompt],
    options: list[list[str]],
    cache: ResponseCache,
    *,
    advance: Callable[[int], None] | None = None,
    stats: dict[str, float] | None = None,
) -> list[Response]:
    """Responses of ``backend``'s member to ``prompts`` (``options[i]`` are prompt i's option texts).

    ``stats``, when given, is filled with ``asked`` (distinct prompts the model ran now; a padded
    batch that is not wholly cached runs whole, cached prompts included), ``cached`` (prompts found in
    the cache) and ``seconds`` (time spent in the model): what a throughput figure must be
    computed from, so a resumed run does not look fast.
    """
    member = backend.member
    keys = request_keys(backend, prompts)
    values = cache.get_many(keys)
    if stats is not None:
        distinct = set(keys)
        stats["cached"] = stats.get("cached", 0) + sum(1 for k in distinct if k in values)
        stats.setdefault("asked", 0)
        stats.setdefault("seconds", 0.0)
    # A backend whose answer to a prompt does not depend on the rest of its batch (llama.cpp, an
    # OpenAI-compatible server) gets its requests sorted by text, so neighbours share KV / prefix
    # caches, and is never asked again for what is cached. Padded batches (transformers) run whole.
    independent = bool(getattr(backend, "batch_independent", False))
    for planned in plan_batches(keys, prompts, member.batch_size, "prefix" if independent else "length"):
        batch = [i for i in planned if keys[i] not in values] if independent else planned
        if all(keys[i] in values for i in batch):
            if advance:
                advance(len(planned))
            continue
        batch_prompts = [prompts[i] for i in batch]
        started = time.perf_counter()
        if member.method == "loglik":
            n = max(p.n_options for p in batch_prompts)
            rows = backend.letter_logprobs(batch_prompts, n)
            new = {keys[i]: {"logprobs": row[: prompts[i].n_options]} for i, row in zip(batch, rows)}
        else:
            texts = backend.generate(batch_prompts, member.max_new_tokens)
            new = {keys[i]: {"text": t} for i, t in zip(batch, texts)}
        if stats is not None:
            stats["asked"] += len(new)
            stats["seconds"] += time.perf_counter() - started
        cache.put_many(backend.identity, new)
        values.update(cache.get_many(new))  # read back what is stored: a resumed run sees the same numbers
        if advance:
            advance(len(planned))
    out = []
    for key, opts in zip(keys, options):
        v = values[key]
        if "logprobs" in v:
            probs = softmax(v["logprobs"])
            best = max(range(len(probs)), key=lambda j: (probs[j], -j))
            out.append(Response(LETTERS[best], probs, None))
        else:
            out.append(Response(extract_answer(v["text"], opts), None, v["text"]))
    return out
