"""Screening throughput on one member and the same N questions (default 200).

The questions are what screening spends its time on: by default N questions of SEED-Bench
(../shared/data, a seeded sample across its categories, as ``mmcurate audit`` would ask them);
``--questions mmlu`` uses the shipped MMLU control questions instead (longer: ~136 tokens
against a ~96-token 2-shot prefix, so the prefix cache can save at most ~1.7x there).

Prints:
  1. samples/s of ``loglik`` vs ``generate`` (target >= 5x),
  2. 2-shot ``loglik`` with vs without the shared few-shot prefix KV cache (target >= 2x),
  3. the fraction of this CPU's measured fp32 matmul peak that ``loglik`` reaches (target >= 40 %).

No response cache is used (every number is fresh model work). The default member is SmolLM2-135M
through transformers (fp32 weights, so the fp32 GEMM peak is the right yardstick); pass
``--panel``/``--member`` for another one. Run: ``python bench/screen.py [--n 200]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_peak_gflops(threads: int | None, size: int = 2048, reps: int = 10) -> float:
    """Best-of-3 fp32 GEMM throughput with torch (MKL/oneDNN): the CPU's practical peak."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def load_questions(kind: str, n: int) -> list[dict]:
    """``n`` questions with options: the MMLU controls, or a seeded sample of SEED-Bench."""
    if kind == "mmlu":
        from filters.competence import control_items

        return list(control_items())[:n]
    import tempfile

    from curate.ingest import ingest

    seed_xlsx = Path(__file__).resolve().parents[2] / "shared" / "data" / "text_pools" / "SEEDBench_IMG_vila13b.xlsx"
    with tempfile.TemporaryDirectory() as tmp:
        items = ingest(seed_xlsx, out=tmp)
    return items.sample(n=min(n, items.height), seed=0).select("question", "options", "hint").to_dicts()


def run(backend, prompts, method: str, batch_size: int) -> float:
    """Seconds to answer all prompts, in the order and batches filters.scoring would use for this backend."""
    from filters.scoring import plan_batches

    order = "prefix" if getattr(backend, "batch_independent", False) else "length"
    batches = plan_batches([str(i) for i in range(len(prompts))], prompts, batch_size, order)
    t = time.perf_counter()
    for idx in batches:
        batch = [prompts[j] for j in idx]
        if method == "loglik":
            backend.letter_logprobs(batch, 4)
        else:
            backend.generate(batch, backend.member.max_new_tokens)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="questions (default 200)")
    ap.add_argument("--panel", default=None, help="panel.toml (default data/panel_tiny.toml)")
    ap.add_argument("--member", default=None, help="member name (default: the panel's first)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--generate-n", type=int, default=None, help="questions for generate (default: --n)")
    ap.add_argument("--questions", choices=["seed", "mmlu"], default="seed", help="SEED-Bench sample (default) or the MMLU controls")
    args = ap.parse_args()

    from filters.backends import open_backend, resolve_backend_name
    from filters.cache import ResponseCache
    from filters.panel import load_panel
    from filters.prompts import build_prompt

    panel_path = args.panel or str(Path(__file__).resolve().parents[1] / "data" / "panel_tiny.toml")
    panel = load_panel(panel_path)
    member = panel.member(args.member) if args.member else panel.members[0]
    member = dataclasses.replace(member, shots=2, max_new_tokens=16, **({"batch_size": args.batch_size} if args.batch_size else {}))
    items = load_questions(args.questions, args.n)
    n_gen = min(args.generate_n or args.n, len(items))
    p2 = [build_prompt(it["question"], it["options"], it.get("hint"), shots=2) for it in items]

    peak = matmul_peak_gflops(member.n_threads)
    with ResponseCache(Path("/tmp") / "mmcurate-bench-hashes.sqlite") as cache:  # only memoises the weight-file hash
        t = time.perf_counter()
        backend = open_backend(member, cache)
        load_s = time.perf_counter() - t
        kind = resolve_backend_name(member)
        print(f"member {member.name} ({kind}{', ' + member.dtype if kind == 'transformers' else ''}), {len(items)} {args.questions.upper()} questions, batch {member.batch_size}, "
              f"threads {member.n_threads}, load {load_s:.1f} s")
        print(f"fp32 matmul peak (torch, 2048^3 GEMM): {peak:.1f} GFLOP/s")

        run(backend, p2[: min(8, len(p2))], "loglik", member.batch_size)  # warm-up, also builds the prefix KV cache
        backend.tokens_processed = 0
        s_ll = run(backend, p2, "loglik", member.batch_size)
        tok_ll = backend.tokens_processed
        backend.use_prefix_cache = False
        backend.tokens_processed = 0
        s_noprefix = run(backend, p2, "loglik", member.batch_size)
        tok_noprefix = backend.tokens_processed
        backend.use_prefix_cache = True
        s_gen = run(backend, p2[:n_gen], "generate", member.batch_size)

        ll_rate, gen_rate, np_rate = len(p2) / s_ll, n_gen / s_gen, len(p2) / s_noprefix
        print(f"loglik   2-shot, prefix KV cache : {ll_rate:7.2f} samples/s ({s_ll:.1f} s, {tok_ll} tokens)")
        print(f"loglik   2-shot, no prefix cache : {np_rate:7.2f} samples/s ({s_noprefix:.1f} s, {tok_noprefix} tokens)")
        print(f"generate 2-shot, {member.max_new_tokens} new tokens    : {gen_rate:7.2f} samples/s ({s_gen:.1f} s, {n_gen} questions)")
        print(f"loglik / generate speed-up       : {ll_rate / gen_rate:5.1f}x   (target >= 5x)")
        print(f"prefix cache speed-up (2-shot)   : {ll_rate / np_rate:5.1f}x   (target >= 2x)")

        model = getattr(backend, "model", None)
        if model is not None:
            n_emb = model.get_input_embeddings().weight.numel()
            n_params = sum(p.numel() for p in model.parameters())
            body = n_params - n_emb - (0 if model.config.tie_word_embeddings else n_emb)  # weights used per token
            flops = 2 * body * tok_ll + 2 * n_emb * len(p2)  # transformer blocks per token + lm_head once per question
            achieved = flops / s_ll / 1e9
            print(f"loglik compute: {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the fp32 matmul peak   (target >= 40 %)")
        else:
            print("loglik compute: peak fraction is measured for the transformers backend only (quantised kernels differ)")


if __name__ == "__main__":
    main()
