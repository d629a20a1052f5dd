"""Reviewer annotations -> per-item verdicts, agreement and the keep/drop decision.

MMStar's rule: an item survives human review only when every expert agrees it needs the image
and its key is right; the dimension is what the experts say it tests. Here: kept when at least
``min_reviewers`` reviewers submitted a verdict and all of them say "needs the image: yes" and
"key correct: yes"; the dimension is the majority vote (ties go to the suggested dimension,
then to taxonomy order). Fewer reviewers than required -> quarantined ("awaiting_review"), not
dropped: the item is undecided, not bad.

Provenance: Label Studio marks each answer of a submitted annotation with its ``origin``
("prediction" when the reviewer submitted a pre-annotation untouched). Such an answer is an
*accepted suggestion*, not a decision: for "needs the image" and "key correct" it counts as
unanswered; the dimension falls back to accepted suggestions only when no reviewer picked one.
Every verdict records the source of each answer ("reviewer" / "suggestion").

Suspect keys (``suspect_key`` from ``mmcurate item-stats``): the task showed the evidence beside
the key (``annotation.tasks``; the task data field ``suspect_evidence`` records that it was shown),
and the existing "key correct" answer is the reviewer's reply to it -- no parallel question.
``review_key_confirmed`` is True when the evidence was shown and every reviewer who answered
"key correct" themselves kept the key; False when any reviewer marked it wrong; null when the item
is not suspect, nobody answered, or the task predates the evidence (nobody was asked about it).
Balance leaves a suspect item out unless this is True.

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
from annotation.config import (
    COMMENT,
    CORRECTED_KEY,
    DIMENSION,
    KEY_CORRECT,
    NEEDS_IMAGE,
    YES,
)
from annotation.tasks import SUGGESTED_COLUMN, review_mask, review_stage
from curate.errors import UserError
from curate.taxonomy import Taxonomy, default_taxonomy
from curate.workspace import Workspace, workspace_command

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
    "review_verdicts": pl.String(),  # JSON list of each reviewer's verdict (with the source of each answer)
    "review_n_decided": pl.Int32(),  # reviewers who answered both central questions themselves
    "review_suggestions_accepted": pl.Int32(),  # answers that were pre-annotations submitted untouched
    "review_dimension_source": pl.String(),  # "reviewer" / "suggestion" (no reviewer picked one) / null
    "review_key_confirmed": pl.Boolean(),  # suspect key: shown and kept (True) / marked wrong (False) / null
}
REVIEWER, SUGGESTION = "reviewer", "suggestion"


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
    #: ``{question: "reviewer" | "suggestion"}`` for every answer present in the annotation.
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    #: A dimension the reviewer submitted as pre-filled (not counted as their decision).
    suggested_dimension: str | None = None

    def decided(self) -> bool:
        """Both central questions answered by the reviewer (not by an accepted suggestion)."""
        return self.needs_image is not None and self.key_correct is not None


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


def _source(result: dict[str, Any]) -> str:
    """``suggestion`` when Label Studio says the answer is a pre-annotation submitted unchanged."""
    return SUGGESTION if result.get("origin") == "prediction" else REVIEWER


def parse_annotation(item_id: str, reviewer: str, annotation: dict[str, Any]) -> Verdict:
    """Read our controls out of one Label Studio annotation's ``result`` list.

    Accepted suggestions of the central questions are dropped (they read as unanswered); an
    accepted dimension goes to ``suggested_dimension`` instead of ``dimension``.
    """
    by_name: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for r in annotation.get("result") or []:
        by_name[r.get("from_name")] = r.get("value") or {}
        sources[r.get("from_name")] = _source(r)
    comment = by_name.get(COMMENT, {}).get("text")
    if isinstance(comment, list):
        comment = "\n".join(str(t) for t in comment)

    def decided(name: str) -> str | None:
        return _choice(by_name.get(name, {})) if sources.get(name) == REVIEWER else None

    dim = _choice(by_name.get(DIMENSION, {}))
    return Verdict(
        item_id=item_id,
        reviewer=reviewer,
        needs_image=_yes_no(decided(NEEDS_IMAGE)),
        dimension=decided(DIMENSION),
        key_correct=_yes_no(decided(KEY_CORRECT)),
        corrected_key=_choice(by_name.get(CORRECTED_KEY, {})),
        comment=comment or None,
        annotation_id=annotation.get("id"),
        sources={k: v for k, v in sorted(sources.items()) if k in (NEEDS_IMAGE, KEY_CORRECT, DIMENSION, CORRECTED_KEY)},
        suggested_dimension=dim if sources.get(DIMENSION) == SUGGESTION else None,
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
    report["provenance"] = provenance(verdicts)
    return report


def provenance(verdicts: dict[str, list[Verdict]]) -> dict[str, dict[str, int]]:
    """Per question: how many answers reviewers gave themselves, how many were accepted suggestions."""
    names = {"needs_image": NEEDS_IMAGE, "key_correct": KEY_CORRECT, "dimension": DIMENSION}
    out = {q: {REVIEWER: 0, SUGGESTION: 0, "unanswered": 0} for q in names}
    for vs in verdicts.values():
        for v in vs:
            for q, name in names.items():
                out[q][v.sources.get(name, "unanswered")] += 1
    return out


# -- decision ----------------------------------------------------------------------------
def _majority_dimension(vs: list[Verdict], suggested: str | None, taxonomy: Taxonomy) -> tuple[str | None, float | None, str | None]:
    """(dimension, share, source): the reviewers' own picks; accepted suggestions only when none exists."""
    source = REVIEWER
    votes = Counter(v.dimension for v in vs if v.dimension)
    if not votes:
        votes, source = Counter(v.suggested_dimension for v in vs if v.suggested_dimension), SUGGESTION
    if not votes:
        return None, None, None
    top = max(votes.values())
    tied = [d for d, n in votes.items() if n == top]
    order = {d.name: i for i, d in enumerate(taxonomy.dimensions)}
    pick = suggested if suggested in tied else min(tied, key=lambda d: (order.get(d, len(order)), d))
    return pick, round(top / len(vs), 4), source


def key_confirmed(vs: list[Verdict], suspect: bool, shown: bool) -> bool | None:
    """``review_key_confirmed`` for one item (rule in the module docstring).

    Only a reviewer's own "key correct" answer counts (never a pre-filled one). A "key wrong" is
    False even when the evidence was not shown: the key is wrong either way. A "key right" is
    True only when the evidence was shown: a reviewer who never saw the doubt did not clear it.
    """
    if not suspect:
        return None
    answers = [v.key_correct for v in vs if v.key_correct is not None]
    if not answers:
        return None
    if False in answers:
        return False
    return True if shown else None


def _suspect_detail(confirmed: bool | None, shown: bool, n_answers: int) -> str:
    if confirmed is True:
        return f"suspect key: the evidence was shown and all {n_answers} reviewers kept the key"
    if confirmed is False:
        return "suspect key: a reviewer marked the key wrong"
    if not shown:
        return "suspect key, but the task was pushed before item-stats and did not show the evidence: not cleared"
    return "suspect key: no reviewer has answered 'is the key right?' yet"


def _verdict_json(vs: list[Verdict]) -> str:
    return json.dumps([{k: val for k, val in vars(x).items() if k != "item_id"} for x in vs], ensure_ascii=False)


def decide_item(vs: list[Verdict], min_reviewers: int, suggested: str | None, taxonomy: Taxonomy, *,
                suspect: bool = False, shown: bool = False) -> dict[str, Any]:
    """Review columns for one item from its verdicts (see module docstring for the rule).

    ``suspect``: the stage marks the key suspect; ``shown``: its task showed the evidence.
    """
    n = len(vs)
    dim, share, dim_source = _majority_dimension(vs, suggested, taxonomy)
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
        "review_verdicts": _verdict_json(vs),
        "review_n_decided": sum(v.decided() for v in vs),
        "review_suggestions_accepted": sum(src == SUGGESTION for v in vs for src in v.sources.values()),
        "review_dimension_source": dim_source,
        "review_key_confirmed": key_confirmed(vs, suspect, shown),
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
        details.append(", ".join(v.reviewer for v in incomplete) + " left 'needs the image' or 'key correct' unanswered (an accepted pre-filled answer is not a decision)")
    else:
        status, reason = "kept", "reviewers_agree"
        details.append(f"all {n} reviewers: needs the image, key correct; dimension {dim!r}")
    if suspect:
        details.append(_suspect_detail(row["review_key_confirmed"], shown, sum(v.key_correct is not None for v in vs)))
    row.update(review_kept=status == "kept", review_status=status, review_reason=reason, _detail="; ".join(details))
    return row


def shown_evidence(tasks: list[dict[str, Any]]) -> set[str]:
    """item_ids whose task showed the suspect-key evidence (``suspect_evidence`` in the task data)."""
    return {(t.get("data") or {}).get("item_id") for t in tasks if (t.get("data") or {}).get("suspect_evidence")}


def suspect_counts(table: pl.DataFrame) -> dict[str, int]:
    """Suspect-key items of a reviewed table by outcome (for review_agreement.json and the console)."""
    sus = table.filter(pl.col("suspect_key").fill_null(False))
    conf = sus["review_key_confirmed"]
    return {"suspect": sus.height, "confirmed": int(conf.eq(True).sum()),
            "rejected": int(conf.eq(False).sum()), "not_cleared": int(conf.is_null().sum())}


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
    shown = shown_evidence(tasks)
    eligible = review_mask(stage)
    rows, ledger = [], []
    wanted = ("item_id", "source_file", "row", "l2_category", SUGGESTED_COLUMN, "suspect_key")
    for rec, ok in zip(stage.select([c for c in wanted if c in stage.columns]).iter_rows(named=True), eligible):
        item_id = rec["item_id"]
        if item_id in in_project:
            suggested = rec.get("l2_category") or rec.get(SUGGESTED_COLUMN)
            row = decide_item(verdicts.get(item_id, []), min_reviewers, suggested, tax,
                              suspect=rec.get("suspect_key") is True, shown=item_id in shown)
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
    report = agreement(verdicts)
    if "suspect_key" in table.columns:
        report["suspect_key"] = suspect_counts(table)
    return PullResult(table, ledger_df, report, counts)


@workspace_command("review pull")
def pull(workdir: str | Path, client: ReviewClient, project: str, *, min_reviewers: int = DEFAULT_MIN_REVIEWERS, stage: str | None = None) -> PullResult:
    """Export the project's annotations, decide every item, write ``reviewed.parquet``, the ledger
    rows of the ``review`` stage and ``review_agreement.json``. ``stage``: the one pushed."""
    ws = Workspace(workdir)
    stage = ws.read(review_stage(ws, stage))
    pid = client.project_id(project)
    result = decide(stage, client.export(pid), client.user_emails(), min_reviewers=min_reviewers)
    ws.write("reviewed", result.table)
    ws.record("review", result.ledger)
    result.agreement["min_reviewers"] = min_reviewers
    (ws.root / AGREEMENT_FILE).write_text(json.dumps(result.agreement, indent=2, ensure_ascii=False), encoding="utf-8")
    return result
