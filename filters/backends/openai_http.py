"""OpenAI-compatible HTTP backend (vLLM, llama.cpp server, TGI, any such endpoint), over one or many replicas.

This is how a real panel runs: eight 7B-70B models behind vLLM on a GPU cluster, each a
``[[member]]`` with ``backend = "openai"``. A member may name several endpoints,
``base_url = ["http://a:8000/v1", "http://b:8000/v1"]``: replicas of one model.

**Spreading and failover.** Requests run in one thread pool of ``concurrency`` threads per
endpoint; each request goes to the live endpoint with the fewest requests in flight. A request
that fails (connection refused or reset, timeout, HTTP 408/409/429/5xx) is sent again, to another
live endpoint when there is one (no wait) or to the same one after an exponential backoff. An
endpoint is taken out of the run after ``max_retries + 1`` failures in a row, or at once when it
refuses connections while another endpoint is live (a dead server refuses; a busy one answers
slowly). So when a replica dies mid-run, its in-flight and later requests go to the others and the
work finishes; only when every endpoint is out does the run stop, with one line per endpoint
saying what failed and how many requests it had served. Nothing answered is asked again:
``filters.scoring.score_prompts`` commits every batch to the response cache, whose key holds the
model's identity (never the URL), so replicas share cached answers. Each endpoint's record
(served, failures, last error, out or not) is in :meth:`OpenAIBackend.endpoint_report` and its
problems in :meth:`OpenAIBackend.warnings`.

**Same model everywhere.** Before the first request every endpoint is probed (``GET /models``):
an unreachable server or a model it does not serve is one clear line, not a stack of retries per
item, and replicas that serve different models stop the run (their answers would be mixed under
one identity). A replica unreachable at the start is left out with a warning while another is up.

**loglik, two ways.** The log-probabilities of the letters " A".." J" as the next token after the
prompt (which ends with "Answer:") come from

* ``api = "completions"``: ``POST /completions`` with ``max_tokens = 1`` and ``logprobs = 20``:
  the top-20 tokens of the one generated position;
* ``api = "chat"``: ``POST /chat/completions`` with the prompt as chat turns (few-shot examples
  as earlier user/assistant turns, the question with its instruction as the last user turn,
  ``filters.prompts.chat_messages``), ``max_tokens = 1``, ``logprobs = true`` and
  ``top_logprobs = 20``: the top-20 first tokens of the assistant's reply. This is for servers
  without a completions API (many hosted chat endpoints). The numbers are the model's, but under
  its chat template, so they differ from the completions path's; the identity (and cache key) of
  such a member carries ``|chat-logprobs`` so the two are never mixed.
* ``api = "auto"`` (default): one tiny completions request with logprobs decides, once per
  backend; a server that refuses it (HTTP 404/400/405/501, or no logprobs in the reply) is asked
  through chat completions.

Reading the letters, both ways: a top token counts for a letter when, stripped of spaces, it *is*
the letter (" A" and "A" both count; "All" does not); a letter spelled by several top tokens takes
the most likely spelling. A letter that is not among the top 20 gets the floor
``MISSING_LOGPROB = -100`` (probability ~ e^-100: zero after renormalising over the options, since
a letter in the top 20 has log-probability above about -20). When *no* option letter is among the
top 20 (a chat model opening with "The answer..."), every option gets the floor and the
distribution is uniform: the reply carries no information about the letters, and the item is
scored like a guess. The same happens when the most likely next token is end-of-text: the reply is
empty with ``finish_reason = "stop"`` and llama.cpp's server then returns no logprobs at all (the
letters' share is lost; vLLM returns it). Both kinds are counted and reported by
:meth:`OpenAIBackend.warnings`; a reply without logprobs that did generate text is an error (the
server does not give logprobs).
``generate`` uses chat completions (or completions with ``chat = false``) at temperature 0.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from curate.errors import UserError
from curate.schema import LETTERS
from filters.panel import Member
from filters.prompts import Prompt, chat_messages

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
NO_API_STATUS = {400, 404, 405, 422, 501}  # a probe answered this way: that API is not there (or takes no logprobs)
TOP_LOGPROBS = 20
MISSING_LOGPROB = -100.0  # a letter outside the server's top-k: effectively zero probability
CHAT_IDENTITY_TAG = "|chat-logprobs"

#: The endpoint report of the last closed backend of each member name (diagnostics and tests:
#: ``screen`` opens and closes backends itself).
LAST_REPORTS: dict[str, list[dict[str, Any]]] = {}


@dataclass
class Endpoint:
    """One replica and what it did in this run."""

    url: str
    client: httpx.Client
    served: int = 0  # requests answered (probes not counted)
    failures: int = 0  # failed attempts
    streak: int = 0  # failures in a row (reset by an answer)
    in_flight: int = 0
    out: bool = False  # taken out of the run
    last_error: str = ""
    model: str | None = None  # what GET /models says it serves

    def report(self) -> dict[str, Any]:
        return {"url": self.url, "served": self.served, "failures": self.failures, "out": self.out,
                "last_error": self.last_error or None, "model": self.model}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def letter_logprobs_from_top(top: list[tuple[str, float]], n_letters: int) -> tuple[list[float], bool]:
    """The letters' log-probabilities from (token, logprob) pairs of one position, and whether any
    option letter was among them. See the module docstring for the rule and the floor."""
    best: dict[str, float] = {}
    for token, lp in top:
        t = str(token).strip()
        if len(t) == 1 and t in LETTERS and (t not in best or lp > best[t]):
            best[t] = float(lp)
    letters = LETTERS[:n_letters]
    return [best.get(letter, MISSING_LOGPROB) for letter in letters], any(letter in best for letter in letters)


class OpenAIBackend:
    # Each request is answered alone (the server batches as it likes): scoring sorts requests by
    # text, which servers that cache prompt prefixes reuse, and skips cached prompts in a batch.
    batch_independent = True

    def __init__(self, member: Member, *, use_prefix_cache: bool = True, backoff: float = 0.5):
        self.member = member
        self.backoff = backoff
        headers = {}
        if member.api_key_env:
            key = os.environ.get(member.api_key_env)
            if not key:
                raise UserError(f"member {member.name!r}: environment variable {member.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        urls = member.endpoints
        if not urls:
            raise UserError(f"member {member.name!r}: backend 'openai' needs base_url (one URL or a list of replicas)")
        timeout = httpx.Timeout(member.timeout, connect=min(10.0, member.timeout))
        self.endpoints = [Endpoint(u, httpx.Client(base_url=u, headers=headers, timeout=timeout)) for u in urls]
        self.base_url = urls[0]  # kept for callers that show one URL
        self._lock = threading.Lock()
        self._answered: Counter[str] = Counter()  # request fingerprint -> answers received (1 unless asked twice)
        self.no_letter = 0  # loglik answers with no option letter among the top logprobs
        self.ended = 0  # ... of which the reply ended at once, with no logprobs returned
        self.loglik_answers = 0
        self.tokens_processed = 0
        self.pool = ThreadPoolExecutor(max_workers=member.concurrency * len(self.endpoints), thread_name_prefix=f"mmcurate-{member.name}")
        try:
            served = self._probe_models()
            self.api = self._probe_api() if member.method == "loglik" else None
        except BaseException:
            self.close()
            raise
        self.identity = f"openai|{member.model}|rev={member.revision or served}" + (CHAT_IDENTITY_TAG if self.api == "chat" else "")

    # -- dispatch --------------------------------------------------------------------
    def _acquire(self) -> Endpoint | None:
        with self._lock:
            live = [e for e in self.endpoints if not e.out]
            if not live:
                return None
            ep = min(live, key=lambda e: (e.in_flight, e.served + e.failures))
            ep.in_flight += 1
            return ep

    def _release(self, ep: Endpoint, *, error: str | None = None, refused: bool = False, count: bool = True) -> None:
        with self._lock:
            ep.in_flight -= 1
            if error is None:
                ep.streak = 0
                ep.served += int(count)
                return
            ep.failures += 1
            ep.streak += 1
            ep.last_error = error
            others = any(not e.out for e in self.endpoints if e is not ep)
            if ep.streak >= self.member.max_retries + 1 or (refused and others):
                ep.out = True

    def _live(self) -> int:
        with self._lock:
            return sum(not e.out for e in self.endpoints)

    def _call(self, method: str, path: str, body: dict | None = None, *, count: bool = True,
              accept: Callable[[httpx.Response], bool] | None = None) -> dict:
        """One request, spread and failed over as the module docstring says. ``accept`` lets a probe
        take a 4xx answer as an answer (returned as ``{"_status": code}``) instead of an error."""
        tries = 0
        limit = (self.member.max_retries + 1) * len(self.endpoints)
        while True:
            ep = self._acquire()
            if ep is None:
                raise UserError(self._all_out_message(path))
            refused = False
            try:
                r = ep.client.request(method, path, json=body)
            except httpx.TransportError as exc:  # connect refused, timeouts, resets
                error, refused = _describe(exc), isinstance(exc, httpx.ConnectError)
            else:
                if accept is not None and accept(r):
                    self._release(ep, count=False)
                    return {"_status": r.status_code}
                if r.status_code in RETRY_STATUS:
                    error = f"HTTP {r.status_code}: {r.text[:200]}"
                elif r.status_code >= 400:
                    self._release(ep, count=False)
                    raise UserError(f"member {self.member.name!r}: {ep.url}{path} answered HTTP {r.status_code}: {r.text[:300].strip()}")
                else:
                    try:
                        data = r.json()
                    except ValueError:
                        error = f"not JSON: {r.text[:100]!r}"
                    else:
                        self._release(ep, count=count)
                        if count and body is not None:
                            self._note_answer(path, body)
                        return data
            self._release(ep, error=error, refused=refused)
            tries += 1
            if tries >= limit:
                raise UserError(self._all_out_message(path))
            if self._live() <= 1:  # no other replica to turn to: give this one time to recover
                time.sleep(self.backoff * 2 ** min(tries - 1, 5))

    def _note_answer(self, path: str, body: dict) -> None:
        blob = path + "\0" + repr(body.get("prompt", body.get("messages")))
        with self._lock:
            self._answered[hashlib.sha1(blob.encode("utf-8")).hexdigest()] += 1

    def _all_out_message(self, path: str) -> str:
        with self._lock:
            parts = [f"{e.url} ({e.last_error or 'no error'}; served {e.served})" for e in self.endpoints]
        return (f"member {self.member.name!r}: cannot reach {path} after up to {self.member.max_retries + 1} tries per endpoint: "
                + "; ".join(parts) + "; is the server running? check base_url in the panel file")

    def _map(self, fn: Callable[[Prompt], Any], prompts: list[Prompt]) -> list[Any]:
        """``fn`` over ``prompts`` on the pool, results in order; on an error the rest is cancelled."""
        futures: list[Future] = [self.pool.submit(fn, p) for p in prompts]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    # -- probes ----------------------------------------------------------------------
    def _probe_models(self) -> str:
        """What every endpoint serves; replicas must agree. Returns the served model's id.

        An endpoint that does not answer is left out (``warnings`` says so) while another does;
        when none does, they are asked again with the usual retries and backoff (a server still
        starting), and the run stops with one line per endpoint if that fails too."""
        self._read_models()
        if not self._live():
            for e in self.endpoints:
                e.out = False
            self._call("GET", "/models", count=False)  # raises the one clear line when nothing answers
            self._read_models()
            if not self._live():
                raise UserError(self._all_out_message("/models"))
        live = [e for e in self.endpoints if not e.out]
        if len({e.model for e in live}) > 1:
            served = ", ".join(f"{e.url} serves {e.model!r}" for e in live)
            raise UserError(f"member {self.member.name!r}: its base_url replicas serve different models ({served}); "
                            "every endpoint of one member must serve the same model -- make them one model or split them into members")
        return live[0].model or "unknown"

    def _read_models(self) -> None:
        """``GET /models`` on every endpoint once: record the model it serves, or take it out."""
        for ep in self.endpoints:
            try:
                r = ep.client.get("/models")
                r.raise_for_status()
                ids = [m.get("id") for m in r.json().get("data", [])]
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                ep.out, ep.failures, ep.last_error = True, ep.failures + 1, f"GET /models: {_describe(exc)}"
                continue
            if ids and self.member.model not in ids and len(ids) > 1:
                raise UserError(f"member {self.member.name!r}: {ep.url} does not serve model {self.member.model!r}; it serves {ids}")
            ep.out = False
            ep.model = self.member.model if self.member.model in ids else (ids[0] if ids else "unknown")

    def _probe_api(self) -> str:
        """Which API gives letter log-probabilities: the member's choice, or (``auto``) completions when
        one tiny request with ``logprobs`` works, else chat completions with ``top_logprobs``."""
        if self.member.api in ("completions", "chat"):
            return self.member.api
        no_api = lambda r: r.status_code in NO_API_STATUS  # noqa: E731
        body = {"model": self.member.model, "prompt": "Answer:", "max_tokens": 1, "temperature": 0.0, "logprobs": 5}
        data = self._call("POST", "/completions", body, count=False, accept=no_api)
        if "_status" not in data and _completion_top(data):
            return "completions"
        body = {"model": self.member.model, "messages": [{"role": "user", "content": "Answer with A or B."}],
                "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 5}
        chat = self._call("POST", "/chat/completions", body, count=False, accept=no_api)
        if "_status" not in chat and _chat_top(chat):
            return "chat"
        raise UserError(
            f"member {self.member.name!r}: {self.base_url} returns no logprobs from /completions nor from /chat/completions "
            "(logprobs + top_logprobs); loglik needs one of them (vLLM has both) -- or use method = \"generate\""
        )

    # -- loglik ----------------------------------------------------------------------
    def _one_loglik(self, p: Prompt, n_letters: int) -> list[float]:
        if self.api == "chat":
            body = {"model": self.member.model, "messages": chat_messages(p), "max_tokens": 1, "temperature": 0.0,
                    "logprobs": True, "top_logprobs": TOP_LOGPROBS}
            data, path = self._call("POST", "/chat/completions", body), "/chat/completions"
            top = _chat_top(data)
        else:
            body = {"model": self.member.model, "prompt": p.text, "max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS}
            data, path = self._call("POST", "/completions", body), "/completions"
            top = _completion_top(data)
        if top is None and _ended_at_once(data):
            top = []  # the end-of-text token came first: llama.cpp's server then returns no logprobs at all
            with self._lock:
                self.ended += 1
        if top is None:
            raise UserError(
                f"member {self.member.name!r}: {self.base_url}{path} returned no logprobs; the server must support "
                "`logprobs` (vLLM does; llama.cpp server needs --logits_all true) or use method = \"generate\""
            )
        row, found = letter_logprobs_from_top(top, n_letters)
        with self._lock:
            self.loglik_answers += 1
            self.no_letter += int(not found)
        return row

    def letter_logprobs(self, prompts: list[Prompt], n_letters: int) -> list[list[float]]:
        return self._map(lambda p: self._one_loglik(p, n_letters), prompts)

    # -- generate --------------------------------------------------------------------
    def _one_generate(self, p: Prompt, max_new_tokens: int) -> str:
        if self.member.chat is False:
            body = {"model": self.member.model, "prompt": p.text, "max_tokens": max_new_tokens, "temperature": 0.0, "seed": 0}
            return self._call("POST", "/completions", body)["choices"][0].get("text") or ""
        body = {"model": self.member.model, "messages": chat_messages(p), "max_tokens": max_new_tokens, "temperature": 0.0, "seed": 0}
        return self._call("POST", "/chat/completions", body)["choices"][0]["message"].get("content") or ""

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        return self._map(lambda p: self._one_generate(p, max_new_tokens), prompts)

    # -- reporting -------------------------------------------------------------------
    def endpoint_report(self) -> list[dict[str, Any]]:
        """Per endpoint: url, served, failures, out, last_error, model -- plus, in every row, how many
        requests were answered more than once in this backend's life (``repeats``; 0 unless a reply
        was lost in transit after the server had answered it)."""
        with self._lock:
            repeats = sum(1 for n in self._answered.values() if n > 1)
            return [e.report() | {"repeats": repeats} for e in self.endpoints]

    def warnings(self) -> list[str]:
        """One line per endpoint that failed, and one when loglik answers held no option letter."""
        out = []
        with self._lock:
            for e in self.endpoints:
                if e.failures or e.out:
                    state = "was taken out of the run" if e.out else "had failures"
                    rest = "; its requests went to the other endpoint(s)" if e.out and any(not o.out for o in self.endpoints) else ""
                    out.append(f"member {self.member.name!r}: endpoint {e.url} {state} after serving {e.served} request(s) "
                               f"({e.failures} failed attempt(s), last: {e.last_error}){rest}")
            if self.no_letter:
                ended = f", {self.ended} of them because the reply ended at once (no logprobs returned)" if self.ended else ""
                out.append(f"member {self.member.name!r}: {self.no_letter} of {self.loglik_answers} loglik answers had no option "
                           f"letter among the top {TOP_LOGPROBS} tokens ({self.api} API{ended}); those prompts scored uniform")
        return out

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for e in getattr(self, "endpoints", []):
            e.client.close()
        if hasattr(self, "endpoints"):
            LAST_REPORTS[self.member.name] = self.endpoint_report()


def _ended_at_once(data: dict) -> bool:
    """A reply that generated nothing and stopped: the model's most likely next token was end-of-text.
    llama.cpp's server returns empty logprobs then (vLLM returns them); the letters' share is lost."""
    try:
        choice = data["choices"][0]
        text = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
        return not text and choice.get("finish_reason") == "stop"
    except (KeyError, IndexError, TypeError, AttributeError):
        return False


def _completion_top(data: dict) -> list[tuple[str, float]] | None:
    """The top (token, logprob) pairs of a completions reply's first position, or None."""
    try:
        top = data["choices"][0]["logprobs"]["top_logprobs"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return [(t, float(lp)) for t, lp in top.items()] if isinstance(top, dict) and top else None


def _chat_top(data: dict) -> list[tuple[str, float]] | None:
    """The top (token, logprob) pairs of a chat reply's first token, or None."""
    try:
        top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    try:
        return [(t["token"], float(t["logprob"])) for t in top] or None
    except (KeyError, TypeError, ValueError):
        return None
