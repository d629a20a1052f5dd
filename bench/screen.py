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

``--e2e`` (issue #17) instead measures, in one run on the same questions and the same model (the
default panel's member unless ``--panel``/``--member``), the end-to-end ratio that matters to a user:

* **our default way**: the panel as shipped -- llama.cpp, loglik, shared prefix KV cache, prompts in
  text order, adaptive rotation, chance-corrected hits -- through ``screen_with_report`` with a fresh
  response cache (the MMLU controls that give the letter prior are asked first, as the per-user cache
  holds them after the first run; the timed part includes loading the model);
* **the naive way**: transformers fp32, 2-shot greedy generation, one prompt at a time, no cache, the
  reply read with MMStar's own extraction (``curate.mc.match_mmstar``), a hit when it names the key
  (timed without the model load, which is printed apart).

On ``--n`` SEED-Bench questions (default 40) it prints samples/s of each and the ratio (target >= 10x),
and the share of identical drop/keep verdicts; on the controls (``--vision`` vision-needed ones, whose
every hit is false, and ``--mmlu`` MMLU ones, whose hits are right) both ways' error rates with Wilson
95 % intervals. Run: ``nice python bench/screen.py --e2e``.
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


def seed_items(n: int):
    """``n`` SEED-Bench questions (seeded sample, as ``load_questions``) as an items table for ``screen``."""
    import tempfile

    from curate.ingest import ingest

    seed_xlsx = Path(__file__).resolve().parents[2] / "shared" / "data" / "text_pools" / "SEEDBench_IMG_vila13b.xlsx"
    with tempfile.TemporaryDirectory() as tmp:
        items = ingest(seed_xlsx, out=tmp)
    return items.sample(n=min(n, items.height), seed=0).select("item_id", "question", "options", "answer", "hint")


def _rate(k: int, n: int) -> str:
    from curate.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / n if n else 0:.1%} [95% CI {lo:.1%}, {hi:.1%}]"


def naive_hits(backend, rows: list[dict]) -> tuple[list[bool], float]:
    """MMStar's way: 2-shot greedy generation, one prompt at a time, no cache; hit = MMStar's extraction names the key."""
    from curate.mc import match_mmstar
    from filters.prompts import build_prompt

    hits = []
    t = time.perf_counter()
    for it in rows:
        prompt = build_prompt(it["question"], [str(o) for o in it["options"]], it.get("hint"), shots=2)
        reply = backend.generate([prompt], backend.member.max_new_tokens)[0]
        hits.append(match_mmstar(reply, len(it["options"])) == it["answer"])
    return hits, time.perf_counter() - t


def end_to_end(args) -> None:
    """Our default way against the naive way on the same questions and model (see the module docstring)."""
    import tempfile

    from filters.backends import open_backend, resolve_backend_name
    from filters.cache import ResponseCache
    from filters.calibrate import calibrate_panel, vision_controls
    from filters.competence import control_items
    from filters.panel import load_panel
    from filters.screen import screen_with_report

    panel = load_panel(args.panel)
    member = panel.member(args.member) if args.member else panel.members[0]
    panel = panel.select([member.name])
    items = seed_items(args.n)
    vis_all = list(vision_controls())
    step = max(1, len(vis_all) // max(args.vision, 1))
    vision = vis_all[::step][: args.vision]
    mmlu = list(control_items())[: args.mmlu]
    prior = list(control_items())[: max(args.mmlu, panel.control_size)]  # the first control_size give the letter prior
    margin = member.margin if getattr(member, "margin", None) is not None else panel.margin
    print(f"member {member.name}, {items.height} SEED-Bench questions; controls: {len(vision)} vision-needed, {len(mmlu)} MMLU")

    with tempfile.TemporaryDirectory() as tmp:
        cache_path = Path(tmp) / "responses.sqlite"
        # the controls (their first control_size MMLU questions give the letter prior) asked first, once, as the
        # per-user cache holds them after a first run; rates at the panel's own margin and rotation rule
        ours_ctl = calibrate_panel(panel, cache_path=cache_path, mmlu=prior, vision=vision, margin=margin)[0]
        ours_mmlu = len(set(ours_ctl.mmlu_hit_ids) & {it["id"] for it in mmlu})
        t = time.perf_counter()
        out, rep = screen_with_report(items, panel, cache_path=cache_path, progress=False, rules=False)
        s_ours = time.perf_counter() - t
    m = rep.members[0]
    asks = getattr(m, "asks", None)
    print(f"ours : {resolve_backend_name(member)}, {member.method} {member.shots}-shot, rotations {panel.rotations}, margin {margin}: "
          f"{items.height / s_ours:6.2f} samples/s ({s_ours:.1f} s incl. model load; {asks if asks is not None else '?'} prompts "
          f"for {items.height} questions)")
    print(f"ours on the controls: false hits {_rate(ours_ctl.false_hits, ours_ctl.n_vision)}, MMLU hits {_rate(ours_mmlu, len(mmlu))}, "
          f"{ours_ctl.prompts} prompts for {ours_ctl.single_pass_prompts} questions ({ours_ctl.calls_ratio:.2f}x one pass)")

    naive = dataclasses.replace(member, backend="transformers", method="generate", shots=2, batch_size=1, dtype="float32",
                                max_new_tokens=16, **({"margin": None} if hasattr(member, "margin") else {}))
    with ResponseCache(Path("/tmp") / "mmcurate-bench-hashes.sqlite") as hashes:  # only memoises the weight-file hash
        t = time.perf_counter()
        backend = open_backend(naive, hashes, use_prefix_cache=False)
        load_s = time.perf_counter() - t
        rows = items.to_dicts()
        naive_item_hits, s_naive = naive_hits(backend, rows)
        naive_vis, _ = naive_hits(backend, vision)
        naive_mmlu, _ = naive_hits(backend, mmlu)
        backend.close()
    print(f"naive: transformers fp32, generate 2-shot, one prompt at a time, no cache, MMStar's extraction: "
          f"{items.height / s_naive:6.2f} samples/s ({s_naive:.1f} s, model load {load_s:.1f} s apart)")
    ratio = s_naive / s_ours
    print(f"end-to-end speed-up (ours / naive samples/s): {ratio:5.1f}x   (target >= 10x)")

    ours_blind = out["blind"].fill_null(False).to_list()
    same = sum(a == b for a, b in zip(ours_blind, naive_item_hits))
    print(f"identical drop/keep verdicts: {same}/{len(rows)} = {same / len(rows):.0%} "
          f"(ours drops {sum(ours_blind)}, naive drops {sum(naive_item_hits)})")
    print(f"false hits on vision-needed controls (lower is better): ours {_rate(ours_ctl.false_hits, ours_ctl.n_vision)}; "
          f"naive {_rate(sum(naive_vis), len(vision))}")
    print(f"MMLU control hits (higher is better):                  ours {_rate(ours_mmlu, len(mmlu))}; "
          f"naive {_rate(sum(naive_mmlu), len(mmlu))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="questions (default 200)")
    ap.add_argument("--panel", default=None, help="panel.toml (default data/panel_tiny.toml)")
    ap.add_argument("--member", default=None, help="member name (default: the panel's first)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--generate-n", type=int, default=None, help="questions for generate (default: --n)")
    ap.add_argument("--questions", choices=["seed", "mmlu"], default="seed", help="SEED-Bench sample (default) or the MMLU controls")
    ap.add_argument("--e2e", action="store_true", help="our default way vs the naive way (issue #17; default --n 40, default panel)")
    ap.add_argument("--vision", type=int, default=40, help="--e2e: vision-needed controls asked both ways (default 40)")
    ap.add_argument("--mmlu", type=int, default=40, help="--e2e: MMLU controls asked both ways (default 40)")
    args = ap.parse_args()
    if args.e2e:
        if "--n" not in sys.argv:
            args.n = 40
        end_to_end(args)
        return

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
