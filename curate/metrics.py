"""MMStar's scores from model result files: S_v, S_wv, S_t and the derived MG and ML.

MMStar (arXiv 2403.20330) measures two things beyond accuracy:

* multi-modal gain ``MG = S_v - S_wv``: what the image adds for an LVLM (score with the image
  minus score of the same LVLM with the image withheld);
* multi-modal leakage ``ML = max(0, S_wv - S_t)``: how much the LVLM answers without the image
  *beyond* its own LLM base with text only -- i.e. what leaked into multi-modal training data.

ML is only meaningful when S_wv and S_t come from runs with the same number of in-context
shots (MMStar's users found a 0-shot LVLM-text run compared against a 2-shot LLM baseline);
so every file carries the shot setting when it is known and a mismatch is a warning.

Result files are read, matched to items and scored (MMStar's own rule or the option-text
matcher; unextractable replies count as wrong *and* are reported) by :mod:`curate.results`;
item difficulty is :mod:`curate.difficulty`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from curate.errors import UserError
from curate.results import Predictions, score

__all__ = [
    # MMStar's scores (this module)
    "MetricsReport", "RUNS", "accuracy", "accuracy_by", "mg_ml", "shot_warnings",
]


def accuracy(scored: pl.DataFrame) -> dict:
    """``{n, hits, unextractable, accuracy}`` with accuracy in percent (unextractable = wrong)."""
    n = scored.height
    hits = int(scored["hit"].sum()) if n else 0
    return {
        "n": n,
        "hits": hits,
        "unextractable": int(scored["unextractable"].sum()) if n else 0,
        "accuracy": round(100.0 * hits / n, 2) if n else None,
    }


def accuracy_by(scored: pl.DataFrame, column: str) -> dict[str, dict]:
    """:func:`accuracy` per value of ``column`` (null values grouped under "(none)")."""
    out = {}
    for (value,), group in sorted(scored.group_by(column), key=lambda g: str(g[0][0])):
        out["(none)" if value is None else str(value)] = accuracy(group)
    return out


RUNS = {"S_v": "vision", "S_wv": "without_image", "S_t": "text_only"}


@dataclass
class MetricsReport:
    """S_v / S_wv / S_t and the derived MG / ML, overall and per category, in percent."""

    matcher: str
    runs: dict[str, dict] = field(default_factory=dict)  # "S_v" -> file info + accuracy
    overall: dict[str, float | None] = field(default_factory=dict)
    by_category: dict[str, dict[str, float | None]] = field(default_factory=dict)
    by_l2_category: dict[str, dict[str, float | None]] = field(default_factory=dict)
    n_items: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict = {k: self.overall[k] for k in ("S_v", "S_wv", "S_t", "MG", "ML") if k in self.overall}
        out.update(
            matcher=self.matcher,
            n_items=self.n_items,
            unextractable={k: r["unextractable"] for k, r in self.runs.items()},
            runs=self.runs,
            by_category=self.by_category,
            by_l2_category=self.by_l2_category,
            warnings=self.warnings,
        )
        return out


def _derived(scores: dict[str, float | None]) -> dict[str, float | None]:
    out = dict(scores)
    if scores.get("S_v") is not None and scores.get("S_wv") is not None:
        out["MG"] = round(scores["S_v"] - scores["S_wv"], 2)
    if scores.get("S_wv") is not None and scores.get("S_t") is not None:
        out["ML"] = round(max(0.0, scores["S_wv"] - scores["S_t"]), 2)
    return out


def mg_ml(
    vision: Predictions | None = None,
    without_image: Predictions | None = None,
    text_only: Predictions | None = None,
    *,
    matcher: str = "mmstar",
) -> MetricsReport:
    """MMStar's metrics from up to three runs of the same benchmark.

    Scores are computed on the items present in every given file (a warning names how many
    were left out), so MG and ML compare like with like. Returns whichever of S_v, S_wv,
    S_t, MG and ML the given files allow.
    """
    given = {k: p for k, p in (("S_v", vision), ("S_wv", without_image), ("S_t", text_only)) if p is not None}
    if not given:
        raise UserError("give at least one prediction file (--vision, --without-image or --text-only)")
    report = MetricsReport(matcher=matcher)
    common = None
    for p in given.values():
        keys = set(p.table["key"].to_list())
        common = keys if common is None else common & keys
    if not common:
        raise UserError("the prediction files share no item keys (index / item_id): are they runs of the same benchmark?")
    for name, p in given.items():
        left = p.table.height - len(common)
        if left:
            report.warnings.append(f"{p.name}: {left} of {p.table.height} items are not in every file and were left out")
    keep = pl.Series(sorted(common))
    _check_same_answers(given, keep)
    scored = {k: score(p.table.filter(pl.col("key").is_in(keep.implode())), matcher=matcher) for k, p in given.items()}
    report.n_items = len(common)
    for name, p in given.items():
        acc = accuracy(scored[name])
        report.runs[name] = {"file": str(p.path), "shots": p.shots, "shots_source": p.shots_source, **acc}
        if acc["unextractable"]:
            report.warnings.append(f"{p.name}: no option could be extracted from {acc['unextractable']} of {acc['n']} replies (scored wrong)")
    report.overall = _derived({k: r["accuracy"] for k, r in report.runs.items()})
    for column, target in (("category", report.by_category), ("l2_category", report.by_l2_category)):
        per_run = {k: accuracy_by(s, column) for k, s in scored.items()}
        values = sorted({v for d in per_run.values() for v in d})
        if values == ["(none)"]:
            continue
        for v in values:
            row = {k: d.get(v, {}).get("accuracy") for k, d in per_run.items()}
            target[v] = {"n": max(d.get(v, {}).get("n", 0) for d in per_run.values()), **_derived(row)}
    report.warnings.extend(shot_warnings(given))
    return report


def _check_same_answers(given: dict[str, Predictions], keep: pl.Series) -> None:
    """Runs of one benchmark agree on every key's answer; anything else is a user mix-up."""
    names = list(given)
    base = given[names[0]].table.filter(pl.col("key").is_in(keep.implode())).select("key", "answer")
    for other in names[1:]:
        t = given[other].table.filter(pl.col("key").is_in(keep.implode())).select("key", pl.col("answer").alias("answer_2"))
        diff = base.join(t, on="key").filter(pl.col("answer") != pl.col("answer_2"))
        if diff.height:
            r = diff.row(0, named=True)
            raise UserError(
                f"{given[names[0]].name} and {given[other].name} disagree on the answer of {diff.height} shared item(s) "
                f"(e.g. index {r['key']!r}: {r['answer']} vs {r['answer_2']}); they are not runs of the same benchmark"
            )


def shot_warnings(runs: dict[str, Predictions]) -> list[str]:
    """Warn when S_wv and S_t differ (or may differ) in their number of in-context shots."""
    wv, t = runs.get("S_wv"), runs.get("S_t")
    if wv is None or t is None:
        return []
    if wv.shots is not None and t.shots is not None:
        if wv.shots != t.shots:
            return [
                f"shot mismatch: S_wv ({wv.name}) is {wv.shots}-shot but S_t ({t.name}) is {t.shots}-shot; "
                "ML compares unlike runs (re-run both with the same number of shots)"
            ]
        return []
    unknown = [p.name for p in (wv, t) if p.shots is None]
    return [f"shot setting unknown for {', '.join(unknown)}; ML assumes S_wv and S_t used the same number of shots (give --shots)"]
