"""The OpenAI-compatible backend against a real llama-cpp-python server on 127.0.0.1 (no mock client)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import polars as pl
import pytest

from curate.schema import ITEM_SCHEMA, conform
from filters.backends.packaged import resolve_packaged
from filters.competence import control_items
from filters.panel import panel_from_dict
from filters.screen import screen_with_report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python[server] is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = resolve_packaged("smollm2-135m-instruct")
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--model_alias", "smollm2", "--n_ctx", "2048", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):  # bounded: 60 s
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(base + "/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("llama_cpp.server did not become ready in 60 s")
        yield base, model
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def items(n: int) -> pl.DataFrame:
    rows = control_items()[60 : 60 + n]
    return conform(
        pl.DataFrame({"item_id": [r["id"] for r in rows], "question": [r["question"] for r in rows],
                      "options": [r["options"] for r in rows], "answer": [r["answer"] for r in rows]}),
        ITEM_SCHEMA,
    )


def panel(base: str, **member):
    m = {"name": "remote", "backend": "openai", "base_url": base, "model": "smollm2", "concurrency": 2, "timeout": 120.0, **member}
    return panel_from_dict({"panel": {"control_size": 0, "chance_corrected": False}, "member": [m]})


def test_loglik_over_http_matches_in_process_llama_cpp(server, tmp_path):
    base, model = server
    http_out, report = screen_with_report(items(4), panel(base), cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    assert report.members[0].identity.startswith("openai|smollm2|rev=")
    assert http_out["answer__remote"].null_count() == 0 and http_out["raw__remote"].null_count() == 4
    local = panel_from_dict(
        {"panel": {"control_size": 0, "chance_corrected": False},
         "member": [{"name": "remote", "backend": "llamacpp", "model": str(model), "n_threads": 2}]}
    )
    local_out, _ = screen_with_report(items(4), local, cache_path=tmp_path / "c.sqlite", progress=False, rules=False)
    # Same engine, same weights: the letter with the highest next-token probability agrees.
    assert http_out["answer__remote"].to_list() == local_out["answer__remote"].to_list()
    for a, b in zip(http_out["prob__remote"], local_out["prob__remote"]):
        assert abs(a - b) < 0.05


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
