"""transformers backend: a local model folder or a GGUF file (dequantised on load), CPU or GPU."""

from __future__ import annotations


from curate.errors import UserError
from curate.schema import LETTERS
from filters.backends import model_file
from filters.cache import ResponseCache, model_files_identity
from filters.panel import Member
from filters.prompts import Prompt, chat_messages


def letter_token_ids(encode, n: int = len(LETTERS)) -> list[int]:
    """Token ids of " A".." J" (the token after "Answer:"); each must be one distinct token."""
    ids = []
    for letter in LETTERS[:n]:
        toks = encode(" " + letter)
        if len(toks) != 1:
            toks = encode(letter)
        if len(toks) != 1:
            raise UserError(f"the tokenizer splits option letter {letter!r} into {len(toks)} tokens; use method = \"generate\" for this member")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise UserError("the tokenizer maps two option letters to one token; use method = \"generate\"")
    return ids


class TransformersBackend:
    def __init__(self, member: Member, cache: ResponseCache, *, use_prefix_cache: bool = True):
        import os

        os.environ.setdefault("TQDM_DISABLE", "1")  # GGUF de-quantizing bars would garble our rich progress
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.member = member
        self.use_prefix_cache = use_prefix_cache
        path = model_file(member)
        folder, gguf = (path.parent, path.name) if path.is_file() else (path, member.gguf_file)
        kwargs = {"gguf_file": gguf} if gguf else {}
        self.identity = f"transformers|{model_files_identity(cache, path, None if path.is_file() else gguf)}|{member.dtype}"
        if member.revision:
            self.identity += f"|rev={member.revision}"
        torch.manual_seed(0)
        if member.n_threads:
            torch.set_num_threads(member.n_threads)
        try:
            self.tok = AutoTokenizer.from_pretrained(folder, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=getattr(torch, member.dtype), **kwargs
            ).to(member.device).eval()
        except (OSError, ValueError) as exc:
            raise UserError(f"member {member.name!r}: cannot load {path} with transformers ({str(exc).splitlines()[0]})") from exc
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.letter_ids = letter_token_ids(lambda s: self.tok.encode(s, add_special_tokens=False))
        import inspect

        # transformers >= 5.2x renamed the forward argument `past_key_values` to `cache`
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._prefix_text: str | None = None
        self._prefix_cache = None
        self._prefix_len = 0
        self.tokens_processed = 0  # for bench: tokens run through the model

    # -- loglik ----------------------------------------------------------------------
    def _prefix(self, text: str):
        """KV cache of the shared few-shot prefix, computed once per member."""
        import torch

        if text != self._prefix_text:
            ids = self.tok(text, return_tensors="pt").input_ids.to(self.member.device)
            with torch.inference_mode():
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self.tokens_processed += ids.shape[1]
            kv = getattr(out, "cache", None) or out.past_key_values
            self._prefix_text, self._prefix_cache, self._prefix_len = text, kv, ids.shape[1]
        return self._prefix_cache, self._prefix_len

    def letter_logprobs(self, prompts: list[Prompt], n_letters: int) -> list[list[float]]:
        import copy

        import torch

        prefixes = {p.prefix for p in prompts}
        shared = self.use_prefix_cache and len(prefixes) == 1 and next(iter(prefixes)) != ""
        texts = [p.body if shared else p.text for p in prompts]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=not shared).to(self.member.device)
        mask = enc.attention_mask
        kwargs = {}
        if shared:
            cache, plen = self._prefix(next(iter(prefixes)))
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(prompts))
            kwargs[self._cache_kwarg] = past
            position_ids = plen + (mask.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([torch.ones(len(prompts), plen, dtype=mask.dtype, device=mask.device), mask], dim=1)
        else:
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(
                input_ids=enc.input_ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=1, use_cache=shared, **kwargs
            )
        self.tokens_processed += int(enc.attention_mask.sum())
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        return logp[:, self.letter_ids[:n_letters]].tolist()

    # -- generate --------------------------------------------------------------------
    def _chat(self) -> bool:
        return self.member.chat if self.member.chat is not None else bool(self.tok.chat_template)

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        import torch

        if self._chat():
            texts = [self.tok.apply_chat_template(chat_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        else:
            enc = self.tok([p.text for p in prompts], return_tensors="pt", padding=True)
        enc = enc.to(self.member.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id
            )
        self.tokens_processed += int(enc.attention_mask.sum())
        new = out[:, enc.input_ids.shape[1]:]
        return [self.tok.decode(row, skip_special_tokens=True) for row in new]

    def close(self) -> None:
        self.model = None
