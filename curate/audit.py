"""Audit a benchmark for vision dependence: how much of it a text-only panel answers blind.

``audit`` = ingest -> screen (the text-only panel) -> rule filters -> :func:`summarize` ->
HTML report + ``summary.json``. :func:`summarize` is a pure function of a screened table, so
a workspace that was already screened (``screened.parquet``) is audited without asking any
model again.

Why confidence intervals and chance levels everywhere: a "12 % blind-answerable" figure
means little on 40 items, and nothing without the share the same panel would reach by luck.
Every share comes with its 95 % Wilson interval and, when the screen recorded each item's
chance (``blind_chance``), the share beyond chance with its own 95 % interval (below).
``chance_blind`` (uniform guessers under the panel's rule) stays in the JSON for old readers;
the report no longer quotes it: a chance-corrected, rotating panel is no uniform guesser.

Why questions, not copies: MMBench's circular copies, translations on one image and the same
question in two sources (``curate.groups``) would count one question several times and make
its verdict look several times as certain. Every share, the members' figures, the hit
histogram and the top items count one row per group (the first in table order);
``n_items`` still counts every row and ``n_questions`` the groups. The rule findings count
items (a flag is about an item's own text).

Blind-answerable *beyond chance* (``beyond_chance``, the report's headline). A panel calls
some items blind by luck: a member whose hit rule accepts the key when it happens to be the
option it likes. The screen records, per item, ``blind_chance`` = e_i, the probability the
panel would call the item blind if the key were a uniformly random option (the members' own
outputs and hit rules, one random key shared by all members). The classical correction for
guessing (knowledge-or-random-guessing) says an item is blind for a reason with probability
R, and otherwise blind by chance with probability e_i, so P(blind_i) = p_i(R) = e_i + R (1 - e_i).
With B the observed blind share and E the mean e_i over n items, R = (B - E) / (1 - E),
equivalently sum(x_i - e_i) / sum(1 - e_i). When items differ (some known, some not), R is the
(1 - e_i)-weighted mean of the items' own R_i: an item that chance alone calls blind half the
time carries half the information about knowledge of one that chance never calls blind.

Its 95 % interval is a score (Wilson-type) interval from the item-level variance: the R for
which the observed blind count is within z = 1.96 standard deviations of its expectation,

    (sum(x_i - e_i) - R sum(a_i))^2 <= z^2 V(R),   a_i = 1 - e_i,
    V(R) = sum p_i(R)(1 - p_i(R)) + R^2 sum (a_i - mean a)^2,

a quadratic inequality in R solved in closed form (:func:`beyond_chance_stats`). The first term
of V is each item's own Bernoulli variance under R; the second is the spread of the chance
levels across items, which matters when the items are a sample (``--sample``) of a pool with
mixed option counts and vanishes when every item has the same chance. Why a score interval and
not estimate +- z * SE: the share is often 0 or 1 in a group of 10 items, where the plug-in SE is
0 and the Wald interval collapses to a point; with e_i = 0 this interval is exactly Wilson's
(the one every other share carries) and with one chance level for all items it is Wilson's
interval mapped through (b - e) / (1 - e). The point estimate and both bounds are clipped to
[0, 1] (a panel below chance knows nothing, it does not know a negative share); ``estimate``
keeps the unclipped value. Deterministic: no resampling.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import UserError

#: Columns the screening adds (per member ``m``: ``answer__m``, ``hit__m``, ``prob__m``, ``raw__m``).
SCREEN_COLUMNS = ("hits", "n_members", "blind")
RULE_CHECKS = ("answer_leak", "near_duplicate", "duplicate_image", "malformed", "no_image")
N_TOP_ITEMS = 25
N_RULE_EXAMPLES = 5
MMSTAR_POOL = (22_401, 8)  # MMStar screened 22,401 candidates with 8 LLMs: the scale a projection is quoted at


# ----------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------
def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for ``k`` successes of ``n`` (None when ``n`` is 0).

    Wilson, not the normal approximation, because blind shares are often near 0 where the
    normal interval goes negative.
    """
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (round(float(ci.low), 4), round(float(ci.high), 4))


@functools.lru_cache(maxsize=1024)
def blind_by_chance(n_options: int, n_members: int, threshold: int) -> float:
    """P(more than ``threshold`` of ``n_members`` guessers hit) for one ``n_options`` item.

    The blind share a panel of uniform guessers would produce (``chance_blind``). Cached: it is
    asked once per item and group, and a few (options, members) pairs cover a whole benchmark.
    """
    from scipy.stats import binom

    if n_options < 1 or n_members < 1:
        return float("nan")
    return float(binom.sf(threshold, n_members, 1.0 / n_options))


Z95 = 1.959963984540054  # the two-sided 95 % normal quantile
#: The screen's per-item chance of a blind verdict (see the module docstring).
BLIND_CHANCE = "blind_chance"
NO_BLIND_CHANCE_NOTE = (
    "beyond chance needs the screen's blind_chance column, which this table lacks (screened by an older "
    "mmcurate): screen it again to get the chance-corrected figures"
)


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def beyond_chance_stats(observed: Sequence[float], chance: Sequence[float], z: float = Z95) -> dict[str, Any] | None:
    """Blind-answerable beyond chance, R = sum(x - e) / sum(1 - e), with its 95 % score interval.

    ``observed``: 0/1 verdicts x_i; ``chance``: each item's e_i (probability of that verdict
    if the key were random). The formula and why this interval are in the module docstring.
    Returns ``share``, ``lo``, ``hi`` (clipped to [0, 1]), ``estimate`` (unclipped),
    ``observed`` (B), ``chance`` (E) and ``n``; None when there is nothing to correct for
    (no items, or every item blind by chance alone).
    """
    n = len(observed)
    if n == 0 or n != len(chance):
        return None
    a = [1.0 - float(e) for e in chance]
    big_a = math.fsum(a)
    if big_a <= 1e-12:
        return None
    d = math.fsum(float(x) - float(e) for x, e in zip(observed, chance))
    sum_ae = math.fsum(ai * float(e) for ai, e in zip(a, chance))
    sum_aa = math.fsum(ai * ai for ai in a)
    # (d - R A)^2 - z^2 V(R) <= 0 with V(R) = sum_ae + R (sum_aa - sum_ae) - R^2 A^2 / n: alpha R^2 - beta R + gamma <= 0
    alpha = big_a * big_a * (1.0 + z * z / n)
    beta = 2.0 * big_a * d + z * z * (sum_aa - sum_ae)
    gamma = d * d - z * z * sum_ae
    estimate = d / big_a
    disc = beta * beta - 4.0 * alpha * gamma
    if disc < 0:  # observed far below chance: no R in [0, 1] fits; the nearest is 0
        lo = hi = _clip01(estimate)
    else:
        root = math.sqrt(disc)
        lo, hi = _clip01((beta - root) / (2 * alpha)), _clip01((beta + root) / (2 * alpha))
    return {
        "share": round(_clip01(estimate), 4),
        "lo": round(lo, 4),
        "hi": round(hi, 4),
        "estimate": round(estimate, 4),
        "observed": round(math.fsum(float(x) for x in observed) / n, 4),
        "chance": round(math.fsum(float(e) for e in chance) / n, 4),
        "n": n,
    }


def beyond_chance(table: pl.DataFrame, flag: str = "blind", chance: str = BLIND_CHANCE) -> dict[str, Any] | None:
    """:func:`beyond_chance_stats` of a table's ``flag`` verdicts against its ``chance`` column.

    Items without a verdict or a chance level (unaskable items, members that gave none) are left
    out; ``n`` says how many counted. None when the column is missing or no item has both.
    """
    if flag not in table.columns or chance not in table.columns:
        return None
    both = table.select(pl.col(flag).cast(pl.Float64).alias("x"), pl.col(chance).cast(pl.Float64).alias("e")).drop_nulls()
    both = both.filter(pl.col("e").is_not_nan())
    return beyond_chance_stats(both["x"].to_list(), both["e"].to_list())


def member_names(table: pl.DataFrame) -> list[str]:
    """Panel members of a screened table, in column order (from ``answer__<m>`` columns)."""
    return [c.split("__", 1)[1] for c in table.columns if c.startswith("answer__")]


def infer_threshold(table: pl.DataFrame) -> int:
    """The ``max_hits`` a screened table was judged with: the most hits any kept item has.

    Used when no panel object is at hand (a table read from disk); with no kept item the
    smallest blind item's hits minus one.
    """
    kept = table.filter(~pl.col("blind").fill_null(False))
    if kept.height and kept["hits"].max() is not None:
        return int(kept["hits"].max())
    blind = table.filter(pl.col("blind").fill_null(False))
    return max(0, int(blind["hits"].min()) - 1) if blind.height else 0


def _share(table: pl.DataFrame, flag: str, *, threshold: int | None = None) -> dict[str, Any]:
    n = table.height
    k = int(table[flag].fill_null(False).sum()) if n else 0
    out: dict[str, Any] = {"n": n, "k": k, "share": round(k / n, 4) if n else None, "ci95": wilson(k, n)}
    if n and "options" in table.columns:
        n_opts = table["options"].list.len()
        out["chance_hit"] = round(float((1.0 / n_opts.cast(pl.Float64)).mean()), 4)
        if threshold is not None and "n_members" in table.columns:
            probs = [blind_by_chance(o, m or 0, threshold) for o, m in zip(n_opts.to_list(), table["n_members"].to_list())]
            probs = [p for p in probs if not math.isnan(p)]
            out["chance_blind"] = round(sum(probs) / len(probs), 4) if probs else None
    if flag == "blind":
        out["beyond_chance"] = beyond_chance(table)  # null for a table screened without blind_chance
    return out


def _group_shares(table: pl.DataFrame, column: str, flag: str, threshold: int | None) -> dict[str, dict]:
    if column not in table.columns or table[column].null_count() == table.height:
        return {}
    out = {}
    for (value,), group in sorted(table.group_by(column), key=lambda g: (g[0][0] is None, str(g[0][0]))):
        out["(none)" if value is None else str(value)] = _share(group, flag, threshold=threshold)
    return out


# ----------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------
def check_screened(table: pl.DataFrame, what: str = "table") -> None:
    """A screened table has the panel's verdict columns; say which are missing and why it matters."""
    missing = [c for c in SCREEN_COLUMNS if c not in table.columns]
    if missing or not member_names(table):
        raise UserError(
            f"{what} lacks the screening columns {missing or ['answer__<member>']}; "
            "run the screening first (`mmcurate screen WORKDIR`) or audit the source files directly"
        )


def summarize(
    table: pl.DataFrame,
    *,
    threshold: int | None = None,
    panel_info: dict[str, Any] | None = None,
    label: str | None = None,
    n_top: int = N_TOP_ITEMS,
) -> dict[str, Any]:
    """The audit summary of one screened table (plain JSON-able data; shares are fractions 0-1).

    Keys: ``n_items`` (rows), ``n_questions`` (groups of copies: what every share below counts,
    see the module docstring), ``blind_share`` (overall fraction of questions the panel answered blind),
    ``blind`` (the same with n, k, 95 % CI and chance levels), ``by_source``,
    ``by_category`` (MMStar capability), ``by_dimension`` (MMStar dimension),
    ``by_source_category``, ``by_n_options``, ``members`` (each member's hits, its plain
    ``accuracy`` without the image vs chance, its controls and ``throughput``), ``projection``
    (MMStar's scale at this run's rate; concurrent members accounted for), ``hit_histogram``,
    ``rules`` (rule-filter findings), ``top_items`` (by ``blind_score``, then hits),
    ``beyond_chance`` (``{"share", "lo", "hi", "estimate", "observed", "chance", "n"}``, also in
    ``blind`` and in every group entry; null for a table without ``blind_chance``), ``prompts``
    (prompts incl. rotations vs one per question and member; null when not recorded) and
    ``notes`` (what a reader must know about these figures, e.g. why beyond chance is missing).
    Members also get ``beyond_chance`` (their own hits against ``chance__<m>``), ``calibration``
    (margin, false_hit_rate, recall) and ``asks``.
    """
    check_screened(table)
    from curate.groups import one_per_group

    items, table = table, one_per_group(table)  # shares count questions; ``items`` keeps every copy
    members = member_names(table)
    if threshold is None:
        threshold = infer_threshold(table)
    blind = _share(table, "blind", threshold=threshold)
    n_members = int(table["n_members"].max() or len(members)) if table.height else len(members)

    reports = {r["name"]: r for r in ((panel_info or {}).get("screen_report") or {}).get("members", [])}
    member_rows = {}
    for m in members:
        hit = f"hit__{m}"
        answered = table.filter(pl.col(f"answer__{m}").is_not_null()) if f"answer__{m}" in table.columns else table
        row = _share(table.filter(pl.col(hit).is_not_null()), hit)
        row["no_answer"] = table.height - answered.height
        verdict = row
        if f"answer__{m}" in table.columns and "answer" in table.columns:
            # Plain accuracy (answer == key; no answer counts as wrong) next to the hits: a hit can need
            # more (every rotation right, the key winning after chance correction), so "answers blind
            # above chance" is judged on accuracy against 1/options, never on hits.
            keyed = table.filter(pl.col("answer").is_not_null()).with_columns(
                (pl.col(f"answer__{m}") == pl.col("answer")).fill_null(False).alias("__right")
            )
            acc = _share(keyed, "__right")
            row["accuracy"] = {k: acc.get(k) for k in ("n", "k", "share", "ci95", "chance_hit")}
            verdict = acc
        if verdict.get("chance_hit") is not None and verdict["ci95"]:
            row["above_chance"] = verdict["ci95"][0] > verdict["chance_hit"]
        if f"chance__{m}" in table.columns:
            row["beyond_chance"] = beyond_chance(table, hit, f"chance__{m}")  # this member's hits beyond its own chance
        rep = reports.get(m)
        model = ((panel_info or {}).get("models") or {}).get(m)
        if rep or model:
            row["calibration"] = _calibration(rep or {}, model or {}, (panel_info or {}).get("margin"))
        if rep:
            row["counted"] = rep.get("counted")
            row["chance_hit_panel"] = rep.get("expected_chance_hit_rate")
            row["chance_hit_biased"] = rep.get("expected_biased_hit_rate")
            if rep.get("asks") is not None:
                row["asks"] = rep["asks"]
            if rep.get("throughput"):
                row["throughput"] = {**rep["throughput"], "concurrent": _concurrent(rep["throughput"], model or {})}
            comp = rep.get("competence")
            if comp:
                row["competence"] = {k: comp.get(k) for k in ("n", "correct", "accuracy", "ci_low", "ci_high", "chance", "at_chance")}
        member_rows[m] = row

    hist_counts = dict(table.group_by("hits").len().iter_rows())
    histogram = [{"hits": h, "items": int(hist_counts.get(h, 0))} for h in range(0, n_members + 1)]
    if any(h is None for h in hist_counts):
        histogram.append({"hits": None, "items": int(hist_counts[None])})

    summary: dict[str, Any] = {
        "label": label,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_items": items.height,
        "n_questions": table.height,
        "sources": sorted(set(items["source"].drop_nulls().to_list())) if "source" in items.columns else [],
        "panel": {**(panel_info or {}), "members": members, "n_members": n_members, "max_hits": threshold},
        "blind_rule": f"blind when more than {threshold} of {n_members} members answer right without the image",
        "blind_share": blind["share"],
        "blind": blind,
        "by_source": _group_shares(table, "source", "blind", threshold),
        "by_category": _group_shares(table, "category", "blind", threshold),
        "by_dimension": _group_shares(table, "l2_category", "blind", threshold),
        "by_source_category": _group_shares(table, "source_category", "blind", threshold),
        "by_n_options": _group_shares(table.with_columns(pl.col("options").list.len().cast(pl.String).alias("_n_options")), "_n_options", "blind", threshold)
        if "options" in table.columns
        else {},
        "members": member_rows,
        "projection": projection(member_rows),  # None when every answer came from the cache
        "prompts": prompt_counts(table, members, panel_info),
        "hit_histogram": histogram,
        "rules": rule_findings(items),
        "top_items": top_items(table, members, n=n_top),
        "notes": _notes(table, blind),
    }
    summary["beyond_chance"] = blind.get("beyond_chance")
    return summary


def _notes(table: pl.DataFrame, blind: dict[str, Any]) -> list[str]:
    """What a reader must know about the beyond-chance figures of this table (empty when nothing)."""
    if BLIND_CHANCE not in table.columns:
        return [NO_BLIND_CHANCE_NOTE]
    counted = (blind.get("beyond_chance") or {}).get("n", 0)
    judged = int(table["blind"].is_not_null().sum())
    if counted < judged:
        return [(f"{judged - counted:,} of {judged:,} questions have no blind_chance (no member gave an answer it "
                 "could be computed from) and are left out of the beyond-chance figures")]
    return []


#: Backends whose members run at the same time as the others (a remote server each); in-process ones take turns.
CONCURRENT_BACKENDS = ("openai",)


def _concurrent(throughput: dict[str, Any], model: dict[str, Any]) -> bool:
    """Did this member run alongside the others? The screen's own flag when it records one, else its backend."""
    if throughput.get("concurrent") is not None:
        return bool(throughput["concurrent"])
    return model.get("backend") in CONCURRENT_BACKENDS


def _calibration(rep: dict[str, Any], model: dict[str, Any], panel_margin: float | None) -> dict[str, Any]:
    """A member's margin and its measured error rates (``mmcurate panel calibrate``); ``calibrated`` when rates exist."""
    fhr = rep.get("false_hit_rate", model.get("false_hit_rate"))
    recall = rep.get("recall", model.get("recall"))
    own = rep.get("margin", model.get("margin"))
    return {
        "margin": own if own is not None else panel_margin,
        "margin_source": "member" if own is not None else ("panel" if panel_margin is not None else None),
        "false_hit_rate": fhr,
        "recall": recall,
        "calibrated": fhr is not None or recall is not None,
    }


def prompt_counts(table: pl.DataFrame, members: Sequence[str], panel_info: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Prompts the panel sent, rotations included, against one per question and member.

    Why: rotation (CircularEval, or ``"adaptive"``: only hits are asked again) buys fewer chance
    hits with extra model calls, and a reader should see the price. From the table's
    ``asks__<m>`` (one row per question) when present, else from the screen report's
    ``n_prompts``; None when neither is recorded. ``full_rotation`` is what asking every
    rotation of every question would have cost.
    """
    per: dict[str, dict[str, int]] = {}
    full = 0
    n_opts = table["options"].list.len() if "options" in table.columns else None
    for m in members:
        col = f"asks__{m}"
        if col not in table.columns:
            continue
        asked = table[col].is_not_null()
        per[m] = {"questions": int(asked.sum()), "prompts": int(table[col].sum() or 0)}
        if n_opts is not None:
            full += int(n_opts.filter(asked).sum() or 0)
    if per:
        n_prompts = sum(v["prompts"] for v in per.values())
        single = sum(v["questions"] for v in per.values())
    else:
        rep = (panel_info or {}).get("screen_report") or {}
        if not rep.get("n_prompts"):
            return None
        n_prompts, single, full = int(rep["n_prompts"]), int(rep.get("n_questions") or 0) * len(rep.get("members") or members), 0
    rotations = ((panel_info or {}).get("screen_report") or {}).get("rotations", (panel_info or {}).get("rotations"))
    return {
        "rotations": rotations,
        "n_prompts": n_prompts,
        "single_pass": single,
        "extra": n_prompts - single,
        "ratio": round(n_prompts / single, 4) if single else None,
        "full_rotation": full or None,
        "members": per,
    }


def rule_findings(table: pl.DataFrame, n_examples: int = N_RULE_EXAMPLES) -> dict[str, Any]:
    """Counts and examples of each rule check present in the table (empty when rules did not run)."""
    out: dict[str, Any] = {}
    for check in RULE_CHECKS:
        flag = f"{check}_flag"
        if flag not in table.columns:
            continue
        flagged = table.filter(pl.col(flag).fill_null(False))
        cols = [c for c in ("item_id", "source", "question", "options", "answer", f"{check}_reason", f"{check}_score", f"{check}_group") if c in table.columns]
        examples = []
        for r in flagged.select(cols).head(n_examples).iter_rows(named=True):
            examples.append({
                "item_id": r.get("item_id"),
                "question": r.get("question"),
                "options": r.get("options"),
                "answer": r.get("answer"),
                "reason": r.get(f"{check}_reason"),
                "score": r.get(f"{check}_score"),
                "group": r.get(f"{check}_group"),
            })
        entry = {"flagged": flagged.height, "share": round(flagged.height / table.height, 4) if table.height else None, "examples": examples}
        if f"{check}_drop" in table.columns:
            entry["dropping"] = int(table[f"{check}_drop"].fill_null(False).sum())
        out[check] = entry
    if "rule_drop" in table.columns:
        out["rule_drop"] = {"dropped": int(table["rule_drop"].fill_null(False).sum()), "n": table.height}
    return out


def top_items(table: pl.DataFrame, members: Sequence[str], n: int = N_TOP_ITEMS) -> list[dict[str, Any]]:
    """The most blind-answerable items: highest ``blind_score`` first, then most hits, then mean confidence.

    ``blind_score`` (the screen's mean calibrated probability of the key over counted members)
    ranks first because it is continuous: hits are 0..n_members, so hundreds of items tie on
    them, and it says how sure the panel was rather than whether it crossed a margin. Items
    without it (generate-only panels, tables screened before it existed) follow, by hits and
    then ``prob__<m>`` averaged (higher: the member was surer).
    """
    prob_cols = [f"prob__{m}" for m in members if f"prob__{m}" in table.columns and table.schema[f"prob__{m}"].is_numeric()]
    score = pl.col("blind_score").cast(pl.Float64) if "blind_score" in table.columns else pl.lit(None, pl.Float64)
    t = table.with_columns(
        score.alias("_blind_score"),
        (pl.mean_horizontal(prob_cols) if prob_cols else pl.lit(None, pl.Float64)).alias("_mean_prob"),
    ).sort(["_blind_score", "hits", "_mean_prob", "item_id"], descending=[True, True, True, False], nulls_last=True)
    out = []
    for r in t.head(n).iter_rows(named=True):
        out.append({
            "item_id": r.get("item_id"),
            "source": r.get("source"),
            "category": r.get("l2_category") or r.get("category") or r.get("source_category"),
            "question": r.get("question"),
            "hint": r.get("hint"),
            "options": r.get("options"),
            "answer": r.get("answer"),
            "hits": r.get("hits"),
            "blind": r.get("blind"),
            "blind_score": _round(r.get("_blind_score")),
            "blind_chance": _round(r.get(BLIND_CHANCE)),
            "reason": r.get("screen_reason"),
            "members": {
                m: {
                    "answer": r.get(f"answer__{m}"),
                    "hit": r.get(f"hit__{m}"),
                    "prob": _round(r.get(f"prob__{m}")),
                    "chance": _round(r.get(f"chance__{m}")),
                    "raw": (str(r.get(f"raw__{m}"))[:200] if r.get(f"raw__{m}") is not None else None),
                }
                for m in members
            },
        })
    return out


def _round(x: Any) -> float | None:
    """A number rounded for the JSON (None for a missing or non-numeric value, e.g. a list column)."""
    return None if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) else round(float(x), 4)


def member_accuracy(row: dict[str, Any]) -> dict[str, Any]:
    """A member row's plain accuracy without the image (summaries written before it was recorded: its hits)."""
    return row.get("accuracy") or row


def compare_summaries(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side figures of two audits (e.g. a pool before and after curation)."""
    def fig(s: dict) -> dict:
        return {
            "label": s.get("label"),
            "n_items": s["n_items"],
            "n_questions": s.get("n_questions", s["n_items"]),
            "blind_share": s["blind_share"],
            "ci95": s["blind"]["ci95"],
            "chance_blind": s["blind"].get("chance_blind"),
            "beyond_chance": s.get("beyond_chance"),
            "members": {m: member_accuracy(v)["share"] for m, v in s["members"].items()},
            "rules": {c: v.get("flagged") for c, v in s["rules"].items() if c in RULE_CHECKS},
        }

    a, b = fig(left), fig(right)
    delta = None
    if a["blind_share"] is not None and b["blind_share"] is not None:
        delta = round(b["blind_share"] - a["blind_share"], 4)
    bc = [(x.get("beyond_chance") or {}).get("share") for x in (a, b)]
    delta_bc = round(bc[1] - bc[0], 4) if None not in bc else None
    dims = sorted(set(left.get("by_dimension", {})) | set(right.get("by_dimension", {})))
    cats = sorted(set(left.get("by_category", {})) | set(right.get("by_category", {})))
    return {
        "left": a,
        "right": b,
        "delta_blind_share": delta,
        "delta_beyond_chance": delta_bc,
        "by_category": {c: [left.get("by_category", {}).get(c, {}).get("share"), right.get("by_category", {}).get(c, {}).get("share")] for c in cats},
        "by_dimension": {d: [left.get("by_dimension", {}).get(d, {}).get("share"), right.get("by_dimension", {}).get(d, {}).get("share")] for d in dims},
        "right_summary": right,
    }


# ----------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------
def load_items(sources: Iterable[str | Path], *, workdir: Path) -> pl.DataFrame:
    """Items to audit: a workspace folder (its newest stage), a stage parquet, or benchmark files to ingest.

    Benchmark files are ingested into ``workdir`` so the report folder keeps the exact items
    (and the ledger of what ingest dropped) that the figures are about.
    """
    from curate.workspace import Workspace, read_parquet_checked

    sources = [Path(s) for s in sources]
    if not sources:
        raise UserError("no SOURCE given; pass benchmark files or a workspace folder")
    if len(sources) == 1 and sources[0].is_dir() and any((sources[0] / f).is_file() for f in ("items.parquet", "screened.parquet")):
        ws = Workspace(sources[0])
        return ws.read(ws.newest())
    if len(sources) == 1 and sources[0].suffix == ".parquet" and sources[0].name in ("items.parquet", "screened.parquet", "reviewed.parquet", "balanced.parquet"):
        return read_parquet_checked(sources[0])
    from curate.ingest import ingest

    return ingest(sources, out=workdir)


def screen_items(
    items: pl.DataFrame,
    panel: Any,
    *,
    cache_path: Path,
    limit: int | None = None,
    members: list[str] | None = None,
    progress: bool = True,
    rules: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """Ask the text-only panel about every item (``filters.screen``); returns the table and the screen report.

    The screen report carries each member's competence on text-answerable controls, which the
    audit shows beside its verdicts. A table that is already screened is returned as is.
    ``rules``: let the screen run the rule filters too (``audit --no-rules`` runs none).
    """
    if all(c in items.columns for c in SCREEN_COLUMNS) and member_names(items):
        return items, None
    try:
        from filters.screen import screen_with_report
    except ImportError as exc:
        raise UserError(f"the screening stage (filters/screen.py) is not available in this install ({exc}); audit a screened workspace instead") from exc
    table, report = screen_with_report(items, panel, cache_path=cache_path, limit=limit, members=members, progress=progress, rules=rules)
    return table, report.as_dict(timing=True)


def apply_rules(table: pl.DataFrame, panel_path: str | Path | None = None) -> pl.DataFrame:
    """Run the rule filters (answer leak, duplicates, malformed) unless their columns are present."""
    if "rule_drop" in table.columns or any(f"{c}_flag" in table.columns for c in RULE_CHECKS):
        return table
    from filters.rules import RuleConfig, run_rules

    config = RuleConfig.from_toml(panel_path) if panel_path is not None else RuleConfig()
    return run_rules(table, config)


def resolve_panel(panel: Any) -> Any:
    """A Panel object, a path to panel.toml, or None for the default panel."""
    from filters.panel import Panel, load_panel

    if isinstance(panel, Panel):
        return panel
    return load_panel(panel)


def _panel_info(panel: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for attr in ("name", "source", "config_hash"):
        if hasattr(panel, attr):
            info["hash" if attr == "config_hash" else attr] = getattr(panel, attr)
    for attr in ("margin", "rotations"):
        if hasattr(panel, attr):
            info[attr] = getattr(panel, attr)
    if hasattr(panel, "members"):
        info["models"] = {m.name: _model_info(m) for m in panel.members}
    return info


def _model_info(member: Any) -> dict[str, Any]:
    """What the report shows of a member: its model and how it is asked, its margin and calibrated error rates."""
    info = {"backend": member.backend, "model": member.model, "method": member.method, "shots": member.shots}
    for attr in ("margin", "false_hit_rate", "recall"):
        if getattr(member, attr, None) is not None:
            info[attr] = getattr(member, attr)
    return info


def audit_table(
    sources: Sequence[str | Path],
    *,
    panel: Any,
    workdir: Path,
    limit: int | None = None,
    members: list[str] | None = None,
    rules: bool = True,
    progress: bool = True,
    sample: int | None = None,
    seed: int = 0,
    cache_path: str | Path | None = None,
) -> tuple[pl.DataFrame, dict[str, Any], int | None]:
    """Ingest + screen + rules for one benchmark; returns the table, panel info and threshold.

    ``cache_path``: the response cache (default: the per-user one, ``filters.cache.user_cache_path``,
    shared with ``screen`` in every workspace, so a stopped audit resumes and a question seen
    before is not asked again).
    """
    items = load_items(sources, workdir=workdir)
    sampled = None
    if sample is not None:
        items, sampled = sample_items(items, sample, seed=seed)
    if limit is not None:
        items = items.head(limit)
    already = all(c in items.columns for c in SCREEN_COLUMNS) and bool(member_names(items))
    threshold = None
    info: dict[str, Any] = {}
    if already:
        table = items
    else:
        panel_obj = resolve_panel(panel)
        info = _panel_info(panel_obj)
        workdir.mkdir(parents=True, exist_ok=True)
        if cache_path is None:
            from filters.cache import user_cache_path

            cache_path = user_cache_path()
        table, report = screen_items(items, panel_obj, cache_path=Path(cache_path), members=members, progress=progress, rules=rules)
        if report is not None:
            info["screen_report"] = report
            threshold = report.get("threshold")
    if rules:
        panel_path = panel if isinstance(panel, (str, Path)) else None
        table = apply_rules(table, panel_path)
    if not already and (workdir / "items.parquet").is_file():
        from curate.workspace import Workspace

        Workspace(workdir).write("screened", table)  # the exact table the report describes
    if sampled is not None:
        info["sample"] = sampled
    return table, info, threshold


def throughput_line(name: str, t: dict[str, Any]) -> str:
    """One member's model work in a run (``MemberReport`` timing): what ``screen`` and ``audit`` print."""
    rate = f"{t['samples_per_s']:.2f} samples/s" if t.get("samples_per_s") else "no fresh model calls"
    along = ", alongside the other members" if t.get("concurrent") else ""
    return f"{name}: {t['asked']:,} questions asked in {t['model_seconds']:,.0f} s ({rate}), {t['cached']:,} from the cache{along}"


def projection(members: dict[str, dict[str, Any]], *, items: int = MMSTAR_POOL[0], n_members: int = MMSTAR_POOL[1]) -> dict[str, Any] | None:
    """Hours that ``items`` x ``n_members`` would take at the rate this run measured (None without fresh calls).

    Why: a run on a laptop is a sample of the throughput a full screen needs. ``samples_per_s``
    is one member's rate (the panel's fresh answers over its members' model seconds), so
    ``hours_in_turn`` (``n_members`` members one after another on one machine) and
    ``hours_parallel`` (each on its own endpoint, all at once) carry over to an OpenAI-compatible
    endpoint by replacing that rate with the endpoint's own (``bench/audit.py --endpoint``).

    ``hours_this_panel``: ``items`` with this run's own members at their own rates, run as the
    screen runs them -- in-process members take turns (one lane: their times add up), members
    flagged ``concurrent`` (remote endpoints) each run in their own lane at the same time, so
    the time is the slowest lane's, not the sum. ``panel_samples_per_s`` is the run's answers
    over that wall time. ``members`` maps a member to its throughput dict
    (``summary["members"][m]["throughput"]``), or the member rows holding it.
    """
    timings = {name: m.get("throughput", m) for name, m in members.items()}
    asked = sum(t.get("asked") or 0 for t in timings.values())
    seconds = sum(t.get("model_seconds") or 0.0 for t in timings.values())
    if not asked or seconds <= 0:
        return None
    rate = asked / seconds
    hours = items * n_members / rate / 3600
    timed = {n: t for n, t in timings.items() if (t.get("asked") or 0) > 0 and (t.get("model_seconds") or 0) > 0}
    concurrent = sorted(n for n, t in timed.items() if t.get("concurrent"))
    in_turn = [t for n, t in timed.items() if n not in concurrent]
    wall = max([sum(t["model_seconds"] for t in in_turn)] + [timed[n]["model_seconds"] for n in concurrent])
    lanes = [sum(items * t["model_seconds"] / t["asked"] for t in in_turn)] + [items * timed[n]["model_seconds"] / timed[n]["asked"] for n in concurrent]
    return {
        "items": items, "members": n_members, "samples_per_s": rate, "hours_in_turn": hours, "hours_parallel": hours / n_members,
        "panel_members": len(timed), "concurrent_members": concurrent,
        "panel_samples_per_s": asked / wall if wall > 0 else None, "hours_this_panel": max(lanes) / 3600,
    }


def projection_line(p: dict[str, Any]) -> str:
    """The projection as ``audit`` prints it (this panel's own time when it has several members)."""
    line = (
        f"projection at {p['samples_per_s']:.2f} samples/s: {p['items']:,} items x {p['members']} members "
        f"= {p['hours_in_turn']:,.1f} h in turn, {p['hours_parallel']:,.1f} h on {p['members']} parallel endpoints"
    )
    k = p.get("panel_members") or 0
    if k > 1 and p.get("hours_this_panel") is not None:
        conc = len(p.get("concurrent_members") or [])
        how = "taking turns" if conc == 0 else ("all at once" if conc == k else f"{conc} remote alongside {k - conc} in turn")
        line += f"; this panel's {k} members ({how}): {p['hours_this_panel']:,.1f} h"
    return line


def pct(x: float | None, digits: int = 1) -> str:
    """A 0-1 fraction as the report prints it ("24.8 %"; "–" when missing)."""
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def pct_range(lo: float | None, hi: float | None) -> str:
    """An interval as the report prints it ("24.1–25.5 %")."""
    return "–" if lo is None or hi is None else f"{100 * lo:.1f}–{100 * hi:.1f} %"


def headline(summary: dict[str, Any]) -> str:
    """The audit's one-line result (console and report): blind-answerable beyond chance first, the raw share beside it.

    Why this order: the raw share mixes knowledge with lucky guesses (a panel at chance on
    4-option questions calls about a quarter of them blind); only the part beyond what chance
    gives says how much of the benchmark needs no image.
    """
    b = summary["blind"]
    unit = "questions" if summary.get("n_questions", summary["n_items"]) != summary["n_items"] else "items"
    ci = b.get("ci95") or (None, None)
    raw = f"{b['k']:,} of {b['n']:,} {unit} blind-answerable: {pct(b['share'])} (95 % CI {pct_range(*ci)})"
    bc = summary.get("beyond_chance")
    if not bc:
        return f"{raw}; beyond chance: not available (screened without blind_chance: screen again to get it)"
    return (
        f"blind-answerable beyond chance: {pct(bc['share'])} (95 % CI {pct_range(bc['lo'], bc['hi'])}) of {b['n']:,} {unit}; "
        f"the panel called {b['k']:,} blind: {pct(b['share'])} (95 % CI {pct_range(*ci)}), chance alone gives {pct(bc['chance'])}"
    )


def prompts_line(summary: dict[str, Any]) -> str | None:
    """The extra prompts rotation asked, as ``audit`` prints it (None when the table does not record them)."""
    p = summary.get("prompts")
    if not p or not p.get("single_pass"):
        return None
    how = f"rotations = {p['rotations']}" if p.get("rotations") is not None else "rotation"
    full = f"; every rotation of every question would take {p['full_rotation']:,}" if p.get("full_rotation") else ""
    return (
        f"{how}: {p['n_prompts']:,} prompts for {p['single_pass']:,} question-member pairs, "
        f"{p['extra']:,} extra ({p['ratio']:.2f}x a single pass{full})"
    )


def sample_items(items: pl.DataFrame, n: int, *, seed: int = 0) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A seeded random sample of ``n`` items, stratified by source (proportional, largest remainder).

    Why: a whole benchmark can take hours to screen on a small machine, and its first rows are
    no estimate (SEED-Bench is ordered by category). A random sample of a few hundred items
    gives the blind-answerable share with a Wilson interval in minutes. Rows keep their
    original order; the same ``items``, ``n`` and ``seed`` give the same sample.
    """
    if n < 1:
        raise UserError(f"--sample {n}: must be >= 1")
    total = items.height
    if n >= total:
        return items, {"n": total, "of": total, "seed": seed, "by_source": dict(items.group_by("source").len().sort("source").iter_rows())}
    sizes = items.group_by("source").len().sort("source")
    quotas = {src: n * k / total for src, k in sizes.iter_rows()}
    alloc = {src: int(q) for src, q in quotas.items()}
    for src in sorted(quotas, key=lambda s: (-(quotas[s] - alloc[s]), s is not None, s or ""))[: n - sum(alloc.values())]:
        alloc[src] += 1
    indexed = items.with_row_index("__pos")
    parts = []
    for i, (src, k) in enumerate(sizes.iter_rows()):
        if alloc[src]:
            part = indexed.filter(pl.col("source").eq_missing(src))  # a null source is a stratum too
            parts.append(part.sample(n=alloc[src], seed=seed + i, shuffle=False))
    out = pl.concat(parts).sort("__pos").drop("__pos")
    return out, {"n": out.height, "of": total, "seed": seed, "by_source": {s: a for s, a in alloc.items() if a}}


def audit(
    sources: Sequence[str | Path],
    *,
    panel: Any = None,
    report_dir: str | Path,
    compare: Sequence[str | Path] | None = None,
    limit: int | None = None,
    members: list[str] | None = None,
    rules: bool = True,
    progress: bool = True,
    title: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    cache_path: str | Path | None = None,
    results: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Screen ``sources`` with ``panel`` and write ``report_dir/report.html`` + ``summary.json``.

    ``sources``: benchmark files (any format ingest reads), a workspace folder, or a stage
    parquet; an already screened table is not screened again. ``panel``: a Panel, a path to
    panel.toml or None (the default offline panel). ``compare``: a second benchmark audited
    the same way and shown side by side. ``sample``: audit a seeded random sample of that many
    items, stratified by source (see ``sample_items``). ``cache_path``: the response cache
    (default: the per-user one). ``results``: model result files (VLMEvalKit) for the
    ``item_stats`` section (``curate.item_stats.audit_item_stats``). Returns the summary dict (also in summary.json).
    """
    from curate.report import write_report

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    table, info, threshold = audit_table(
        sources, panel=panel, workdir=report_dir / "workspace", limit=limit, members=members, rules=rules, progress=progress, sample=sample, seed=seed,
        cache_path=cache_path,
    )
    label = _label(sources)
    sampled = info.pop("sample", None)
    summary = summarize(table, threshold=threshold, panel_info=info, label=label)
    if sampled:
        summary["sample"] = sampled
    if compare:
        other, info2, threshold2 = audit_table(
            compare, panel=panel, workdir=report_dir / "workspace_compare", limit=limit, members=members, rules=rules, progress=progress,
            sample=sample, seed=seed, cache_path=cache_path,
        )
        sampled2 = info2.pop("sample", None)
        summary["compare"] = compare_summaries(summary, summarize(other, threshold=threshold2, panel_info=info2, label=_label(compare)))
        if sampled2:
            summary["compare"]["right"]["sample"] = sampled2
    if results:
        from curate.item_stats import audit_item_stats

        summary["item_stats"] = audit_item_stats(table, results)
    write_report(summary, report_dir, title=title)
    return summary


def _label(sources: Sequence[str | Path]) -> str:
    names = [Path(s).name for s in sources]
    return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")


def write_summary_json(summary: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path
