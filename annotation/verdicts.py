"""Reviewer annotations -> per-item verdicts, agreement and the keep/drop decision.

MMStar's rule: an item survives human review only when every expert agrees it needs the image
and its key is right; the dimension is what the experts say it tests. Here: kept when at least
``min_reviewers`` reviewers submitted a verdict and all of them say "needs the image: yes" and
"key correct: yes"; the dimension is the majority vote (ties go to the suggested dimension,
then to taxonomy order). Fewer reviewers than required -> quarantined ("awaiting_review"), not
dropped: the item is undecided, not bad.

Agreement is reported per question (needs image, key correct, dimension) as Fleiss' kappa over
all reviewers (the variable-raters form: items with >= 2 reviewers) and Cohen's kappa for every
reviewer pair (scikit-learn), so a team sees whether its reviewers read the guidelines alike.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import polars as pl

from annotation.client import ReviewClient, reviewer_name
from annotation.config import COMMENT, CORRECTED_KEY, DIMENSION, KEY_CORRECT, NEEDS_IMAGE, YES
from annotation.tasks import SUGGESTED_COLUMN, review_mask, review_stage
from curate.errors import UserError
from curate.taxonomy import Taxonomy, default_taxonomy
from curate.workspace import Workspace

DEFAULT_MIN_REVIEWERS = 3
AGREEMENT_FILE = "review_agreement.json"
QUESTIONS = ("needs_image", "key_correct", "dimension")

REVIEW_COLUMNS: dict[str, pl.DataType] = {
    "review_n": pl.Int32(),  # reviewers with a submitted verdict
    "review_reviewers": pl.List(pl.String()),
    "review_needs_image": pl.Boolean(),  # True only when every reviewer said yes
    "review_key_ok": pl.Boolean(),  # True only when every reviewer said the key is right
    "review_corrected_key": pl.String(),  # majority corrected letter among "key wrong" verdicts
    "review_dimension": pl.String(),  # majority dimension
    "review_capability": pl.String(),
    "review_dimension_share": pl.Float64(),  # share of reviewers who chose review_dimension
    "review_kept": pl.Boolean(),
    "review_status": pl.String(),  # kept / dropped / quarantined (ledger status)
    "review_reason": pl.String(),
    "review_verdicts": pl.String(),  # JSON list of each reviewer's verdict
}


@dataclass(frozen=True)
class Verdict:
    """One reviewer's answer for one item (their latest submitted annotation)."""

    item_id: str
    reviewer: str
    needs_image: bool | None
    dimension: str | None
    key_correct: bool | None
    corrected_key: str | None
    comment: str | None
    annotation_id: int | None = None


@dataclass
class PullResult:
    table: pl.DataFrame
    ledger: pl.DataFrame
    agreement: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)


def _choice(value: dict[str, Any]) -> str | None:
    choices = value.get("choices") or []
    return str(choices[0]) if choices else None


def _yes_no(value: str | None) -> bool | None:
    return None if value is None else value == YES


def parse_annotation(item_id: str, reviewer: str, annotation: dict[str, Any]) -> Verdict:
    """Read our controls out of one Label Studio annotation's ``result`` list."""
    by_name: dict[str, dict[str, Any]] = {}
    for r in annotation.get("result") or []:
        by_name[r.get("from_name")] = r.get("value") or {}
    comment = by_name.get(COMMENT, {}).get("text")
    if isinstance(comment, list):
        comment = "\n".join(str(t) for t in comment)
    return Verdict(
        item_id=item_id,
        reviewer=reviewer,
        needs_image=_yes_no(_choice(by_name.get(NEEDS_IMAGE, {}))),
        dimension=_choice(by_name.get(DIMENSION, {})),
        key_correct=_yes_no(_choice(by_name.get(KEY_CORRECT, {}))),
        corrected_key=_choice(by_name.get(CORRECTED_KEY, {})),
        comment=comment or None,
        annotation_id=annotation.get("id"),
    )


def collect_verdicts(tasks: list[dict[str, Any]], emails: dict[int, str]) -> dict[str, list[Verdict]]:
    """``{item_id: [verdict per reviewer]}``: cancelled (skipped) annotations ignored; a reviewer's
    latest annotation wins when they submitted several (also across duplicate tasks of an item)."""
    latest: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for task in tasks:
        item_id = (task.get("data") or {}).get("item_id")
        if item_id is None:
            continue
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            who = reviewer_name(ann.get("completed_by"), emails)
            stamp = str(ann.get("updated_at") or ann.get("created_at") or "") + f"#{ann.get('id', 0):012d}"
            key = (item_id, who)
            if key not in latest or stamp > latest[key][0]:
                latest[key] = (stamp, ann)
    out: dict[str, list[Verdict]] = defaultdict(list)
    for (item_id, who), (_, ann) in sorted(latest.items()):
        out[item_id].append(parse_annotation(item_id, who, ann))
    return dict(out)


# -- agreement ---------------------------------------------------------------------------
def fleiss_kappa(ratings: list[list[Any]]) -> float | None:
    """Fleiss' kappa for items rated by a varying number of raters (items with < 2 ratings skipped).

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)); p_j = sum_i n_ij / sum_i n_i;
    kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2). None when undefined (no item with two
    ratings, or every rating in one category so chance agreement is 1).
    """
    rows = [Counter(r) for r in ratings if len(r) >= 2]
    if not rows:
        return None
    total = sum(sum(c.values()) for c in rows)
    p_bar = sum((sum(v * v for v in c.values()) - sum(c.values())) / (sum(c.values()) * (sum(c.values()) - 1)) for c in rows) / len(rows)
    cats: Counter[Any] = Counter()
    for c in rows:
        cats.update(c)
    p_e = sum((v / total) ** 2 for v in cats.values())
    if math.isclose(p_e, 1.0):
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def cohen_pairs(by_reviewer: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cohen's kappa for every reviewer pair over the items both rated (None when undefined)."""
    from sklearn.metrics import cohen_kappa_score

    out = {}
    for a, b in combinations(sorted(by_reviewer), 2):
        common = sorted(set(by_reviewer[a]) & set(by_reviewer[b]))
        kappa = None
        if len(common) >= 2:
            x = [str(by_reviewer[a][i]) for i in common]
            y = [str(by_reviewer[b][i]) for i in common]
            if len(set(x) | set(y)) > 1:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    k = float(cohen_kappa_score(x, y))
                kappa = None if math.isnan(k) else round(k, 4)
        out[f"{a} | {b}"] = {"kappa": kappa, "n_items": len(common)}
    return out


def agreement(verdicts: dict[str, list[Verdict]]) -> dict[str, Any]:
    """Per question: Fleiss' kappa over all reviewers, raw agreement, Cohen's kappa per pair."""
    report: dict[str, Any] = {}
    for q in QUESTIONS:
        ratings, by_reviewer = [], defaultdict(dict)
        for item_id, vs in verdicts.items():
            values = [(v.reviewer, getattr(v, q)) for v in vs if getattr(v, q) is not None]
            ratings.append([val for _, val in values])
            for who, val in values:
                by_reviewer[who][item_id] = val
        multi = [r for r in ratings if len(r) >= 2]
        fk = fleiss_kappa(ratings)
        report[q] = {
            "fleiss_kappa": None if fk is None else round(fk, 4),
            "n_items": len(multi),
            "all_agree_share": round(sum(len(set(r)) == 1 for r in multi) / len(multi), 4) if multi else None,
            "cohen_kappa_pairs": cohen_pairs(dict(by_reviewer)),
        }
    return report


# -- decision ----------------------------------------------------------------------------
def _majority_dimension(vs: list[Verdict], suggested: str | None, taxonomy: Taxonomy) -> tuple[str | None, float | None]:
    votes = Counter(v.dimension for v in vs if v.dimension)
    if not votes:
        return None, None
    top = max(votes.values())
    tied = [d for d, n in votes.items() if n == top]
    order = {d.name: i for i, d in enumerate(taxonomy.dimensions)}
    pick = suggested if suggested in tied else min(tied, key=lambda d: (order.get(d, len(order)), d))
    return pick, round(top / len(vs), 4)


def decide_item(vs: list[Verdict], min_reviewers: int, suggested: str | None, taxonomy: Taxonomy) -> dict[str, Any]:
    """Review columns for one item from its verdicts (see module docstring for the rule)."""
    n = len(vs)
    dim, share = _majority_dimension(vs, suggested, taxonomy)
    wrong = [v for v in vs if v.key_correct is False]
    fixes = Counter(v.corrected_key for v in wrong if v.corrected_key)
    row = {
        "review_n": n,
        "review_reviewers": [v.reviewer for v in vs],
        "review_needs_image": bool(n) and all(v.needs_image is True for v in vs),
        "review_key_ok": bool(n) and all(v.key_correct is True for v in vs),
        "review_corrected_key": fixes.most_common(1)[0][0] if fixes else None,
        "review_dimension": dim,
        "review_capability": taxonomy.capability_of(dim) if dim in {d.name for d in taxonomy.dimensions} else None,
        "review_dimension_share": share,
        "review_verdicts": json.dumps([{k: v for k, v in vars(x).items() if k != "item_id"} for x in vs], ensure_ascii=False),
    }
    text_ok = [v for v in vs if v.needs_image is False]
    incomplete = [v for v in vs if v.needs_image is None or v.key_correct is None]
    reasons, details = [], []
    if text_ok:
        reasons.append("text_answerable")
        details += [f"{v.reviewer} says it is answerable without the image" + (f" ({v.comment})" if v.comment else "") for v in text_ok]
    if wrong:
        reasons.append("key_wrong")
        details += [f"{v.reviewer} says key is wrong" + (f", should be {v.corrected_key}" if v.corrected_key else "") + (f" ({v.comment})" if v.comment else "") for v in wrong]
    if n < min_reviewers:
        status, reason = "quarantined", "awaiting_review"
        details.insert(0, f"{n} of {min_reviewers} required reviewers so far" + (f" ({', '.join(row['review_reviewers'])})" if n else ""))
    elif reasons:
        status, reason = "dropped", "reviewer_" + "+".join(reasons)
    elif incomplete:
        status, reason = "quarantined", "incomplete_verdict"
        details.append(", ".join(v.reviewer for v in incomplete) + " left 'needs the image' or 'key correct' unanswered")
    else:
        status, reason = "kept", "reviewers_agree"
        details.append(f"all {n} reviewers: needs the image, key correct; dimension {dim!r}")
    row.update(review_kept=status == "kept", review_status=status, review_reason=reason, _detail="; ".join(details))
    return row


def decide(
    stage: pl.DataFrame,
    tasks: list[dict[str, Any]],
    emails: dict[int, str],
    *,
    min_reviewers: int = DEFAULT_MIN_REVIEWERS,
    taxonomy: Taxonomy | None = None,
) -> PullResult:
    """``stage`` (the pushed stage table) + exported tasks -> reviewed table, ledger rows, agreement.

    Every row of ``stage`` stays (the stage file is self-contained). Items never pushed (screened
    out before review) get ``review_reason`` "not_for_review" and no ledger row; eligible items
    missing from the project are quarantined as "not_in_project".
    """
    if min_reviewers < 1:
        raise UserError(f"--min-reviewers {min_reviewers}: must be at least 1 (MMStar used 3)")
    tax = taxonomy or default_taxonomy()
    verdicts = collect_verdicts(tasks, emails)
    in_project = {(t.get("data") or {}).get("item_id") for t in tasks}
    eligible = review_mask(stage)
    rows, ledger = [], []
    for rec, ok in zip(stage.select([c for c in ("item_id", "source_file", "row", "l2_category", SUGGESTED_COLUMN) if c in stage.columns]).iter_rows(named=True), eligible):
        item_id = rec["item_id"]
        if item_id in in_project:
            suggested = rec.get("l2_category") or rec.get(SUGGESTED_COLUMN)
            row = decide_item(verdicts.get(item_id, []), min_reviewers, suggested, tax)
        else:
            row = decide_item([], min_reviewers, None, tax)
            if ok:
                row.update(review_status="quarantined", review_reason="not_in_project", _detail="eligible for review but not in the Label Studio project; run `mmcurate review push`")
            else:
                row.update(review_status=None, review_reason="not_for_review", _detail=None)
        detail = row.pop("_detail")
        if row["review_status"] is not None:
            ledger.append(
                {"source_file": rec.get("source_file"), "row": rec.get("row"), "item_id": item_id, "status": row["review_status"], "reason": row["review_reason"], "field": None, "detail": detail}
            )
        rows.append(row)
    review = pl.DataFrame(rows, schema=REVIEW_COLUMNS) if rows else pl.DataFrame(schema=REVIEW_COLUMNS)
    table = pl.concat([stage.drop([c for c in REVIEW_COLUMNS if c in stage.columns]), review], how="horizontal")
    ledger_df = pl.DataFrame(ledger, schema={"source_file": pl.String, "row": pl.Int64, "item_id": pl.String, "status": pl.String, "reason": pl.String, "field": pl.String, "detail": pl.String})
    counts = dict(Counter(r["review_status"] or "not_for_review" for r in rows))
    return PullResult(table, ledger_df, agreement(verdicts), counts)


def pull(workdir: str | Path, client: ReviewClient, project: str, *, min_reviewers: int = DEFAULT_MIN_REVIEWERS) -> PullResult:
    """Export the project's annotations, decide every item, write ``reviewed.parquet``, the ledger
    rows of the ``review`` stage and ``review_agreement.json``."""
    ws = Workspace(workdir)
    stage = ws.read(review_stage(ws))
    pid = client.project_id(project)
    result = decide(stage, client.export(pid), client.user_emails(), min_reviewers=min_reviewers)
    ws.write("reviewed", result.table)
    ws.record("review", result.ledger)
    result.agreement["min_reviewers"] = min_reviewers
    (ws.root / AGREEMENT_FILE).write_text(json.dumps(result.agreement, indent=2, ensure_ascii=False), encoding="utf-8")
    return result
