"""OpenAI-compatible HTTP backend (vLLM, llama.cpp server, TGI, any such endpoint).

This is how a real panel runs: eight 7B-70B models behind vLLM on a GPU cluster, each a
``[[member]]`` with ``backend = "openai"``. Requests run in a thread pool bounded by
``concurrency``; each has a timeout and is retried with exponential backoff on connection
errors, 429 and 5xx. ``loglik`` uses the completions API with ``logprobs`` (top-k log-probs of
the single next token); ``generate`` uses chat completions (or completions with ``chat = false``)
at temperature 0.

Before the first request the endpoint is probed (``GET /models``), so an unreachable server or a
model it does not serve is one clear line, not a stack of retries per item.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from curate.errors import UserError
from curate.schema import LETTERS
from filters.panel import Member
from filters.prompts import Prompt, chat_messages

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
TOP_LOGPROBS = 20
MISSING_LOGPROB = -100.0  # a letter outside the server's top-k: effectively zero probability


class OpenAIBackend:
    # Each request is answered alone (the server batches as it likes): scoring sorts requests by
    # text, which servers that cache prompt prefixes reuse, and skips cached prompts in a batch.
    batch_independent = True

    def __init__(self, member: Member, *, use_prefix_cache: bool = True, backoff: float = 0.5):
        self.member = member
        self.base_url = member.base_url.rstrip("/")
        self.backoff = backoff
        headers = {}
        if member.api_key_env:
            key = os.environ.get(member.api_key_env)
            if not key:
                raise UserError(f"member {member.name!r}: environment variable {member.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(member.timeout, connect=min(10.0, member.timeout)))
        self.pool = ThreadPoolExecutor(max_workers=member.concurrency, thread_name_prefix=f"mmcurate-{member.name}")
        served = self._probe()
        self.identity = f"openai|{member.model}|rev={member.revision or served}"
        self.tokens_processed = 0

    def _request(self, method: str, path: str, json: dict | None = None) -> dict:
        last: str = ""
        for attempt in range(self.member.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self.client.request(method, path, json=json)
            except httpx.TransportError as exc:  # connect refused, timeouts, resets
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                raise UserError(f"member {self.member.name!r}: {self.base_url}{path} answered HTTP {r.status_code}: {r.text[:300].strip()}")
            return r.json()
        raise UserError(
            f"member {self.member.name!r}: cannot reach {self.base_url}{path} after {self.member.max_retries + 1} tries ({last}); "
            "is the server running? check base_url in the panel file"
        )

    def _probe(self) -> str:
        data = self._request("GET", "/models")
        ids = [m.get("id") for m in data.get("data", [])]
        if ids and self.member.model not in ids and len(ids) > 1:
            raise UserError(f"member {self.member.name!r}: {self.base_url} does not serve model {self.member.model!r}; it serves {ids}")
        return ids[0] if ids else "unknown"

    # -- loglik ----------------------------------------------------------------------
    def _one_loglik(self, p: Prompt, n_letters: int) -> list[float]:
        body = {"model": self.member.model, "prompt": p.text, "max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS}
        data = self._request("POST", "/completions", body)
        try:
            top = data["choices"][0]["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise UserError(
                f"member {self.member.name!r}: {self.base_url}/completions returned no logprobs; the server must support "
                "`logprobs` on completions (vLLM does; llama.cpp server needs --logits_all true) or use method = \"generate\""
            ) from exc
        best: dict[str, float] = {}
        for token, lp in top.items():
            t = token.strip()
            if len(t) == 1 and t in LETTERS and (t not in best or lp > best[t]):
                best[t] = float(lp)
        return [best.get(letter, MISSING_LOGPROB) for letter in LETTERS[:n_letters]]

    def letter_logprobs(self, prompts: list[Prompt], n_letters: int) -> list[list[float]]:
        return list(self.pool.map(lambda p: self._one_loglik(p, n_letters), prompts))

    # -- generate --------------------------------------------------------------------
    def _one_generate(self, p: Prompt, max_new_tokens: int) -> str:
        if self.member.chat is False:
            body = {"model": self.member.model, "prompt": p.text, "max_tokens": max_new_tokens, "temperature": 0.0, "seed": 0}
            return self._request("POST", "/completions", body)["choices"][0].get("text") or ""
        body = {"model": self.member.model, "messages": chat_messages(p), "max_tokens": max_new_tokens, "temperature": 0.0, "seed": 0}
        return self._request("POST", "/chat/completions", body)["choices"][0]["message"].get("content") or ""

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        return list(self.pool.map(lambda p: self._one_generate(p, max_new_tokens), prompts))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()
