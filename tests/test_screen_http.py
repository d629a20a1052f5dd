"""The OpenAI-compatible backend against a real llama-cpp-python server on 127.0.0.1 (no mock client)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import polars as pl
import pytest

from curate.errors import UserError
from curate.schema import ITEM_SCHEMA, conform
from filters.backends.openai_http import CHAT_IDENTITY_TAG, LAST_REPORTS, MISSING_LOGPROB, OpenAIBackend
from filters.backends.packaged import resolve_packaged
from filters.cache import ResponseCache, default_cache_path, user_cache_path
from filters.competence import control_items
from filters.panel import panel_from_dict
from filters.prompts import build_prompt, chat_messages
from filters.scoring import score_prompts
from filters.screen import screen_with_report

# Tests with real llama.cpp servers carry these marks; the fast tests below (cache location, base_url
# lists, the backend's dispatch against small stdlib HTTP servers on 127.0.0.1) run everywhere.
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python[server] is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(folder: Path, n_threads: int = 2):
    """A real ``llama_cpp.server`` with the packaged SmolLM2 on 127.0.0.1, its access log (unbuffered,
    so a SIGKILL loses no line) in ``folder/server.log``. Yields (base_url, model file, process, log path)."""
    model = resolve_packaged("smollm2-135m-instruct")
    port = free_port()
    log_path = folder / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--model_alias", "smollm2", "--n_ctx", "2048", "--n_threads", str(n_threads)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):  # bounded: 60 s
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(base + "/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("llama_cpp.server did not become ready in 60 s")
        yield base, model, proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("server")) as (base, model, _, log_path):
        yield base, model


@pytest.fixture(scope="module")
def replica_logs(tmp_path_factory):
    """Two more servers of the same packaged model (one thread each: two cores), for the replica tests."""
    with llama_server(tmp_path_factory.mktemp("replica_a"), n_threads=1) as a, \
            llama_server(tmp_path_factory.mktemp("replica_b"), n_threads=1) as b:
        yield a, b


def completions_logged(log_path: Path) -> int:
    """POST /v1/completions answered 200, as uvicorn's access log of a llama_cpp.server says."""
    text = log_path.read_text(errors="replace")
    return len(re.findall(r'"POST /v1/completions HTTP/1\.1" 200', text))


def items(n: int) -> pl.DataFrame:
    rows = control_items()[60 : 60 + n]
    return conform(
        pl.DataFrame({"item_id": [r["id"] for r in rows], "question": [r["question"] for r in rows],
                      "options": [r["options"] for r in rows], "answer": [r["answer"] for r in rows]}),
        ITEM_SCHEMA,
    )


def panel(base: str, **member):
    m = {"name": "remote", "backend": "openai", "base_url": base, "model": "smollm2", "concurrency": 2, "timeout": 120.0, **member}
    return panel_from_dict({"panel": {"control_size": 0, "chance_corrected": False, "rotations": 1}, "member": [m]})


@pytest.mark.slow
@needs_llama
def test_loglik_over_http_matches_in_process_llama_cpp(server, tmp_path):
    base, model = server
    http_out, report = screen_with_report(items(4), panel(base), cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    assert report.members[0].identity.startswith("openai|smollm2|rev=")
    assert http_out["answer__remote"].null_count() == 0 and http_out["raw__remote"].null_count() == 4
    local = panel_from_dict(
        {"panel": {"control_size": 0, "chance_corrected": False, "rotations": 1},  # as panel(): prob__ of one ask
         "member": [{"name": "remote", "backend": "llamacpp", "model": str(model), "n_threads": 2}]}
    )
    local_out, _ = screen_with_report(items(4), local, cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    # Same engine, same weights: the letter with the highest next-token probability agrees.
    assert http_out["answer__remote"].to_list() == local_out["answer__remote"].to_list()
    for a, b in zip(http_out["prob__remote"], local_out["prob__remote"]):
        assert abs(a - b) < 0.05


@pytest.mark.slow
@needs_llama
def test_generate_over_http_keeps_raw_replies(server, tmp_path):
    base, _ = server
    out, _ = screen_with_report(
        items(3), panel(base, method="generate", max_new_tokens=8), cache_path=tmp_path / "c.sqlite", progress=False, rules=False
    )
    assert out["raw__remote"].null_count() == 0
    assert out["prob__remote"].null_count() == 3
    # A second run is answered from the cache and gives the identical table.
    again, _ = screen_with_report(
        items(3), panel(base, method="generate", max_new_tokens=8), cache_path=tmp_path / "c.sqlite", progress=False, rules=False
    )
    assert again.equals(out)


# -- the per-user response cache (fast) ------------------------------------------------
def test_cache_location_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("MMCURATE_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_path() == tmp_path / "mine" / "responses.sqlite"
    monkeypatch.delenv("MMCURATE_CACHE")
    assert user_cache_path() == tmp_path / "xdg" / "mmcurate" / "responses.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_path() == tmp_path / "home" / ".cache" / "mmcurate" / "responses.sqlite"
    # one cache for every workspace: the workspace no longer moves it
    assert default_cache_path(tmp_path / "ws1") == default_cache_path(tmp_path / "ws2") == user_cache_path()


def test_tests_get_a_private_cache_but_keep_the_model_folder(private_response_cache):
    from filters.backends import packaged
    from tests.conftest import REAL_MODEL_CACHE

    assert user_cache_path() == private_response_cache / "responses.sqlite"
    assert not user_cache_path().exists()  # nothing left by another test
    assert packaged.cache_dir() == REAL_MODEL_CACHE  # joined models are not joined again per test


def test_response_cache_is_safe_from_many_threads(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        def work(t: int) -> int:
            for i in range(40):
                cache.put_many(f"model{t % 2}", {f"{t}-{i}": {"logprobs": [float(i)]}})
                assert cache.get_many([f"{t}-{i}"])[f"{t}-{i}"] == {"logprobs": [float(i)]}
            return t

        with ThreadPoolExecutor(8) as pool:
            assert sorted(pool.map(work, range(8))) == list(range(8))
        assert cache.count() == 320 and cache.count("model0") == 160


# -- base_url: one URL or a list of replicas (fast) ----------------------------------------
def member_dict(**kw):
    return {"name": "r", "backend": "openai", "model": "m", **kw}


def one_member(**kw):
    return panel_from_dict({"panel": {"rotations": 1}, "member": [member_dict(**kw)]})


def test_base_url_list_is_read_and_hashes_like_a_string():
    two = one_member(base_url=["http://a:8000/v1", "http://b:8000/v1/"]).members[0]
    assert two.base_url == ("http://a:8000/v1", "http://b:8000/v1/") and two.endpoints == ("http://a:8000/v1", "http://b:8000/v1")
    hash(two)  # a frozen member stays hashable
    single = one_member(base_url=["http://a:8000/v1"])
    assert single.members[0].base_url == "http://a:8000/v1"
    assert single.config_hash == one_member(base_url="http://a:8000/v1").config_hash
    assert one_member(base_url="http://a:8000/v1", api="chat").config_hash != single.config_hash  # chat logprobs differ


@pytest.mark.parametrize("kw, says", [
    ({"base_url": []}, "has no base_url"),
    ({"base_url": ["http://a/v1", "http://a/v1/"]}, "twice"),
    ({"base_url": ["http://a/v1", 3]}, "must be a URL string"),
    ({"base_url": ["a:8000/v1"]}, "http:// or https://"),
    ({"base_url": "http://a/v1", "api": "chats"}, "did you mean 'chat'"),
    ({"base_url": 5}, "base_url = 5 is invalid; it must be a string or list"),
])
def test_base_url_list_mistakes_name_the_field(kw, says):
    with pytest.raises(UserError, match=re.escape(says)):
        one_member(**kw)


def test_api_belongs_to_openai_members():
    with pytest.raises(UserError, match="api is only used with backend = 'openai'"):
        panel_from_dict({"member": [{"name": "x", "model": "package:smollm2-135m-instruct", "api": "chat"}]})


# -- the backend's dispatch against small real HTTP servers (fast) ---------------------------
class FakeOpenAI(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint on 127.0.0.1 with fixed letter logprobs ("B" most likely, then
    "A"; "C" never among the top tokens). ``dies_after``: after that many answers every request is
    dropped without a reply (a crashed server behind a live socket). ``completions``: False answers
    404 there, like a chat-only server."""

    daemon_threads = True

    def __init__(self, model: str = "m", *, completions: bool = True, dies_after: int | None = None):
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.model, self.completions, self.dies_after = model, completions, dies_after
        self.answered: list[str] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _FakeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"data": [{"id": self.server.model}]})

    def do_POST(self) -> None:
        srv: FakeOpenAI = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            dead = srv.dies_after is not None and len(srv.answered) >= srv.dies_after
            if not dead:
                srv.answered.append(json.dumps(body.get("prompt", body.get("messages")), sort_keys=True))
        if dead:
            self.close_connection = True
            return  # no reply: the client sees the connection close
        time.sleep(0.01)
        if self.path.endswith("/chat/completions"):
            top = [{"token": "B", "logprob": -0.4}, {"token": "All", "logprob": -0.9}, {"token": " A", "logprob": -1.6}]
            self._send(200, {"choices": [{"message": {"content": "B"}, "finish_reason": "length", "logprobs": {"content": [{"token": "B", "logprob": -0.4, "top_logprobs": top}]}}]})
        elif srv.completions:
            self._send(200, {"choices": [{"text": " B", "finish_reason": "length", "logprobs": {"top_logprobs": [{" B": -0.5, " A": -1.5, " The": -2.0}]}}]})
        else:
            self._send(404, {"detail": "Not Found"})


@pytest.fixture
def fakes():
    made: list[FakeOpenAI] = []

    def make(**kw) -> FakeOpenAI:
        made.append(FakeOpenAI(**kw))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def prompts(n: int):
    rows = control_items()[:n]
    return [build_prompt(r["question"], r["options"]) for r in rows], [r["options"] for r in rows]


def test_replicas_share_the_work_and_the_cache(fakes, tmp_path):
    a, b = fakes(), fakes()
    member = one_member(base_url=[a.base, b.base], concurrency=2, batch_size=6).members[0]
    ps, opts = prompts(12)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        backend = OpenAIBackend(member)
        out = score_prompts(backend, ps, opts, cache)
        report = backend.endpoint_report()
        backend.close()
        assert [r.letter for r in out] == ["B"] * 12
        assert all(r.probs[2] < 1e-30 for r in out)  # "C" was never among the top tokens: the floor
        assert [e["served"] for e in report] == [len(a.answered) - 1, len(b.answered)] or [e["served"] for e in report] == [len(a.answered), len(b.answered) - 1]
        assert all(e["served"] > 0 for e in report) and sum(e["served"] for e in report) == 12 and report[0]["repeats"] == 0
        # the identity is the model's, not a URL's: the same model behind one other URL is answered from the cache
        alone = one_member(base_url=b.base).members[0]
        before = len(b.answered)
        backend = OpenAIBackend(alone)
        stats: dict = {}
        score_prompts(backend, ps, opts, cache, stats=stats)
        backend.close()
        assert stats["asked"] == 0 and stats["cached"] == 12 and len(b.answered) == before + 1  # + the one API probe


def test_a_replica_that_dies_mid_run_hands_its_work_to_the_other(fakes, tmp_path):
    live, dying = fakes(), fakes(dies_after=4)
    member = one_member(base_url=[dying.base, live.base], concurrency=2, batch_size=4, max_retries=1).members[0]
    ps, opts = prompts(16)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        backend = OpenAIBackend(member, backoff=0.01)
        out = score_prompts(backend, ps, opts, cache)
        report, notes = backend.endpoint_report(), backend.warnings()
        backend.close()
        assert len(out) == 16 and cache.count() == 16
    assert report[0]["out"] and not report[1]["out"]
    assert report[0]["served"] == 3  # 4 answered, one of them the API probe
    assert report[0]["served"] + report[1]["served"] == 16 and report[0]["repeats"] == 0
    assert len(set(live.answered[1:] if live.answered[0] == dying.answered[0] else live.answered) | set(dying.answered[1:])) == 16
    assert any(dying.base in n and "taken out of the run after serving 3" in n and "other endpoint" in n for n in notes)


def test_a_replica_down_at_the_start_is_left_out(fakes, tmp_path):
    live = fakes()
    member = one_member(base_url=[f"http://127.0.0.1:{free_port()}/v1", live.base], max_retries=0).members[0]
    ps, opts = prompts(3)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        backend = OpenAIBackend(member, backoff=0.01)
        score_prompts(backend, ps, opts, cache)
        notes = backend.warnings()
        backend.close()
    assert len(live.answered) == 4 and any("GET /models" in n for n in notes)


def test_all_replicas_down_is_one_line_naming_each(tmp_path):
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    with pytest.raises(UserError, match="cannot reach") as err:
        OpenAIBackend(one_member(base_url=dead, max_retries=0).members[0], backoff=0.01)
    assert all(u in str(err.value) for u in dead)


def test_replicas_serving_different_models_stop_the_run(fakes):
    a, b = fakes(model="m"), fakes(model="other")
    with pytest.raises(UserError, match="serve different models") as err:
        OpenAIBackend(one_member(base_url=[a.base, b.base], model="x").members[0])
    assert "'m'" in str(err.value) and "'other'" in str(err.value)


def test_loglik_through_chat_when_there_is_no_completions_api(fakes, tmp_path):
    chat_only = fakes(completions=False)
    backend = OpenAIBackend(one_member(base_url=chat_only.base).members[0])
    try:
        assert backend.api == "chat" and backend.identity.endswith(CHAT_IDENTITY_TAG)
        p, _ = prompts(1)
        row = backend.letter_logprobs(p, 3)[0]
        assert row == [-1.6, -0.4, MISSING_LOGPROB]  # " A" counts as A, "All" does not, C is not in the top
        assert json.loads(chat_only.answered[-1]) == chat_messages(p[0])
    finally:
        backend.close()
    with_completions = fakes()
    forced = OpenAIBackend(one_member(base_url=with_completions.base, api="chat").members[0])
    forced.close()
    assert forced.api == "chat" and with_completions.answered == []  # a member's choice needs no probe


# -- replicas, failover and chat loglik against real llama.cpp servers (slow) -------------------
def replica_panel(bases: list[str], **member):
    return panel(bases, concurrency=1, batch_size=4, max_retries=2, **member)


@pytest.mark.slow
@needs_llama
def test_two_real_replicas_both_serve_and_share_answers(replica_logs, tmp_path):
    (a, _, _, log_a), (b, _, _, log_b) = replica_logs
    before = completions_logged(log_a), completions_logged(log_b)
    out, report = screen_with_report(items(4), replica_panel([a, b]), cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    assert out["answer__remote"].null_count() == 0 and out["screen_error"].null_count() == 4
    served = [e["served"] for e in LAST_REPORTS["remote"]]
    assert all(n > 0 for n in served) and sum(served) == report.members[0].asked == 4
    assert LAST_REPORTS["remote"][0]["repeats"] == 0 and not any(e["out"] for e in LAST_REPORTS["remote"])
    # each server's own access log agrees (+1 on the first: the API probe goes to the first endpoint)
    assert completions_logged(log_a) - before[0] == served[0] + 1 and completions_logged(log_b) - before[1] == served[1]
    # one replica alone, same model: everything from the cache (the key holds the model, not the URL)
    again, rep2 = screen_with_report(items(4), replica_panel([b]), cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    assert rep2.members[0].asked == 0 and rep2.members[0].cached == 4
    assert again["answer__remote"].to_list() == out["answer__remote"].to_list()


@pytest.mark.slow
@needs_llama
def test_a_real_replica_killed_mid_run_leaves_the_work_to_the_other(replica_logs, tmp_path):
    (survivor, _, _, log_s), _ = replica_logs
    n = 12
    (tmp_path / "victim").mkdir()
    with llama_server(tmp_path / "victim", n_threads=1) as (victim, _, proc, log_v):
        before = completions_logged(log_s)
        cache = tmp_path / "c.sqlite"
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(screen_with_report, items(n), replica_panel([victim, survivor]), cache_path=cache, progress=False, rules=False)
            for _ in range(1200):  # bounded: 120 s. The probe + 2 answers, then SIGKILL while work remains
                if completions_logged(log_v) >= 3 or run.done():
                    break
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out, report = run.result(timeout=600)
    assert out["answer__remote"].null_count() == 0 and out["screen_error"].null_count() == n  # every item answered
    dead, alive = LAST_REPORTS["remote"]
    assert dead["out"] and not alive["out"] and dead["served"] >= 2 and alive["served"] > 0
    assert dead["served"] + alive["served"] == report.members[0].asked == n and dead["repeats"] == 0  # nothing asked twice
    assert completions_logged(log_s) - before == alive["served"]  # the survivor's own log: each of its answers once
    assert completions_logged(log_v) >= dead["served"] + 1  # + the probe; a reply lost in the kill would be one more
    # run again: nothing is asked, everything comes from the cache
    again, rep2 = screen_with_report(items(n), replica_panel([victim, survivor]), cache_path=cache, progress=False, rules=False)
    assert rep2.members[0].asked == 0 and rep2.members[0].cached == n
    assert sum(e["served"] for e in LAST_REPORTS["remote"]) == 0
    assert again["answer__remote"].to_list() == out["answer__remote"].to_list()


def chat_letter_logprobs_in_process(model: Path, prompts: list) -> list[list[float]]:
    """The next-token log-probabilities of "A".."D" after the model's own chat template, applied here
    (from the GGUF's metadata) and evaluated in-process: an independent reading of what the server's
    chat completions report."""
    import numpy as np
    from llama_cpp import Llama, llama_get_logits_ith
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=str(model), n_ctx=2048, n_threads=2, verbose=False)
    special = lambda t: llm.detokenize([t], special=True).decode()  # noqa: E731
    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=special(llm.token_eos()),
                              bos_token=special(llm.token_bos()), add_generation_prompt=True)
    ids = [llm.tokenize(letter.encode(), add_bos=False, special=False)[0] for letter in "ABCDEFGHIJ"]
    rows = []
    for prompt in prompts:
        llm.reset()
        llm.eval(llm.tokenize(fmt(messages=chat_messages(prompt)).prompt.encode(), add_bos=False, special=True))
        logits = np.ctypeslib.as_array(llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).astype(np.float64)
        logz = logits.max() + np.log(np.exp(logits - logits.max()).sum())
        rows.append([float(logits[i] - logz) for i in ids[: prompt.n_options]])
    return rows


@pytest.mark.slow
@needs_llama
def test_loglik_through_real_chat_completions_reads_the_models_letter_logprobs(server, tmp_path):
    base, model = server
    member = panel(base, api="chat").members[0]
    ps, _ = prompts(3)
    backend = OpenAIBackend(member)
    try:
        assert backend.api == "chat" and backend.identity.endswith(CHAT_IDENTITY_TAG)
        over_http = backend.letter_logprobs(ps, 4)
    finally:
        backend.close()
    for p, row, local in zip(ps, over_http, chat_letter_logprobs_in_process(model, ps)):
        assert all(abs(x - y) < 0.05 for x, y in zip(row[: p.n_options], local)), (row, local)
    # The completions path asks the same model under another conditioning (raw text ending "Answer:"
    # instead of its chat template), so its numbers differ: SmolLM2 puts 0.66 on "A" there for the
    # first control and 0.22 through chat. The identity keeps the two apart in the cache.
    out, report = screen_with_report(items(2), panel(base, api="chat"), cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    assert report.members[0].identity.endswith(CHAT_IDENTITY_TAG) and out["prob__remote"].null_count() == 0
