"""The screening stage: which items can be answered without their image?

``screen(items, panel, cache_path=...)`` asks every panel member every question with the image
withheld (MMStar's recipe), counts the members that answered right (``hits``) and marks an item
``blind`` when more than the panel's threshold did. The rule filters (``filters.rules``) run on
the same table, so one ``screened.parquet`` says, per item, which filter would drop it and why.

Local in-process members run one after the other (one model in memory at a time); remote members
(``openai``: the server does the work) run concurrently beside them, each with its own backend and
cache connection; columns are assembled in panel order, so the output never depends on which
member finished first. Every response goes through the SQLite cache, so a killed run resumes
without redoing finished work.

Rotation (``panel.rotations``). An int ``r`` asks every item with its options rotated by 0 .. r-1
positions (``min(r, n_options)`` asks) and counts a hit only when every ask hits (CircularEval).
``"adaptive"`` (the default) asks every item once; only the items whose ask hit are asked again,
rotated by one more position, stopping at the first miss, and a hit needs all ``n_options`` asks
to hit (with ``panel.adaptive_depth = k``, the first ``k``). A member that knows the answer follows
its text round the circle at about one extra ask per hit; a guesser or a member that loves one letter is caught by the first rotation that moves
the key, for the cost of one ask on most items. Each round is one ``score_prompts`` call over the
items still in play, so batches depend only on the items and the answers, and a killed run resumes
from the cache with identical results.

Chance (``chance__<m>``, ``blind_chance``). A rotated prompt does not depend on which option is
the key, so every answer a member gave can be judged for every candidate key: the hit rule
accepts at most one option per ask (the winner, after calibration and margin). With fixed
rotations every rotation was asked for every candidate, so the value is exact: ``chance__<m>`` is
the share of the item's options that would have counted as a hit had they been the key.
Under adaptive rotation the true key's outcome is exact too, and a wrong option ``j*`` is 0 unless
the first ask accepted it; then its rotations were never asked (the key had missed) and it gets
the member's measured survival rate: among this run's items with the same option count whose
first ask hit the true key, the share that survived every rotation (1.0 when there is none: with
no evidence, counted as a single pass would). Under the null of no knowledge a member treats the
key and a wrong option alike, so the rate is the survival of ``j*`` exactly (in expectation);
when the member does know items, key hits survive more often than guesses, so the estimate is
too high and the chance level conservative (the beyond-chance share the audit derives is
underestimated, never inflated). ``blind_chance`` draws one random key shared by all members,
takes the counted members' hit probabilities for it as independent events (Poisson-binomial),
computes P(hits > threshold) and averages over the options. ``blind_score`` is the mean over
counted members of the calibrated probability of the key on the first ask.

Copies of one question (``curate.groups``: MMBench's circular copies, translations on one image,
the same image and question in two sources) are asked once: the first member of each group in
table order is the *representative*, and every copy gets its verdict. Why: asking four rotated
copies of one MMBench question is four times the model time for one verdict, and copies judged
apart can disagree, which lets a blind-answerable question through as its "unanswered" copy.
The copy's ``answer__<m>`` is the representative's chosen option in the copy's own letters:
mapped by option text when the copy's options are a permutation of the representative's
(circular copies), the same letter when both have as many options (a translation keeps the
option order), null otherwise; per-option list values are permuted the same way. ``hit__<m>``,
``prob__<m>`` (the key's probability: the key is the same option) and ``raw__<m>`` are the
representative's.

Columns added (``<m>`` is the member's name):

* ``answer__<m>`` letter the member chose (null: a generated reply named no option),
  ``hit__<m>`` right without the image (chance-corrected and all rotations right when the panel
  says so), ``prob__<m>`` its probability of the key (loglik; the lowest over rotations),
  ``raw__<m>`` the generated reply (null for loglik);
* ``probs__<m>`` / ``calprobs__<m>`` the first ask's option distribution, raw and calibrated by
  the member's prior, in the item's own letters (null for generate), ``chance__<m>`` the hit rate
  of a random key under this member's rule, ``asks__<m>`` prompts asked (1 + rotations);
* ``hits``, ``n_members`` (members whose hits count), ``blind``, ``blind_chance``, ``blind_score``,
  ``screen_reason`` (why the
  item would be dropped: blind and/or the rule filters' reason), ``panel_hash``,
  ``screened_as`` (the item_id whose answers these are: the item itself, or its group's
  representative);
* ``group_id`` / ``group_reason`` (``curate.groups.assign_groups``) when the items had none;
* the rule filters' ``<check>_flag`` / ``<check>_score`` columns and ``rule_reason``.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate.errors import UserError
from curate.groups import ensure_groups, normalise
from curate.schema import LETTERS
from curate.workspace import workspace_command
from filters.backends import open_backend, resolve_backend_name
from filters.cache import ResponseCache
from filters.competence import Competence, accepted, assess, calibrated, control_items
from filters.panel import ADAPTIVE, Panel
from filters.prompts import TEMPLATE_VERSION, build_prompt, rotate
from filters.scoring import score_prompts

REQUIRED = ("item_id", "question", "options", "answer")
TIMING_FIELDS = ("asked", "cached", "model_seconds")


@dataclass
class MemberReport:
    name: str
    backend: str
    identity: str
    method: str
    shots: int
    counted: bool
    competence: dict | None
    hit_rate: float  # over the questions asked (one per group of copies)
    expected_chance_hit_rate: float  # a uniform guesser under this panel's rotation rule
    expected_biased_hit_rate: float | None  # a guesser with this member's measured letter bias
    misses_no_option: int  # generated replies that named no option
    asks: int = 0  # prompts this member was given for the items, rotations included (cached or not)
    margin: float | None = None  # the margin its hits were judged with (its own, else the panel's)
    false_hit_rate: float | None = None  # from the panel file (``mmcurate panel calibrate``); None: not calibrated
    recall: float | None = None  # likewise
    notes: list[str] = field(default_factory=list)  # the backend's own warnings (a replica taken out, chat-path floors)
    asked: int = 0  # distinct item prompts sent to the model in this run (not from the cache)
    cached: int = 0  # distinct item prompts answered from the response cache
    model_seconds: float = 0.0  # time the model spent on the ``asked`` prompts

    @property
    def samples_per_s(self) -> float | None:
        """Fresh model answers per second (None when everything came from the cache)."""
        return self.asked / self.model_seconds if self.asked and self.model_seconds > 0 else None

    def throughput(self) -> dict:
        """The timing fields plus ``samples_per_s`` (for ``curate.throughput.throughput_line`` and summary.json)."""
        return {key: getattr(self, key) for key in TIMING_FIELDS} | {"samples_per_s": self.samples_per_s}


@dataclass
class ScreenReport:
    panel: str
    panel_hash: str
    template: str
    rotations: int | str
    threshold: int
    n_items: int
    n_blind: int
    members: list[MemberReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chance_corrected: bool = False  # hits needed the key to win after dividing out the letter prior (with margin)
    n_questions: int = 0  # distinct questions asked (one per group of copies; n_items counts every copy)
    n_unaskable: int = 0  # items skipped because they could not be asked (``screen_error``; ledger reason ``unaskable``)
    n_prompts: int = 0  # prompts given to the members for the items, rotations included, summed over members
    adaptive_depth: int | None = None  # asks per hit under adaptive rotation (None: every rotation)

    def as_dict(self, *, timing: bool = False) -> dict:
        """The report as plain data. Timing (``asked``/``cached``/``model_seconds``) differs run to run,
        so it is left out unless asked for: ``screen_report.json`` and dataset cards stay byte-stable."""
        from dataclasses import asdict

        out = asdict(self)
        if out["adaptive_depth"] is None:
            out.pop("adaptive_depth")  # a fully rotating panel's report reads as it did before depths existed
        for m, rep in zip(out["members"], self.members):
            for key in TIMING_FIELDS:
                m.pop(key)
            if timing:
                m["throughput"] = rep.throughput()
        return out


def _check_items(items: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in items.columns]
    if missing:
        raise UserError(f"items table lacks column(s) {missing}; screen reads an items.parquet written by `mmcurate ingest`")
    if items["item_id"].is_duplicated().any():
        dup = items.filter(pl.col("item_id").is_duplicated())["item_id"][0]
        raise UserError(f"items table: item_id {dup!r} occurs twice; item ids must be unique")


def _max_asks(n_options: int, rotations: int | str, depth: int | None = None) -> int:
    """Most prompts one item can take: for ``"adaptive"`` every rotation, or the first ``depth`` of
    them; else ``min(rotations, n)``."""
    if n_options == 0:
        return 0
    if rotations == ADAPTIVE:
        return n_options if depth is None else min(depth, n_options)
    return min(int(rotations), n_options)


def _shifts(n_options: int, rotations: int | str, depth: int | None = None) -> list[int]:
    return list(range(_max_asks(n_options, rotations, depth)))


def _ask(backend, prompts: list, opts: list[list[str]], owner: list[int], cache: ResponseCache, advance,
         stats: dict, *, raise_if_all: bool = True) -> tuple[list, dict[int, str]]:
    """Every prompt's response, and ``{item: why}`` for items whose prompts the model could not take.

    Why per item: one over-long or broken question must not stop the screening of every other
    item. The whole list is asked first (batched as usual); when that fails, each item's prompts are
    asked alone (answers already given are in the cache) and the items that still fail are skipped.
    When every item fails the model (or server) is the problem, not an item: the first error is raised
    (``raise_if_all``; a round of rotations for a few items is no evidence against the model)."""
    if not prompts:
        return [], {}
    try:
        return score_prompts(backend, prompts, opts, cache, advance=advance, stats=stats), {}
    except Exception as exc:  # noqa: BLE001 -- any backend error; KeyboardInterrupt still stops the run
        first = exc
    by_item: dict[int, list[int]] = {}
    for k, i in enumerate(owner):
        by_item.setdefault(i, []).append(k)
    responses: list = [None] * len(prompts)
    failed: dict[int, str] = {}
    for i, ks in by_item.items():
        try:
            rs = score_prompts(backend, [prompts[k] for k in ks], [opts[k] for k in ks], cache, stats=stats)
        except Exception as exc:  # noqa: BLE001
            failed[i] = _why(exc)
            continue
        for k, r in zip(ks, rs):
            responses[k] = r
    if raise_if_all and by_item and len(failed) == len(by_item):
        raise first
    return responses, failed


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _undecodable(items: pl.DataFrame) -> dict[str, str]:
    """``{item_id: why}`` for items whose first image does not fully decode (the rule filters hash it)."""
    if "images" not in items.columns:
        return {}
    import io

    from PIL import Image, ImageFile

    bad = {}
    firsts = items.select(pl.col("images").list.first().struct.field("bytes").alias("b"))["b"]
    previous = ImageFile.LOAD_TRUNCATED_IMAGES  # some libraries (lmms-eval) set it for the whole process
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        for data, iid in zip(firsts, items["item_id"]):
            if not data:
                continue
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
            except Exception as exc:  # noqa: BLE001 -- PIL raises many types for bad bytes
                bad[iid] = f"its first image does not decode ({_why(exc)})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return bad


@dataclass
class _Asked:
    """One member's answers to one item: a response per rotation asked (shift 0 first)."""

    responses: list = field(default_factory=list)
    options: list[list[str]] = field(default_factory=list)  # the rotated options of each ask


def _ask_member(backend, items: pl.DataFrame, panel: Panel, member, cache: ResponseCache, progress, comp,
                stats: dict) -> tuple[list[_Asked | None], dict[int, str]]:
    """Ask one member every item under the panel's rotation rule; ``None`` for items not asked.

    Fixed rotations: every rotation of every item in one :func:`score_prompts` call (as before).
    Adaptive: one call per round over the items still in play -- round ``s`` asks, rotated by
    ``s``, the items whose every earlier ask hit -- so batches depend only on the items and the
    answers, never on the cache, and a killed run resumes from the cache with identical results."""
    questions, options, answers = items["question"].to_list(), items["options"].to_list(), items["answer"].to_list()
    hints = items["hint"].to_list() if "hint" in items.columns else [None] * items.height
    opts_of = [[str(x) for x in (o or [])] for o in options]
    margin = member.margin if member.margin is not None else panel.margin
    asked: list[_Asked | None] = [_Asked() for _ in range(items.height)]
    failed: dict[int, str] = {}

    def prompts_for(rows: list[int], shifts_of) -> tuple[list, list, list]:
        prompts, opts, owner = [], [], []
        for i in rows:
            try:
                built = []
                for s in shifts_of(i):
                    ro, _ = rotate(opts_of[i], answers[i] or "", s)
                    built.append((build_prompt(questions[i] or "", ro, hints[i], shots=member.shots), ro))
            except Exception as exc:  # noqa: BLE001 -- one item that cannot be put as a prompt is skipped, not the run
                failed[i] = _why(exc)
                continue
            for prompt, ro in built:
                prompts.append(prompt)
                opts.append(ro)
                owner.append(i)
        return prompts, opts, owner

    def take(what: str, prompts, opts, owner, first: bool) -> None:
        task = progress.add(f"{member.name}: {what}", len({p.text for p in prompts}))
        responses, not_taken = _ask(backend, prompts, opts, owner, cache, lambda k: progress.advance(task, k), stats,
                                    raise_if_all=first)
        failed.update(not_taken)
        for i, r, ro in zip(owner, responses, opts):
            if r is not None and i not in failed:
                asked[i].responses.append(r)
                asked[i].options.append(ro)

    rows = list(range(items.height))
    if panel.rotations != ADAPTIVE:
        take("items", *prompts_for(rows, lambda i: _shifts(len(opts_of[i]), panel.rotations)), first=True)
    else:
        take("items", *prompts_for([i for i in rows if opts_of[i]], lambda i: [0]), first=True)
        for s in range(1, max((_max_asks(len(o), ADAPTIVE, panel.adaptive_depth) for o in opts_of), default=0)):
            play = [i for i in rows if i not in failed and _max_asks(len(opts_of[i]), ADAPTIVE, panel.adaptive_depth) > s
                    and len(asked[i].responses) == s
                    and _key_hits(asked[i], s - 1, answers[i], comp, margin, panel.chance_corrected)]
            if not play:
                break
            take(f"rotation {s}", *prompts_for(play, lambda i, s=s: [s]), first=False)
    for i in failed:
        asked[i] = None
    return asked, failed


def _accepts(a: _Asked, s: int, comp, margin: float, corrected: bool) -> int | None:
    """The item's own option position that ask ``s`` (options rotated by ``s``) would accept as key."""
    n = len(a.options[s])
    j = accepted(a.responses[s], n, comp, margin=margin, corrected=corrected)
    return None if j is None else (j + s) % n


def _key_hits(a: _Asked, s: int, key: str | None, comp, margin: float, corrected: bool) -> bool:
    n = len(a.options[s])
    return key in LETTERS[:n] and _accepts(a, s, comp, margin, corrected) == LETTERS.index(key)


def _candidate_hits(asked: list[_Asked | None], answers: list, rotations, comp, margin: float,
                    corrected: bool, depth: int | None = None) -> list[list[float] | None]:
    """Per item, for each option j taken as the key, the probability that the hit rule counts a hit.

    Fixed rotations: every rotation was asked whatever the key, so each candidate is exact (0 or 1).
    Adaptive: the true key's value is exact; a wrong option ``j*`` accepted by the first ask was never
    rotated (the key missed), so it gets the member's measured survival rate (see the module notes)."""
    accepts = [None if a is None else [_accepts(a, s, comp, margin, corrected) for s in range(len(a.responses))]
               for a in asked]
    keys = [LETTERS.index(k) if isinstance(k, str) and a is not None and k in LETTERS[: len(a.options[0]) if a.options else 0]
            else None for k, a in zip(answers, asked)]
    survival: dict[int, float] = {}
    if rotations == ADAPTIVE:
        first, kept = Counter(), Counter()
        for acc, k, a in zip(accepts, keys, asked):
            if acc and k is not None and acc[0] == k:
                n = len(a.options[0])
                first[n] += 1
                kept[n] += len(acc) == _max_asks(n, rotations, depth) and all(x == k for x in acc)
        survival = {n: kept[n] / first[n] for n in first}
    out: list[list[float] | None] = []
    for acc, k, a in zip(accepts, keys, asked):
        if a is None or not a.options:
            out.append(None)
            continue
        n = len(a.options[0])
        need = _max_asks(n, rotations, depth)
        if rotations != ADAPTIVE:
            out.append([1.0 if len(acc) == need and all(x == j for x in acc) else 0.0 for j in range(n)])
            continue
        row = [0.0] * n
        if acc[0] is not None:
            j = acc[0]
            if j == k:
                row[j] = 1.0 if len(acc) == need and all(x == k for x in acc) else 0.0
            else:  # never rotated: unknown, so the member's survival rate (1.0 without evidence: conservative)
                row[j] = survival.get(n, 1.0) if n > 1 else 1.0
        out.append(row)
    return out


def _member_columns(items: pl.DataFrame, panel: Panel, member, cache: ResponseCache, progress
                    ) -> tuple[dict, MemberReport, dict[int, str], list[list[float] | None]]:
    """Ask one member every item (under the rotation rule); return its columns, its report line, the
    items (row positions) it could not be asked with why, and per item the candidate-key hit
    probabilities (:func:`_candidate_hits`) the panel's ``blind_chance`` is computed from."""
    backend = open_backend(member, cache)
    stats: dict[str, float] = {"asked": 0, "cached": 0, "seconds": 0.0}
    notes: list[str] = []
    try:
        comp: Competence | None = None
        if panel.control_size:
            task = progress.add(f"{member.name}: controls", min(panel.control_size, len(control_items())))
            comp = assess(backend, cache, panel.control_size, advance=lambda k: progress.advance(task, k))
        asked, failed = _ask_member(backend, items, panel, member, cache, progress, comp, stats)
        identity = backend.identity
        notes = list(backend.warnings()) if hasattr(backend, "warnings") else []
    finally:
        heavy = resolve_backend_name(member) not in ("scripted", "openai")  # in-process weights to free
        backend.close()
        del backend
        if heavy:
            gc.collect()

    options, answers = items["options"].to_list(), items["answer"].to_list()
    margin = member.margin if member.margin is not None else panel.margin
    n = items.height
    answer: list[str | None] = [None] * n
    raw: list[str | None] = [None] * n
    prob: list[float | None] = [None] * n
    probs: list[list[float] | None] = [None] * n
    calprobs: list[list[float] | None] = [None] * n
    asks: list[int | None] = [None] * n
    hit = [False] * n
    for i, a in enumerate(asked):
        if a is None:  # the item could not be asked (``failed``)
            continue
        asks[i] = len(a.responses)
        if not a.responses:  # no options: nothing to ask
            continue
        first = a.responses[0]
        answer[i], raw[i] = first.letter, first.raw
        if first.probs is not None:
            probs[i] = list(first.probs)
            calprobs[i] = list(calibrated(first.probs, comp))
        need = _max_asks(len(a.options[0]), panel.rotations, panel.adaptive_depth)
        hit[i] = len(a.responses) == need and all(
            _key_hits(a, s, answers[i], comp, margin, panel.chance_corrected) for s in range(need))
        for s, (r, ro) in enumerate(zip(a.responses, a.options)):
            rkey = rotate([str(x) for x in options[i]], answers[i] or "", s)[1]
            if r.probs is not None and rkey in LETTERS[: len(ro)]:
                p = r.probs[LETTERS.index(rkey)]
                prob[i] = p if prob[i] is None else min(prob[i], p)
    candidates = _candidate_hits(asked, answers, panel.rotations, comp, margin, panel.chance_corrected, panel.adaptive_depth)
    chance = [None if c is None else sum(c) / len(c) for c in candidates]

    expected = sum((1 / len(o)) ** _max_asks(len(o), panel.rotations, panel.adaptive_depth) if o else 0
                   for o in options) / max(n, 1)
    biased = None
    if comp is not None and comp.letter_bias:
        tot = 0.0
        for o, a in zip(options, answers):
            o = o or []
            pr = 1.0
            for s in _shifts(len(o), panel.rotations, panel.adaptive_depth):
                _, ra = rotate([str(x) for x in o], a or "", s)
                pr *= comp.letter_bias.get(ra, 0.0)
            tot += pr if o else 0.0
        biased = tot / max(n, 1)
    counted = not (panel.at_chance == "exclude" and comp is not None and comp.at_chance)
    every = [r for a in asked if a is not None for r in a.responses]
    report = MemberReport(
        name=member.name, backend=resolve_backend_name(member), identity=identity, method=member.method, shots=member.shots,
        counted=counted, competence=comp.as_dict() if comp else None, hit_rate=sum(hit) / max(n, 1),
        expected_chance_hit_rate=expected, expected_biased_hit_rate=biased,
        misses_no_option=sum(1 for r in every if r.raw is not None and r.letter is None),
        asks=sum(x or 0 for x in asks), margin=margin, false_hit_rate=member.false_hit_rate, recall=member.recall,
        notes=notes, asked=int(stats["asked"]), cached=int(stats["cached"]), model_seconds=round(float(stats["seconds"]), 3),
    )
    name = member.name
    cols = {
        f"answer__{name}": pl.Series(answer, dtype=pl.String),
        f"hit__{name}": pl.Series(hit, dtype=pl.Boolean),
        f"prob__{name}": pl.Series(prob, dtype=pl.Float64),
        f"raw__{name}": pl.Series(raw, dtype=pl.String),
        f"probs__{name}": pl.Series(probs, dtype=pl.List(pl.Float64)),
        f"calprobs__{name}": pl.Series(calprobs, dtype=pl.List(pl.Float64)),
        f"chance__{name}": pl.Series(chance, dtype=pl.Float64),
        f"asks__{name}": pl.Series(asks, dtype=pl.Int32),
    }
    return cols, report, failed, candidates


def _run_members(reps: pl.DataFrame, panel: Panel, cache_path: str | Path, prog) -> list[tuple]:
    """Every member's :func:`_member_columns`, in panel order.

    Remote members (``openai``: a server does the work) run concurrently, each in its own thread
    with its own backend and its own connection to the response cache, while the local in-process
    members run one after the other in this thread (one model in memory at a time, and they would
    only fight over the same cores). Results are put back in panel order, so the output never
    depends on which member finished first."""
    remote = [k for k, m in enumerate(panel.members) if resolve_backend_name(m) == "openai"]
    results: list[tuple | None] = [None] * len(panel.members)

    def run(k: int) -> tuple:
        with ResponseCache(cache_path) as cache:
            return _member_columns(reps, panel, panel.members[k], cache, prog)

    if not remote:
        for k in range(len(panel.members)):
            results[k] = run(k)
        return results
    pool = ThreadPoolExecutor(max_workers=len(remote), thread_name_prefix="member")
    try:
        futures = {k: pool.submit(run, k) for k in remote}
        for k in range(len(panel.members)):
            if k not in futures:
                results[k] = run(k)
        for k, fut in futures.items():
            results[k] = fut.result()
    except BaseException:  # a member failed or the user stopped the run: do not wait for the others here
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _above(ps: list[float], threshold: int) -> float:
    """P(more than ``threshold`` of independent events with probabilities ``ps`` happen) (Poisson-binomial)."""
    dist = [1.0]
    for p in ps:
        nxt = [0.0] * (len(dist) + 1)
        for c, q in enumerate(dist):
            nxt[c] += q * (1.0 - p)
            nxt[c + 1] += q * p
        dist = nxt
    return sum(dist[threshold + 1:])


def _blind_chance(candidates: list[list[list[float] | None]], n: int, threshold: int) -> list[float | None]:
    """Per item, P(blind) if the key were a uniformly random option shared by every counted member.

    For each candidate key j, the counted members' hit probabilities for j (0/1 where their answers
    decide it, the survival estimate where adaptive rotation never asked) are combined as independent
    events; the tail above the threshold is averaged over the item's options. Null when a counted
    member has no answer for the item; 0.0 when no member counts (nothing is ever dropped)."""
    out: list[float | None] = []
    for i in range(n):
        rows = [c[i] for c in candidates]
        if any(r is None for r in rows):
            out.append(None)
            continue
        width = {len(r) for r in rows}
        if not candidates or width == {0}:
            out.append(0.0 if not candidates else None)
            continue
        k = width.pop()
        out.append(sum(_above([r[j] for r in rows], threshold) for j in range(k)) / k)
    return out


def _blind_score(answers: list, calprobs: list[list[list[float] | None]]) -> list[float | None]:
    """Per item, the mean over counted members of the calibrated probability of the key on the first
    ask: a continuous blind score for ranking and tie-breaks (null when no member has probabilities)."""
    out: list[float | None] = []
    for i, key in enumerate(answers):
        vals = [c[i][LETTERS.index(key)] for c in calprobs
                if c[i] is not None and isinstance(key, str) and key in LETTERS[: len(c[i])]]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def _representatives(items: pl.DataFrame) -> list[int]:
    """Row of each item's representative: the first row of its group (``group_id``) in table order.

    The first present member, not necessarily the ``group_id`` item: a ``--limit`` may cut a
    group whose ids were assigned on a longer table."""
    key = pl.coalesce(pl.col("group_id"), pl.col("item_id"))
    return items.with_row_index("__row").select(pl.col("__row").min().over(key))["__row"].cast(pl.Int64).to_list()


def _letter_maps(items: pl.DataFrame, rep_rows: list[int]) -> list[tuple[list[int | None], int] | None]:
    """Per row, how the representative's option positions land in the row's own options.

    None for a representative itself. Otherwise ``(m, n)``: ``m[k]`` is the row's position of the
    representative's option k (by normalised text when the options are a permutation, else by
    position when the counts agree, else None) and ``n`` the row's option count."""
    opts = items.select(pl.col("options").list.eval(normalise(pl.element())))["options"].to_list()
    maps: list[tuple[list[int | None], int] | None] = []
    for i, r in enumerate(rep_rows):
        if i == r:
            maps.append(None)
            continue
        rep_opts, own = opts[r] or [], opts[i] or []
        if sorted(rep_opts) == sorted(own) and len(set(own)) == len(own):
            maps.append(([own.index(x) for x in rep_opts], len(own)))
        elif len(rep_opts) == len(own):
            maps.append((list(range(len(own))), len(own)))
        else:
            maps.append(([None] * len(rep_opts), len(own)))
    return maps


def _spread(cols: dict[str, pl.Series], pos: list[int], maps: list) -> dict[str, pl.Series]:
    """A member's columns for the representatives -> for every item (copies take their representative's)."""
    out = {}
    for name, series in cols.items():
        taken = series.gather(pos)
        if name.startswith("answer__"):
            vals = taken.to_list()
            for i, mn in enumerate(maps):
                if mn is not None and vals[i] is not None:
                    k = LETTERS.index(vals[i])
                    j = mn[0][k] if k < len(mn[0]) else None
                    vals[i] = LETTERS[j] if j is not None else None
            taken = pl.Series(name, vals, dtype=series.dtype)
        elif isinstance(series.dtype, pl.List):  # per-option values follow the options
            vals = taken.to_list()
            for i, mn in enumerate(maps):
                if mn is not None and vals[i] is not None:
                    moved = [None] * mn[1]
                    for k, j in enumerate(mn[0]):
                        if j is not None and k < len(vals[i]):
                            moved[j] = vals[i][k]
                    vals[i] = moved
            taken = pl.Series(name, vals, dtype=series.dtype)
        out[name] = taken
    return out


class _Progress:
    """rich progress bars with ETA, or nothing (tests, ``progress=False``)."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), transient=False,
            )

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def add(self, what: str, total: int):
        return self.bar.add_task(what, total=total) if self.bar else None

    def advance(self, task, k: int) -> None:
        if self.bar:
            self.bar.advance(task, k)


def _rules(items: pl.DataFrame, config) -> pl.DataFrame:
    """The rule filters' columns (``<check>_flag`` / ``_score`` / ``_reason``, ``rule_drop``, ``rule_reason``)."""
    from filters.rules import run_rules

    out = run_rules(items, config)
    new = [c for c in out.columns if c not in items.columns or c == "item_id"]
    return out.select(new)


def screen_with_report(
    items: pl.DataFrame,
    panel: Panel,
    *,
    cache_path: str | Path,
    limit: int | None = None,
    members: list[str] | None = None,
    progress: bool = True,
    rules: bool = True,
) -> tuple[pl.DataFrame, ScreenReport]:
    """:func:`screen`, plus the per-member report (competence, hit rates vs chance)."""
    _check_items(items)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: must be >= 1")
        items = items.head(limit)
    panel = panel.select(members)
    items = ensure_groups(items)  # groups given by an earlier stage are kept
    unaskable: dict[str, str] = {}  # item_id -> why it could not be asked (skipped, recorded)
    rule_cols = None
    if rules:
        try:
            rule_cols = _rules(items, panel.rules)
        except UserError:
            bad = _undecodable(items)  # an image the rule filters cannot hash: skip those items, not the run
            if not bad:
                raise
            unaskable.update(bad)
            rule_cols = _rules(items.filter(~pl.col("item_id").is_in(list(bad))), panel.rules)
            rule_cols = items.select("item_id").join(rule_cols, on="item_id", how="left")
    rep_rows = _representatives(items)
    is_rep = [i == r for i, r in enumerate(rep_rows)]
    reps = items.filter(pl.Series(is_rep, dtype=pl.Boolean))  # the questions asked, in table order
    rank = {r: k for k, r in enumerate(i for i, yes in enumerate(is_rep) if yes)}
    pos = [rank[r] for r in rep_rows]
    maps = _letter_maps(items, rep_rows)
    out = items
    if rule_cols is not None:
        out = out.with_columns(rule_cols.drop("item_id"))  # run_rules keeps item order
    reports = []
    candidates: dict[str, list[list[float] | None]] = {}
    with _Progress(progress) as prog:
        results = _run_members(reps, panel, cache_path, prog)
    rep_ids = reps["item_id"].to_list()
    calprobs: dict[str, list[list[float] | None]] = {}
    for member, (cols, rep, failed, cand) in zip(panel.members, results):  # panel order, whatever finished first
        rep_calprobs = cols[f"calprobs__{member.name}"].to_list()  # the representatives' own letter order
        for k, why in failed.items():
            unaskable.setdefault(rep_ids[k], f"member {member.name!r}: {why}")
        cols = _spread(cols, pos, maps)
        clash = [c for c in cols if c in out.columns]
        if clash:
            raise UserError(f"items table already has column(s) {clash}; screen an items.parquet, not a screened one")
        out = out.with_columns(**cols)
        reports.append(rep)
        candidates[member.name] = cand
        calprobs[member.name] = rep_calprobs
    counted = [r.name for r in reports if r.counted]
    threshold = panel.threshold(len(counted))
    hits = pl.sum_horizontal([pl.col(f"hit__{m}").cast(pl.Int32) for m in counted]) if counted else pl.lit(0)
    out = out.with_columns(hits=hits.cast(pl.Int32), n_members=pl.lit(len(counted), dtype=pl.Int32))
    out = out.with_columns(blind=pl.col("hits") > threshold)
    chance = _blind_chance([candidates[m] for m in counted], reps.height, threshold)
    score = _blind_score(reps["answer"].to_list(), [calprobs[m] for m in counted])
    out = out.with_columns(blind_chance=pl.Series(chance, dtype=pl.Float64).gather(pos),
                           blind_score=pl.Series(score, dtype=pl.Float64).gather(pos))
    # an item is unaskable when it, or the representative whose answers it takes, could not be asked
    rep_of = items["item_id"].gather(rep_rows)
    errors = [unaskable.get(iid) or (f"its group's representative {r} could not be asked: {unaskable[r]}" if r in unaskable else None)
              for iid, r in zip(items["item_id"].to_list(), rep_of.to_list())]
    out = out.with_columns(screen_error=pl.Series(errors, dtype=pl.String))
    skipped = pl.col("screen_error").is_not_null()
    out = out.with_columns(**{c: pl.when(skipped).then(None).otherwise(pl.col(c))
                              for c in ("hits", "blind", "blind_chance", "blind_score")})
    who = pl.concat_str([pl.when(pl.col(f"hit__{m}")).then(pl.lit(m)) for m in counted], separator=",", ignore_nulls=True) if counted else pl.lit("")
    blind_reason = pl.format("blind: {} of {} members answered without the image ({}); threshold {}", "hits", "n_members", who, pl.lit(threshold))
    parts = [pl.when(pl.col("screen_error").is_not_null()).then(pl.lit("unaskable: ") + pl.col("screen_error")),
             pl.when(pl.col("blind")).then(blind_reason)]
    if "rule_reason" in out.columns:
        parts.append(pl.col("rule_reason"))
    out = out.with_columns(
        screen_reason=pl.concat_str(parts, separator="; ", ignore_nulls=True),
        panel_hash=pl.lit(panel.config_hash),
        screened_as=items["item_id"].gather(rep_rows),
    ).with_columns(screen_reason=pl.when(pl.col("screen_reason") != "").then(pl.col("screen_reason")))
    warnings = []
    for r in reports:
        c = r.competence
        if c and c["at_chance"]:
            what = "its hits are not counted (at_chance = \"exclude\")" if not r.counted else "its hits still count (at_chance = \"count\")"
            warnings.append(
                f"member {r.name!r} is at chance on {c['n']} control questions (accuracy {c['accuracy']:.2f}, "
                f"95% CI [{c['ci_low']:.2f}, {c['ci_high']:.2f}], chance {c['chance']:.2f}); {what}"
            )
    warnings += [f"member {r.name!r}: {note}" for r in reports for note in r.notes]
    n_unaskable = sum(e is not None for e in errors)
    if n_unaskable:
        shown = ", ".join([i for i, e in zip(items["item_id"].to_list(), errors) if e is not None][:5])
        warnings.append(f"{n_unaskable} item(s) could not be asked and were skipped (column screen_error, ledger reason "
                        f"unaskable; not in screened.parquet): {shown}")
    if reports and not counted:
        warnings.append("no member's hits count: every member is at chance, so no item is dropped as blind-answerable")
    report = ScreenReport(
        panel=panel.name, panel_hash=panel.config_hash, template=TEMPLATE_VERSION, rotations=panel.rotations,
        threshold=threshold, n_items=out.height, n_blind=int(out["blind"].sum()), members=reports, warnings=warnings,
        chance_corrected=panel.chance_corrected, n_questions=reps.height, n_unaskable=n_unaskable,
        n_prompts=sum(r.asks for r in reports), adaptive_depth=panel.adaptive_depth if panel.rotations == ADAPTIVE else None,
    )
    return out, report


def screen(
    items: pl.DataFrame,
    panel: Panel,
    *,
    cache_path: str | Path,
    limit: int | None = None,
    members: list[str] | None = None,
    progress: bool = True,
) -> pl.DataFrame:
    """Screen ``items`` with ``panel`` (image withheld) and return the table with the screening columns."""
    return screen_with_report(items, panel, cache_path=cache_path, limit=limit, members=members, progress=progress)[0]


@workspace_command("screen")
def screen_workspace(
    workdir: str | Path,
    panel_path: str | Path | None = None,
    *,
    limit: int | None = None,
    members: list[str] | None = None,
    cache_path: str | Path | None = None,
    progress: bool = True,
) -> tuple[pl.DataFrame, ScreenReport]:
    """Screen a workspace's ``items.parquet``: write ``screened.parquet``, the ledger rows and
    ``screen_report.json`` (the CLI, ``mmcurate run`` and the demo all come through here).

    The three files commit together (``curate.workspace``), under the workspace lock. Items that
    could not be asked (``screen_error``) are left out of ``screened.parquet`` and get a ledger row
    ``dropped`` / ``unaskable``; the returned table still has them."""
    from curate.workspace import Workspace
    from filters.cache import default_cache_path
    from filters.panel import load_panel

    ws = Workspace(workdir)
    df, report = screen_with_report(
        ws.read("items"), load_panel(panel_path), cache_path=cache_path or default_cache_path(),
        limit=limit, members=members, progress=progress,
    )
    ws.write("screened", df.filter(pl.col("screen_error").is_null()) if "screen_error" in df.columns else df)
    ws.record("screen", screen_ledger(df))
    ws.write_text("screen_report.json", json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    return df, report


def screen_ledger(screened: pl.DataFrame) -> pl.DataFrame:
    """One ledger row per item: kept, or dropped with the reason code of the filter that dropped it."""
    rule_drop = pl.col("rule_drop").fill_null(False) if "rule_drop" in screened.columns else pl.lit(False)
    # reason code names the filter(s): "blind_answerable", "rules:answer_leak,malformed", or both joined by "+"
    rule_names = (
        pl.col("rule_reason").str.extract_all(r"(?:^|; )([a-z_]+): ").list.eval(pl.element().str.strip_chars("; :")).list.join(",")
        if "rule_reason" in screened.columns else pl.lit("")
    )
    rule_code = pl.when(rule_drop).then(pl.lit("rules:") + rule_names)
    blind_code = pl.when(pl.col("blind")).then(pl.lit("blind_answerable"))
    code = pl.concat_str([blind_code, rule_code], separator="+", ignore_nulls=True)
    code = pl.when(code != "").then(code)
    if "screen_error" in screened.columns:
        code = pl.when(pl.col("screen_error").is_not_null()).then(pl.lit("unaskable")).otherwise(code)
    cols = [c for c in ("source_file", "row") if c in screened.columns]
    detail = pl.format("{} [panel {}]", pl.coalesce(pl.col("screen_reason"), pl.lit("kept by every filter")), pl.col("panel_hash"))
    if "screened_as" in screened.columns:
        why = pl.col("group_reason").fill_null("copy") if "group_reason" in screened.columns else pl.lit("copy")
        copy = pl.format(" (answers of {}: {})", pl.col("screened_as"), why)
        detail = pl.concat_str([detail, pl.when(pl.col("screened_as") != pl.col("item_id")).then(copy)], ignore_nulls=True)
    return screened.select(
        *cols, "item_id",
        status=pl.when(code.is_null()).then(pl.lit("kept")).otherwise(pl.lit("dropped")),
        reason=code,
        detail=detail,
    )


def write_report(report: ScreenReport, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
