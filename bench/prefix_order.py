"""How many tokens a KV-reusing backend evaluates when screening a whole benchmark, by request order.

llama.cpp (``filters/backends/llamacpp.py``) evaluates one prompt at a time and keeps the KV
cache of the tokens a prompt shares with the previous one. ``filters.scoring`` sends such a
backend its requests sorted by text (``plan_batches(..., order="prefix")``), so questions with
a common stem ("What is the main color of ...") follow each other; padded backends get them
longest first. This script counts, with the member's own tokenizer (vocabulary only, no
weights loaded, seconds), the tokens each order makes the model evaluate for every item of a
source -- the work of a full screen, since prompt processing is compute-bound (time is
proportional to tokens). ``--tokens-per-s`` turns the counts into hours.

    python bench/prefix_order.py                      # SEED-Bench, the default panel's member
    python bench/prefix_order.py --source ../shared/data/text_pools/ScienceQA_TEST_vila13b.xlsx --tokens-per-s 55
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED = REPO.parent / "shared" / "data" / "text_pools" / "SEEDBench_IMG_vila13b.xlsx"


def evaluated_tokens(token_lists: list[list[int]], order: list[int]) -> int:
    """Tokens evaluated when prompts run in ``order``, each reusing its common prefix with the previous one
    (the rule ``LlamaCppBackend`` applies, through the same ``reusable_prefix``)."""
    from filters.backends.llamacpp import reusable_prefix

    prev: list[int] = []
    total = 0
    for i in order:
        toks = token_lists[i]
        total += len(toks) - reusable_prefix(prev, toks)
        prev = toks
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=SEED, help="benchmark file (default: SEED-Bench xlsx)")
    ap.add_argument("--panel", type=Path, default=None, help="panel.toml (default: the shipped offline panel)")
    ap.add_argument("--tokens-per-s", type=float, default=None, help="measured prompt-processing rate, to print hours")
    args = ap.parse_args()

    import llama_cpp

    from curate.ingest import ingest
    from filters.backends import model_file
    from filters.panel import load_panel
    from filters.prompts import build_prompt
    from filters.scoring import plan_batches

    member = load_panel(args.panel).members[0]
    gguf = model_file(member)
    if gguf.suffix != ".gguf":
        raise SystemExit(f"member {member.name!r}: {gguf} is not a GGUF file (this script counts llama.cpp tokens)")
    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        items = ingest([args.source], out=tmp)
    prompts = [build_prompt(q, o, h, shots=member.shots) for q, h, o in items.select("question", "hint", "options").iter_rows()]
    keys = [p.text for p in prompts]  # identical prompts are one request, as in scoring
    prefix = vocab.tokenize(prompts[0].prefix.encode(), add_bos=True, special=False) if prompts[0].prefix else []
    tokens = [
        prefix + vocab.tokenize(p.body.encode(), add_bos=not prefix, special=False) for p in prompts
    ]
    counts = {}
    for order in ("length", "prefix"):
        ranked = [i for batch in plan_batches(keys, prompts, member.batch_size, order) for i in batch]
        counts[order] = evaluated_tokens(tokens, ranked)
    saved = 1 - counts["prefix"] / counts["length"]
    print(f"{args.source.name}: {items.height:,} items, {len(set(keys)):,} distinct prompts, member {member.name} ({member.shots}-shot, "
          f"{len(prefix)}-token few-shot prefix)")
    print(f"tokens evaluated, longest first: {counts['length']:,}; sorted by text: {counts['prefix']:,} ({100 * saved:.1f} % fewer)")
    figures = {"source": args.source.name, "items": items.height, "tokens_length_order": counts["length"],
               "tokens_prefix_order": counts["prefix"], "saved": round(saved, 4)}
    if args.tokens_per_s:
        hours = {k: v / args.tokens_per_s / 3600 for k, v in counts.items()}
        print(f"at {args.tokens_per_s:g} tokens/s: {hours['length']:.2f} h vs {hours['prefix']:.2f} h")
        figures |= {f"hours_{k}_order": round(v, 2) for k, v in hours.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
