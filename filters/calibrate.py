"""Choose each member's hit margin by its measured error rate (``mmcurate panel calibrate``).

Why: a panel drops an item when a member "hits" it without the image. On a question that truly
needs the image every such hit is a false one -- a good item thrown away -- and how many there are
depends on the member's hit margin (``filters.competence.is_hit``: the key must win after
calibration by the letter prior with a calibrated probability at least ``1/n + margin``) and on the
panel's rotation rule. A margin picked by hand says nothing about either error; this module picks
it from two shipped control sets, asked once per model through the response cache:

* **vision-needed controls** (``data/controls_vision.jsonl``): multiple-choice questions that cannot
  be answered without their image -- easy-VQA colour/shape questions and the synthetic bar charts,
  circle counts and town maps of the demo pool (provenance below). Any hit on them is a false hit.
* **MMLU controls** (``data/controls_mmlu.jsonl``): knowledge questions that need no image. A member
  that knows the answer should hit them; they measure what a stricter margin costs.

For each member the margin swept is the smallest multiple of :data:`STEP` whose **false-hit rate**
(hits on the vision-needed controls / vision-needed controls) is at most the target; it is reported
with its Wilson 95 % interval. **Recall** is the share of the MMLU controls the member still hits at
that margin under the panel's rotation rule (hits / MMLU questions, Wilson interval; an upper bound
is the member's plain accuracy). **Kept** is the share of the member's single-pass hits (one ask, no
rotation, the panel's own margin: the old rule) that are still hits: the price of the new rule in
true blind-answerable questions let through. The three land in the panel file as the member's
``margin``, ``false_hit_rate`` and ``recall`` (written with tomlkit: comments and layout stay).

Rotation: every control is asked once; with ``rotations = "adaptive"`` only a question that hits at
margin 0 is asked again with its options rotated by one more position, stopping at the first miss
(a hit at any margin >= 0 is a hit at margin 0, so these asks hold everything the sweep needs); with
``rotations = k`` every question is asked with ``min(k, n_options)`` rotations. The letter prior that
calibrates the probabilities is the one ``screen`` uses: the member's mean option distribution on the
first ``control_size`` MMLU controls, unrotated.

Why the margin is in-sample: the same controls choose the margin and report its rate, so the stated
false-hit rate is optimistic by the sweep's own luck; the Wilson interval is the honest width, and a
test (``tests/test_calibrate.py``) checks the rate on a held-out half.

Provenance of ``controls_vision.jsonl`` (:func:`derive_vision_controls`, checked by a test against the
shipped file): every row of ``data/demo/easy_vqa_mcq.jsonl`` (easy-VQA, MIT) and of
``data/demo/synthetic_charts.jsonl`` (drawn by ``scripts/make_demo_pool.py``, CC0) except

* the ``geometry`` rows: their key is always the smallest number offered (the script draws every
  distractor above the hypotenuse), so the text alone gives the answer away;
* exact repeats (same question, options and key): one observation counted twice would narrow the
  interval for nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from curate.errors import UserError
from curate.schema import LETTERS
from curate.stats import wilson_interval
from filters.competence import Competence, calibrated, control_items, is_hit, summarise
from filters.prompts import build_prompt, rotate
from filters.scoring import Response, score_prompts

VISION_CONTROL_FILE = "controls_vision.jsonl"
DEMO_SOURCES = ("easy_vqa_mcq.jsonl", "synthetic_charts.jsonl")
#: demo categories left out of the vision-needed controls, and why (see the module docstring)
EXCLUDED_CATEGORIES = {"geometry": "key is always the smallest number offered: answerable from the text"}
STEP = 0.001  # margins are swept (and written) on this grid
SWEEP_SHOWN = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)  # margins listed in the JSON report beside the chosen one


# --------------------------------------------------------------------------- the controls


def derive_vision_controls(demo_dir: Path | None = None) -> list[dict]:
    """The vision-needed controls, derived from the shipped demo pool (what ``controls_vision.jsonl`` holds)."""
    from curate.assets import asset_path

    demo_dir = demo_dir or asset_path("demo")
    out, seen = [], set()
    for name in DEMO_SOURCES:
        with open(demo_dir / name, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                if row.get("category") in EXCLUDED_CATEGORIES:
                    continue
                ident = (row["question"], tuple(row["options"]), row["answer"])
                if ident in seen:
                    continue
                seen.add(ident)
                out.append({"id": f"vision:{row['id']}", "category": row["category"], "question": row["question"],
                            "options": row["options"], "answer": row["answer"], "source": f"data/demo/{name}"})
    return out


@lru_cache(maxsize=2)
def vision_controls(name: str = VISION_CONTROL_FILE) -> tuple[dict, ...]:
    from curate.assets import asset_path

    with open(asset_path(name), encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


# --------------------------------------------------------------------------- the pure sweep


def hit_threshold(asks: Sequence[Response], key: str, n_options: int, competence: Competence | None, required: int,
                  *, corrected: bool = True) -> float | None:
    """The largest margin at which these asks make a hit, or None when they never do.

    ``asks[r]`` is the response with options rotated by ``r``; ``key`` the unrotated key. A hit needs
    ``required`` asks, each won by the (rotated) key after calibration; the threshold is then the
    smallest ``calibrated P(key) - 1/n`` over them (``is_hit``'s rule read backwards). Without chance
    correction, or for generated answers, a hit is the right letter whatever the margin (+inf)."""
    if len(asks) < required or n_options < 1 or key not in LETTERS[:n_options]:
        return None
    worst = math.inf
    for r, resp in enumerate(asks[:required]):
        _, rkey = rotate(list(range(n_options)), key, r)
        if resp.probs is None or not corrected:  # a hit or a miss whatever the margin
            if resp.letter != rkey:
                return None
            continue
        q = calibrated(resp.probs, competence)
        j = LETTERS.index(rkey)
        best = max(range(len(q)), key=lambda i: (q[i], -i))
        if best != j:
            return None
        worst = min(worst, q[j] - 1.0 / n_options)
    return worst


def hits_at(thresholds: Sequence[float | None], margin: float) -> int:
    """Items that are hits at ``margin`` (a threshold of +inf -- generated hits -- always counts)."""
    return sum(1 for t in thresholds if t is not None and t >= margin - 1e-12)


def choose_margin(thresholds: Sequence[float | None], target: float, step: float = STEP) -> float:
    """Smallest margin on the ``step`` grid whose false-hit rate on ``thresholds`` is <= ``target``.

    ``thresholds`` are the vision-needed controls' :func:`hit_threshold` values. The rate is a step
    function of the margin, falling only just above a threshold, so the answer is 0 or the first grid
    point above the (k+1)-th largest threshold, k = floor(target * n) false hits allowed."""
    n = len(thresholds)
    allowed = math.floor(target * n + 1e-9)
    finite = sorted((t for t in thresholds if t is not None), reverse=True)
    if len(finite) <= allowed:
        return 0.0
    cut = finite[allowed]  # this one must go: the margin must exceed it
    if math.isinf(cut):
        raise UserError(f"{len(finite)} vision-needed controls are hits whatever the margin (generated answers); "
                        f"no margin reaches a false-hit rate of {target:.3f}")
    margin = max(0.0, math.floor(cut / step + 1) * step)
    while hits_at(thresholds, margin) > allowed:  # guard against grid rounding
        margin += step
    return round(margin, 6)


def calls_at(asks_per_item: Sequence[Sequence[Response]], keys: Sequence[str], n_opts: Sequence[int],
             competence: Competence | None, margin: float, corrected: bool, rotations: int | str,
             depth: int | None = None) -> int:
    """Prompts the panel's rule sends for these items at ``margin`` (adaptive: 1 + rotations while
    hitting, at most ``depth`` asks)."""
    total = 0
    for asks, key, n in zip(asks_per_item, keys, n_opts):
        if rotations != "adaptive":
            total += min(int(rotations), n)
            continue
        used = 0
        for r, resp in enumerate(asks[:_required(rotations, n, depth)]):
            used += 1
            _, rkey = rotate(list(range(n)), key, r)
            if not is_hit(resp, rkey, n, competence, margin=margin, corrected=corrected):
                break
        total += used
    return total


# --------------------------------------------------------------------------- asking a member


@dataclass
class Calibration:
    """One member's calibration: the chosen margin and both error rates at it."""

    member: str
    margin: float | None  # None: the member's hits do not depend on a margin (generate, or no chance correction)
    target_fpr: float
    rotations: str
    n_vision: int
    false_hits: int
    false_hit_rate: float
    false_hit_ci: tuple[float, float]
    n_mmlu: int
    mmlu_hits: int
    recall: float
    recall_ci: tuple[float, float]
    single_pass_hits: int  # MMLU hits with one ask at the panel's own margin
    kept: float | None  # share of those still hits at the chosen margin and rotation rule
    prompts: int  # prompts the panel's rule sends for all controls at the chosen margin
    single_pass_prompts: int  # one per control
    asked: int = 0  # prompts the model answered in this run
    cached: int = 0  # prompts answered from the response cache
    sweep: list[dict] = field(default_factory=list)  # false-hit rate and recall at a few margins
    false_hit_ids: list[str] = field(default_factory=list)  # the vision-needed controls hit at the margin
    mmlu_hit_ids: list[str] = field(default_factory=list)  # the MMLU controls hit at the margin
    note: str | None = None
    adaptive_depth: int | None = None  # the panel's depth the rates above are for (None: every rotation)
    depths: list[dict] = field(default_factory=list)  # adaptive: each depth's margin at the target and its rates

    @property
    def calls_ratio(self) -> float:
        return self.prompts / self.single_pass_prompts if self.single_pass_prompts else float("nan")

    def as_dict(self) -> dict:
        return asdict(self) | {"calls_ratio": self.calls_ratio}


def _prompts(items: Sequence[dict], shots: int, shift: int) -> tuple[list, list[list[str]]]:
    prompts, opts = [], []
    for it in items:
        ro, _ = rotate([str(o) for o in it["options"]], it["answer"], shift)
        prompts.append(build_prompt(it["question"], ro, it.get("hint"), shots=shots))
        opts.append(ro)
    return prompts, opts


def ask_all(backend, cache, items: Sequence[dict], *, rotations: int | str, n_prior: int, corrected: bool,
            stats: dict, advance: Callable[[int], None] | None = None,
            extend: Callable[[int], None] | None = None, depth: int | None = None) -> tuple[list[list[Response]], Competence | None]:
    """Every ask the sweep needs, per item, and the member's letter prior (from the first ``n_prior``
    items, unrotated: the MMLU controls come first in ``items``, as ``screen``'s competence check asks them).

    The first pass goes out as one list (one batch plan: llama.cpp's text order shares stems across
    both sets); each further rotation only for the items the rule still needs (adaptive: at most
    ``depth`` asks per item when given, else every rotation, which every depth's rates can be read from)."""
    shots = backend.member.shots
    prompts, opts = _prompts(items, shots, 0)
    first = score_prompts(backend, prompts, opts, cache, advance=advance, stats=stats)
    comp = summarise(backend.member.name, list(items[:n_prior]), first[:n_prior]) if n_prior else None
    asks = [[r] for r in first]
    n_opts = [len(it["options"]) for it in items]
    top = max(n_opts, default=1)
    for shift in range(1, top):
        if rotations == "adaptive":
            pending = [i for i, a in enumerate(asks) if len(a) == shift and shift < _required(rotations, n_opts[i], depth)
                       and is_hit(a[-1], rotate(list(range(n_opts[i])), items[i]["answer"], shift - 1)[1], n_opts[i], comp,
                                  margin=0.0, corrected=corrected)]
        else:
            pending = [i for i in range(len(items)) if shift < min(int(rotations), n_opts[i])]
        if not pending:
            break
        if extend:
            extend(len(pending))
        p, o = _prompts([items[i] for i in pending], shots, shift)
        for i, r in zip(pending, score_prompts(backend, p, o, cache, advance=advance, stats=stats)):
            asks[i].append(r)
    return asks, comp


def _required(rotations: int | str, n: int, depth: int | None = None) -> int:
    """Asks a hit needs: the screen's own rule (:func:`filters.screen._max_asks`), so calibration and
    screening can never count rotations differently."""
    from filters.screen import _max_asks  # the screen imports nothing from here; lazily, as _Progress below

    return _max_asks(n, rotations, depth)


def calibrate_member(member, panel, cache, *, target_fpr: float, mmlu: Sequence[dict], vision: Sequence[dict],
                     advance: Callable[[int], None] | None = None, extend: Callable[[int], None] | None = None,
                     backend=None, margin: float | None = None, all_depths: bool = True) -> Calibration:
    """Ask one member the controls (cached) and choose its margin; see the module docstring.

    ``margin`` given: nothing is chosen, both rates are measured at that margin (a held-out check of a
    margin chosen on other controls). ``all_depths`` (adaptive rotation): also ask the rotations beyond
    the panel's ``adaptive_depth`` that a hit would need at a deeper one, for the table of every depth."""
    from filters.backends import open_backend

    rotations = getattr(panel, "rotations", 1)
    corrected = bool(panel.chance_corrected)
    items = list(mmlu) + list(vision)
    stats: dict[str, float] = {"asked": 0, "cached": 0, "seconds": 0.0}
    own = backend is None
    backend = backend or open_backend(member, cache)
    try:
        asks, comp = ask_all(backend, cache, items, rotations=rotations, n_prior=min(panel.control_size, len(mmlu)),
                             corrected=corrected, stats=stats, advance=advance, extend=extend,
                             depth=None if all_depths else getattr(panel, "adaptive_depth", None))
    finally:
        if own:
            backend.close()
    keys = [it["answer"] for it in items]
    n_opts = [len(it["options"]) for it in items]
    nm = len(mmlu)
    margin_free = not corrected or all(r.probs is None for a in asks for r in a)
    note = None
    if margin_free:
        note = "hits do not depend on a margin (" + ("chance_corrected = false" if not corrected else "generated answers") + "); rates at the panel's rule"
    depth = getattr(panel, "adaptive_depth", None) if rotations == "adaptive" else None
    # the old rule, whatever margin an earlier calibration wrote for the member: one ask at the panel's margin
    single = [i for i, (a, k, n) in enumerate(zip(asks[:nm], keys, n_opts))
              if is_hit(a[0], k, n, comp, margin=panel.margin, corrected=corrected)]

    def at_depth(d: int | None, fixed: float | None) -> dict:
        """Both error rates, the share of single-pass hits kept and the calls, for asks cut at depth ``d``."""
        thr = [hit_threshold(a, k, n, comp if corrected else None, _required(rotations, n, d), corrected=corrected)
               for a, k, n in zip(asks, keys, n_opts)]
        t_mmlu, t_vis = thr[:nm], thr[nm:]
        m = None if margin_free else (choose_margin(t_vis, target_fpr) if fixed is None else fixed)
        at = 0.0 if m is None else m
        fh, mh = hits_at(t_vis, at), hits_at(t_mmlu, at)
        kept = sum(1 for i in single if t_mmlu[i] is not None and t_mmlu[i] >= at - 1e-12) / len(single) if single else None
        return {"adaptive_depth": d, "margin": m, "at": at, "t_mmlu": t_mmlu, "t_vis": t_vis, "false_hits": fh,
                "mmlu_hits": mh, "kept": kept,
                "prompts": calls_at(asks, keys, n_opts, comp, at, corrected, rotations, d)}

    chosen = at_depth(depth, margin)
    # every depth the adaptive rule could stop at, each with the margin that meets the target: the trade a
    # user chooses ``adaptive_depth`` by (fewer rotations can meet one false-hit rate with more recall)
    depths = []
    if rotations == "adaptive" and not margin_free and all_depths:
        for d in range(2, max(n_opts, default=0) + 1):
            same = d == depth or (depth is None and d == max(n_opts))
            r = chosen if same and margin is None else at_depth(d, None)
            depths.append({"adaptive_depth": d, "margin": r["margin"], "false_hits": r["false_hits"],
                           "false_hit_rate": r["false_hits"] / max(len(vision), 1), "mmlu_hits": r["mmlu_hits"],
                           "recall": r["mmlu_hits"] / max(nm, 1), "kept": r["kept"],
                           "calls_ratio": r["prompts"] / len(items) if items else None})
    at, t_mmlu, t_vis, fh, mh = chosen["at"], chosen["t_mmlu"], chosen["t_vis"], chosen["false_hits"], chosen["mmlu_hits"]
    sweep = [{"margin": m, "false_hit_rate": hits_at(t_vis, m) / max(len(t_vis), 1),
              "recall": hits_at(t_mmlu, m) / max(nm, 1)} for m in sorted({*SWEEP_SHOWN, at})] if not margin_free else []
    return Calibration(
        member=member.name, margin=chosen["margin"], target_fpr=target_fpr, rotations=str(rotations),
        n_vision=len(t_vis), false_hits=fh, false_hit_rate=fh / max(len(t_vis), 1), false_hit_ci=wilson_interval(fh, len(t_vis)),
        n_mmlu=nm, mmlu_hits=mh, recall=mh / max(nm, 1), recall_ci=wilson_interval(mh, nm),
        single_pass_hits=len(single), kept=chosen["kept"],
        prompts=chosen["prompts"], single_pass_prompts=len(items),
        asked=int(stats["asked"]), cached=int(stats["cached"]), sweep=sweep, note=note,
        false_hit_ids=[str(it.get("id")) for it, t in zip(vision, t_vis) if t is not None and t >= at - 1e-12],
        mmlu_hit_ids=[str(it.get("id")) for it, t in zip(mmlu, t_mmlu) if t is not None and t >= at - 1e-12],
        adaptive_depth=depth, depths=depths,
    )


def calibrate_panel(panel, *, cache_path: str | Path, target_fpr: float = 0.02, members: list[str] | None = None,
                    mmlu: Sequence[dict] | None = None, vision: Sequence[dict] | None = None,
                    progress: bool = False, margin: float | None = None, all_depths: bool = True) -> list[Calibration]:
    """Calibrate every member of ``panel`` (or those named) on the shipped controls (``mmlu`` / ``vision``
    replace them; ``margin`` measures the rates at that margin instead of choosing one; ``all_depths``:
    see :func:`calibrate_member`)."""
    from filters.cache import ResponseCache
    from filters.screen import _Progress

    if not 0.0 <= target_fpr < 1.0:
        raise UserError(f"--target-fpr {target_fpr}: must be in [0, 1)")
    mmlu = list(control_items() if mmlu is None else mmlu)
    vision = list(vision_controls() if vision is None else vision)
    panel = panel.select(members)
    out = []
    with ResponseCache(cache_path) as cache, _Progress(progress) as prog:
        for member in panel.members:
            total = [len(mmlu) + len(vision)]
            task = prog.add(f"{member.name}: controls", total[0])

            def extend(k: int, t=task, total=total) -> None:  # rotations asked: the bar's total grows
                total[0] += k
                if prog.bar:
                    prog.bar.update(t, total=total[0])

            out.append(calibrate_member(member, panel, cache, target_fpr=target_fpr, mmlu=mmlu, vision=vision,
                                        advance=lambda k, t=task: prog.advance(t, k), extend=extend, margin=margin,
                                        all_depths=all_depths))
            if prog.bar:  # repeated prompts are asked once: the bar counts distinct ones, so close it here
                prog.bar.update(task, completed=total[0])
    return out


# --------------------------------------------------------------------------- the panel file


def is_packaged(path: Path) -> bool:
    """Whether ``path`` is a file shipped inside mmcurate's ``data`` package (never rewritten)."""
    from curate.assets import data_dir

    try:
        Path(path).resolve().relative_to(data_dir())
        return True
    except ValueError:
        return False


def write_calibration(panel_path: Path, results: Sequence[Calibration], out: Path | None = None) -> Path:
    """Write each member's ``margin``, ``false_hit_rate`` and ``recall`` into the panel file (tomlkit:
    comments, order and layout of everything else stay). The new text is validated as a panel
    before it replaces anything, and written atomically."""
    import os
    import tempfile
    import tomllib

    import tomlkit

    from filters.panel import panel_from_dict

    target = Path(out) if out is not None else Path(panel_path)
    if is_packaged(target):
        raise UserError(f"{target}: is the panel shipped with mmcurate and is not rewritten; write a calibrated copy "
                        f"with --out my_panel.toml (then pass --panel my_panel.toml to screen and audit)")
    doc = tomlkit.parse(Path(panel_path).read_text(encoding="utf-8"))
    by_name = {r.member: r for r in results}
    for table in doc.get("member", []):
        r = by_name.get(table.get("name"))
        if r is None:
            continue
        if r.margin is not None:
            table["margin"] = round(r.margin, 6)
        elif "margin" in table:
            del table["margin"]
        table["false_hit_rate"] = round(r.false_hit_rate, 4)
        table["recall"] = round(r.recall, 4)
    text = tomlkit.dumps(doc)
    panel_from_dict(tomllib.loads(text), source=str(target), base=target.parent)  # never write a panel that does not load
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return target
