"""Issue #17's control rates for a panel's members, printed (not asserted: ~400 prompts of a 1.5B model).

    python bench/calibrate.py [--panel data/panel.toml] [--mmlu 100] [--target-fpr 0.02] [--cache PATH] [--adaptive-depth K]

For each member, with the panel's rotation rule (adaptive by default): the margin `mmcurate panel calibrate`
would choose, the false-hit rate on the shipped vision-needed controls (data/controls_vision.jsonl) with its Wilson
95 % interval, the recall on the MMLU controls, the share of single-pass MMLU hits kept, and the prompts against a
single pass; then a held-out check (margin chosen on the even vision rows, measured on the odd ones). Each line
says whether the issue's target holds: false hits <= 2 %, >= 75 % of single-pass hits kept, <= 1.6x the calls.
Under adaptive rotation it also prints every ``adaptive_depth`` with the margin that meets the target there
(from the same cached asks: no extra model call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters.cache import user_cache_path  # noqa: E402
from filters.calibrate import calibrate_panel, vision_controls  # noqa: E402
from curate.stats import wilson_interval  # noqa: E402
from filters.competence import control_items  # noqa: E402
from filters.panel import load_panel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", default=None, help="panel file (default: the packaged default panel)")
    ap.add_argument("--mmlu", type=int, default=100, help="MMLU controls to use (the first N of the 200 shipped)")
    ap.add_argument("--target-fpr", type=float, default=0.02)
    ap.add_argument("--cache", default=None, help="response cache (default: the per-user cache)")
    ap.add_argument("--adaptive-depth", type=int, default=None, help="override the panel's adaptive_depth (0: every rotation)")
    args = ap.parse_args()
    panel = load_panel(args.panel)
    if args.adaptive_depth is not None:
        import dataclasses

        panel = dataclasses.replace(panel, adaptive_depth=args.adaptive_depth or None)
    cache = Path(args.cache) if args.cache else user_cache_path()
    mmlu = list(control_items())[: args.mmlu]
    started = time.perf_counter()
    for r in calibrate_panel(panel, cache_path=cache, target_fpr=args.target_fpr, mmlu=mmlu, progress=True):
        kept_hits = round((r.kept or 0) * r.single_pass_hits)
        kept_ci = wilson_interval(kept_hits, r.single_pass_hits)
        print(f"{r.member}: rotations {r.rotations}, adaptive_depth {r.adaptive_depth or 'every rotation'}, margin {r.margin}")
        print(f"  false hits on {r.n_vision} vision-needed controls: {r.false_hits} = {100 * r.false_hit_rate:.1f} % "
              f"(95 % CI {100 * r.false_hit_ci[0]:.1f}-{100 * r.false_hit_ci[1]:.1f} %)  target <= 2 %: "
              f"{'met' if r.false_hit_rate <= 0.02 else 'NOT met'}")
        print(f"  MMLU: recall {100 * r.recall:.1f} % of {r.n_mmlu}; single-pass hits {r.single_pass_hits}, kept "
              f"{100 * (r.kept or 0):.1f} % (95 % CI {100 * kept_ci[0]:.1f}-{100 * kept_ci[1]:.1f} %)  target >= 75 %: "
              f"{'met' if (r.kept or 0) >= 0.75 else 'NOT met'}")
        print(f"  prompts {r.prompts} against {r.single_pass_prompts} for one pass = {r.calls_ratio:.2f}x  "
              f"target <= 1.6x: {'met' if r.calls_ratio <= 1.6 else 'NOT met'}; asked now {r.asked}, from cache {r.cached}")
        for d in r.depths:
            print(f"  adaptive_depth {d['adaptive_depth']}: margin {d['margin']}, false hits {d['false_hits']}/{r.n_vision} = "
                  f"{100 * d['false_hit_rate']:.1f} %, MMLU recall {d['mmlu_hits']}/{r.n_mmlu}, kept "
                  f"{100 * (d['kept'] or 0):.1f} % of {r.single_pass_hits}, {d['calls_ratio']:.2f}x the calls")
        vis = list(vision_controls())
        fit = calibrate_panel(panel, cache_path=cache, target_fpr=args.target_fpr, vision=vis[0::2], mmlu=mmlu,
                              members=[r.member], progress=False)[0]
        held = calibrate_panel(panel, cache_path=cache, vision=vis[1::2], mmlu=mmlu, margin=fit.margin,
                               members=[r.member], progress=False)[0]
        print(f"  held out: margin {fit.margin} chosen on {fit.n_vision} even rows gives {held.false_hits} of "
              f"{held.n_vision} false hits on the odd rows ({100 * held.false_hit_rate:.1f} %, 95 % CI "
              f"{100 * held.false_hit_ci[0]:.1f}-{100 * held.false_hit_ci[1]:.1f} %)")
        print(json.dumps({k: v for k, v in r.as_dict().items() if k not in ("sweep", "false_hit_ids", "mmlu_hit_ids", "depths")}))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
