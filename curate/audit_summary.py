"""The audit summary (``summary.json``): pure functions from a screened table to plain JSON-able data.

Everything the report and the console show is computed here from the table alone (plus the
panel's info when a run just screened it), so a workspace that was screened long ago is
summarised exactly as a fresh run is, and the figures can be tested without any model. The
statistics themselves (Wilson intervals, chance levels, the share beyond chance) are in
:mod:`curate.stats`; the throughput figures in :mod:`curate.throughput`.

Why questions, not copies: MMBench's circular copies, translations on one image and the same
question in two sources (``curate.groups``) would count one question several times and make
its verdict look several times as certain. Every share, the members' figures, the hit
histogram and the top items count one row per group (the first in table order);
``n_items`` still counts every row and ``n_questions`` the groups. The rule findings count
items (a flag is about an item's own text).

The one-line texts that quote a summary (:func:`headline`, :func:`prompts_line`, :func:`pct`)
live here too, so the console and the report say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import polars as pl

from curate.stats import BLIND_CHANCE, beyond_chance, flag_share, shares_by
from curate.errors import UserError
from curate.throughput import projection, ran_concurrently

#: Columns the screening adds (per member ``m``: ``answer__m``, ``hit__m``, ``prob__m``, ``raw__m``).
SCREEN_COLUMNS = ("hits", "n_members", "blind")
RULE_CHECKS = ("answer_leak", "near_duplicate", "duplicate_image", "malformed", "no_image")
N_TOP_ITEMS = 25
N_RULE_EXAMPLES = 5
NO_BLIND_CHANCE_NOTE = (
    "beyond chance needs the screen's blind_chance column, which this table lacks (screened by an older "
    "mmcurate): screen it again to get the chance-corrected figures"
)


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
    blind = flag_share(table, "blind", threshold=threshold)
    n_members = int(table["n_members"].max() or len(members)) if table.height else len(members)

    reports = {r["name"]: r for r in ((panel_info or {}).get("screen_report") or {}).get("members", [])}
    member_rows = {}
    for m in members:
        hit = f"hit__{m}"
        answered = table.filter(pl.col(f"answer__{m}").is_not_null()) if f"answer__{m}" in table.columns else table
        row = flag_share(table.filter(pl.col(hit).is_not_null()), hit)
        row["no_answer"] = table.height - answered.height
        verdict = row
        if f"answer__{m}" in table.columns and "answer" in table.columns:
            # Plain accuracy (answer == key; no answer counts as wrong) next to the hits: a hit can need
            # more (every rotation right, the key winning after chance correction), so "answers blind
            # above chance" is judged on accuracy against 1/options, never on hits.
            keyed = table.filter(pl.col("answer").is_not_null()).with_columns(
                (pl.col(f"answer__{m}") == pl.col("answer")).fill_null(False).alias("__right")
            )
            acc = flag_share(keyed, "__right")
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
                row["throughput"] = {**rep["throughput"], "concurrent": ran_concurrently(rep["throughput"], model or {})}
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
        "by_source": shares_by(table, "source", "blind", threshold),
        "by_category": shares_by(table, "category", "blind", threshold),
        "by_dimension": shares_by(table, "l2_category", "blind", threshold),
        "by_source_category": shares_by(table, "source_category", "blind", threshold),
        "by_n_options": shares_by(table.with_columns(pl.col("options").list.len().cast(pl.String).alias("_n_options")), "_n_options", "blind", threshold)
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
    rep = (panel_info or {}).get("screen_report") or {}
    rotations = rep.get("rotations", (panel_info or {}).get("rotations"))
    depth = rep.get("adaptive_depth", (panel_info or {}).get("adaptive_depth"))
    return {
        "rotations": rotations,
        **({"adaptive_depth": depth} if depth is not None else {}),
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
    if p.get("adaptive_depth") is not None:
        how += f" (adaptive_depth = {p['adaptive_depth']})"
    full = f"; every rotation of every question would take {p['full_rotation']:,}" if p.get("full_rotation") else ""
    return (
        f"{how}: {p['n_prompts']:,} prompts for {p['single_pass']:,} question-member pairs, "
        f"{p['extra']:,} extra ({p['ratio']:.2f}x a single pass{full})"
    )
