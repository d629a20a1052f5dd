"""Backends answer whole lists of prompts; ``filters.scoring`` owns caching, ordering and batching.

The contract (stated once, as lm-evaluation-harness does for its ``LM`` class):

* ``letter_logprobs(prompts, n)`` -> for each prompt, the log-probabilities (log-softmax over
  the whole vocabulary) of the next tokens ``" A"``, ``" B"``, ... (``n`` of them) right after
  the prompt text, which ends with ``"Answer:"``. One forward pass per prompt; the shared
  few-shot prefix is computed once per member and its KV cache reused.
* ``generate(prompts, max_new_tokens)`` -> greedy continuations (chat template applied when
  the member asks for it), special tokens stripped.
* ``identity`` names the weights (file hash or pinned revision) + dtype + backend: it goes into
  every cache key, so two models never share answers.
* ``batch_independent`` (optional, default False): a prompt's answer does not depend on the
  other prompts sent with it -- llama.cpp evaluates one prompt at a time, keeping the KV cache
  of the tokens it shares with the previous prompt; an OpenAI-compatible server answers each
  request alone and may cache prefixes (vLLM, llama.cpp server). Scoring then sends requests
  sorted by text, so neighbours with a common question stem share that work, and skips cached
  prompts inside a batch. Otherwise (padded transformers batches) requests go longest first
  and a batch always runs whole, so its numbers never depend on the cache state.

Backends raise ``UserError`` (one line) for problems a user can fix: missing file, unreachable
endpoint, a server that cannot return logprobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from curate.errors import UserError
from filters.cache import ResponseCache
from filters.panel import PACKAGED_PREFIX, Member
from filters.prompts import Prompt


class Backend(Protocol):
    identity: str
    member: Member

    def letter_logprobs(self, prompts: list[Prompt], n_letters: int) -> list[list[float]]: ...

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]: ...

    def close(self) -> None: ...


def model_file(member: Member) -> Path:
    """The local weights a member names: a GGUF file, a folder, or a packaged model (joined once)."""
    if member.model.startswith(PACKAGED_PREFIX):
        from filters.backends.packaged import resolve_packaged

        return resolve_packaged(member.model[len(PACKAGED_PREFIX):])
    path = Path(member.model)
    if not path.exists():
        raise UserError(f"member {member.name!r}: model path {path} does not exist; fix `model` in the panel file")
    return path


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def resolve_backend_name(member: Member) -> str:
    """``auto``: llama.cpp for a GGUF when llama-cpp-python is installed (2-4x faster on CPU), else transformers."""
    if member.backend != "auto":
        return member.backend
    if member.base_url:
        return "openai"
    path = member.model
    is_gguf = path.startswith(PACKAGED_PREFIX) or path.endswith(".gguf") or bool(member.gguf_file)
    return "llamacpp" if is_gguf and llama_cpp_available() else "transformers"


def open_backend(member: Member, cache: ResponseCache, **options) -> Backend:
    name = resolve_backend_name(member)
    if name == "scripted":  # answers written in advance (tests of the screen's decisions)
        from filters.backends.scripted import ScriptedBackend

        return ScriptedBackend(member, cache, **options)
    if name == "openai":
        from filters.backends.openai_http import OpenAIBackend

        return OpenAIBackend(member, **options)
    if name == "llamacpp":
        if not llama_cpp_available():
            raise UserError(f"member {member.name!r}: backend 'llamacpp' needs llama-cpp-python (pip install 'mmcurate[server]'), or set backend = \"transformers\"")
        from filters.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(member, cache, **options)
    from filters.backends.hf import TransformersBackend

    return TransformersBackend(member, cache, **options)
