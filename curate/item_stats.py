"""Item quality from model results: solver counts, discriminability, suspect keys.

Blind-answerable questions are one failure of a benchmark; wrong keys and items that do not
separate good models from bad ones are the others (DatBench, arXiv 2601.02316; MMStar's reviewers
checked keys by hand). Given the result files of several vision models (VLMEvalKit ``.xlsx``/``.tsv``,
read, matched to items and scored by :mod:`curate.results`, the same readers, key matching and
answer matchers as ``mmcurate metrics`` / ``difficulty``), this module computes per item:

* ``n_models`` -- models with a result for the item; ``n_solvers`` -- those whose extracted answer
  is the item's key (the workspace's key: the one being judged).
* ``discriminability`` -- the point-biserial correlation, over the models answering the item,
  between solving it (0/1) and the model's overall accuracy (Pearson's r of a 0/1 variable with a
  continuous one). Null when undefined: fewer than 3 models, or everyone (or no one) solved it, or
  the models' accuracies are all equal. High: the better models solve it and the weaker do not.
* ``suspect_key`` / ``suspect_evidence`` -- the key rule below, with a sentence such as
  "7 of 9 models chose C, the key is B, and the 3 best models all chose C".
* ``key_support`` (accuracy-weighted share of models choosing the key), ``suspect_answer`` and
  ``suspect_support`` (the plurality wrong option and its weighted share), ``model_answers``
  (each model's extracted letter, null when none could be extracted; ``item_stats.parquet`` only).

The suspect-key rule (confident-learning style; Northcutt et al., "Confident Learning", 2021)
-------------------------------------------------------------------------------------------
Let model ``m`` have accuracy ``a_m`` (share of the items it answered that it solved, unextractable
replies wrong) and weight ``w_m = a_m``. For item ``i`` with key ``k`` answered by models ``M_i``,
the weighted support of option ``o`` is ``S_i(o) = sum(w_m : m in M_i chose o) / sum(w_m : m in M_i)``.
``o*`` is the wrong option (``o != k``) with the largest support (ties: more models, then the earlier
letter). The item is a **suspect key** when all of:

1. ``|M_i| >= min_models`` (default 3);
2. at least ``min_agree`` models (default 2) chose ``o*``;
3. ``S_i(o*) >= t`` with ``t = max(q, mean_i S_i(k_i))`` -- the confident threshold: the wrong
   option must get at least the support that keys get on average (confident learning's per-class
   threshold, pooled over letters because letters are not classes), and never less than ``q``
   (default 0.5: a weighted majority); this also makes ``S_i(o*) > S_i(k)``;
4. the ``ceil(top * |M_i|)`` best models answering the item (by ``a_m``; default ``top = 1/3``, at
   least one model) all chose ``o*``.

Why these conditions: a key that many models dispute is only evidence when they dispute it *in the
same way* (2), with the weight of the better models (3), and when the models that are right most
often are among the dissenters (4) -- weak models agreeing on an attractive distractor is a hard
item, not a wrong key. What it means for few models: with 3 models the rule is "2 of 3, one of them
the best model, chose the same wrong option"; models that share training data (VILA-8B and VILA-13B)
make the same mistakes, so on MMStar these 3 models flag 423 of 1,500 items, 28 % (see the
README): with few models the flag is a review queue, not a verdict. With MMStar's 16 models the
same defaults ask for a weighted majority including the 6 best.

Keep-ranking subsets (``keep_ranking_subset``, ``ranking_agreement``, ``random_subset``) live in
:mod:`curate.subsets`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.correlation import point_biserial
from curate.difficulty import DIFFICULTY_COLUMNS, difficulty_bin
from curate.errors import UserError
from curate.results import Predictions, match_items, read_predictions, score

__all__ = [
    "ITEM_STATS_FILE", "N_SUSPECT_LISTED", "STAGE_COLUMNS", "SuspectRule", "answers_table", "audit_item_stats", "compute",
    "correct_matrix", "correct_matrix_from_files", "item_stats", "join_stats", "judge_item", "model_accuracy",
    "model_answers_json", "model_names", "summarize", "write_item_stats",
]

ITEM_STATS_FILE = "item_stats.parquet"
#: Columns joined into the stage file (the contract of issue #18 plus three extensions).
STAGE_COLUMNS = ("n_models", "n_solvers", "discriminability", "suspect_key", "suspect_evidence",
                 "key_support", "suspect_answer", "suspect_support")


@dataclass(frozen=True)
class SuspectRule:
    """Parameters of the suspect-key rule (module docstring); defaults are the documented ones."""

    min_models: int = 3
    min_agree: int = 2
    q: float = 0.5
    top: float = 1 / 3

    def to_dict(self) -> dict:
        return {"min_models": self.min_models, "min_agree": self.min_agree, "q": self.q, "top": round(self.top, 4)}


# ----------------------------------------------------------------------------------------
# model names and answers per item
# ----------------------------------------------------------------------------------------
def model_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique model names from result file names: the stems without their common suffix
    (``vila_13b_MMStar.xlsx``, ``vila_8b_MMStar.xlsx`` -> ``vila_13b``, ``vila_8b``)."""
    stems = [Path(p).stem for p in paths]
    if len(stems) > 1:
        suffix = stems[0]
        for s in stems[1:]:
            while suffix and not s.endswith(suffix):
                suffix = suffix[1:]
        cut = suffix[suffix.find("_"):] if "_" in suffix else ""
        short = [s[: len(s) - len(cut)] if cut else s for s in stems]
        if all(short) and len(set(short)) == len(short):
            stems = short
    out, seen = [], {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return out


def answers_table(runs: Sequence[Predictions], items: pl.DataFrame | None = None, *, names: Sequence[str] | None = None,
                  matcher: str = "mmstar", source: str | None = None) -> pl.DataFrame:
    """Long table ``item_id, model, extracted, key, hit``: one row per model and item it answered.

    Answers are extracted by :func:`curate.results.score`. With ``items`` (a stage table) result
    rows are matched to ``item_id`` by :func:`curate.results.match_items` (as ``difficulty`` and
    ``metrics --items`` match them) and judged against the items' key;
    rows naming no item are dropped with a warning. Without ``items`` the file's key and index are used.
    """
    if not runs:
        raise UserError("item statistics need result files of at least one model")
    names = list(names) if names is not None else model_names([r.path for r in runs])
    parts = [score(r, matcher=matcher).select("key", "extracted", pl.col("answer").alias("file_key"), pl.lit(n).alias("model"))
             for r, n in zip(runs, names)]
    long = pl.concat(parts)
    if items is None:
        return long.select(pl.col("key").alias("item_id"), "model", "extracted", pl.col("file_key").alias("key")).with_columns(
            (pl.col("extracted") == pl.col("key")).fill_null(False).alias("hit"))
    ref = items if source is None else items.filter(pl.col("source") == source)
    if source is not None and ref.is_empty():
        raise UserError(f"--source {source!r}: no such source in the workspace (sources: {sorted(set(items['source'].to_list()))})")
    item_keys = ref.select("item_id", pl.col("answer").alias("item_key"))
    joined = long.join(match_items(long["key"], ref), on="key", how="left").join(item_keys, on="item_id", how="left")
    unknown = joined.filter(pl.col("item_id").is_null())
    if unknown.height == joined.height:
        raise UserError(f"no result key (e.g. {long['key'][0]!r}) matches an item_id or orig_index in the workspace")
    if unknown.height:
        warnings.warn(f"{unknown['key'].n_unique()} result key(s) name items not in the workspace (dropped at ingest or another source); ignored", stacklevel=2)
    joined = joined.filter(pl.col("item_id").is_not_null())
    differ = joined.filter(pl.col("file_key") != pl.col("item_key"))
    if differ.height:
        r = differ.row(0, named=True)
        warnings.warn(f"{differ['item_id'].n_unique()} item(s) have another key in the result files than in the workspace "
                      f"(e.g. {r['item_id']}: {r['file_key']} in {r['model']}'s file, {r['item_key']} in the workspace); "
                      "answers are judged against the workspace's key", stacklevel=2)
    return joined.select(
        "item_id", "model", "extracted", pl.col("item_key").alias("key"),
        (pl.col("extracted") == pl.col("item_key")).fill_null(False).alias("hit"),
    )


def correct_matrix(runs: Sequence[Predictions], items: pl.DataFrame | None = None, *, names: Sequence[str] | None = None,
                   matcher: str = "mmstar", source: str | None = None) -> pl.DataFrame:
    """``item_id`` + one Boolean column per model (solved?); null where the model has no result."""
    long = answers_table(runs, items, names=names, matcher=matcher, source=source)
    order = list(names) if names is not None else model_names([r.path for r in runs])
    wide = long.pivot(on="model", index="item_id", values="hit").sort("item_id")
    return wide.select("item_id", *[pl.col(m).cast(pl.Boolean) for m in order if m in wide.columns])


def correct_matrix_from_files(paths: Sequence[str | Path], items: pl.DataFrame | None = None, *, matcher: str = "mmstar",
                              source: str | None = None) -> pl.DataFrame:
    """:func:`correct_matrix` of result files read with :func:`curate.results.read_predictions`."""
    return correct_matrix([read_predictions(p) for p in paths], items, names=model_names(paths), matcher=matcher, source=source)


# ----------------------------------------------------------------------------------------
# per-item statistics
# ----------------------------------------------------------------------------------------
def model_accuracy(long: pl.DataFrame) -> dict[str, float]:
    """Accuracy (0-1) per model over the items it answered, from :func:`answers_table`."""
    acc = long.group_by("model").agg(pl.col("hit").mean().alias("acc"))
    return {m: float(a) for m, a in acc.iter_rows()}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def judge_item(votes: dict[str, str | None], key: str, acc: dict[str, float], rule: SuspectRule, threshold: float) -> dict:
    """The rule of the module docstring for one item: ``votes`` model -> extracted letter (or None)."""
    models = sorted(votes, key=lambda m: (-acc[m], m))
    total = sum(acc[m] for m in models) or 1.0
    support: dict[str, float] = {}
    count: dict[str, int] = {}
    for m in models:
        v = votes[m]
        if v is not None:
            support[v] = support.get(v, 0.0) + acc[m] / total
            count[v] = count.get(v, 0) + 1
    wrong = sorted((o for o in support if o != key), key=lambda o: (-support[o], -count[o], o))
    out = {"key_support": support.get(key, 0.0), "suspect_answer": None, "suspect_support": None,
           "suspect_key": False, "suspect_evidence": None}
    if not wrong:
        return out
    o = wrong[0]
    out["suspect_answer"], out["suspect_support"] = o, support[o]
    n_top = max(1, math.ceil(rule.top * len(models) - 1e-9))
    best = models[:n_top]
    if (len(models) >= rule.min_models and count[o] >= rule.min_agree and support[o] >= threshold
            and support[o] > out["key_support"] and all(votes[m] == o for m in best)):
        who = f"the best model ({best[0]}) chose {o}" if n_top == 1 else f"the {n_top} best models all chose {o}"
        out["suspect_key"] = True
        out["suspect_evidence"] = (f"{count[o]} of {_plural(len(models), 'model')} chose {o}, the key is {key}, and {who} "
                                   f"(accuracy-weighted support {support[o]:.2f} vs {out['key_support']:.2f} for the key)")
    return out


def item_stats(long: pl.DataFrame, *, rule: SuspectRule = SuspectRule()) -> pl.DataFrame:
    """Per-item statistics from :func:`answers_table` (one row per item_id, sorted)."""
    acc = model_accuracy(long)
    grouped = long.sort("item_id", "model").group_by("item_id", maintain_order=True).agg("model", "extracted", "hit", pl.col("key").first())
    key_support = []
    rows = grouped.rows(named=True)
    for r in rows:
        total = sum(acc[m] for m in r["model"]) or 1.0
        key_support.append(sum(acc[m] for m, h in zip(r["model"], r["hit"]) if h) / total)
    threshold = max(rule.q, float(np.mean(key_support)) if key_support else rule.q)
    out = []
    for r in rows:
        votes = dict(zip(r["model"], r["extracted"]))
        j = judge_item(votes, r["key"], acc, rule, threshold)
        out.append({
            "item_id": r["item_id"],
            "n_models": len(r["model"]),
            "n_solvers": int(sum(r["hit"])),
            "discriminability": point_biserial(r["hit"], [acc[m] for m in r["model"]]),
            **j,
            "model_answers": [{"model": m, "answer": v, "solved": h} for m, v, h in zip(r["model"], r["extracted"], r["hit"])],
        })
    schema = {
        "item_id": pl.String, "n_models": pl.Int32, "n_solvers": pl.Int32, "discriminability": pl.Float64,
        "key_support": pl.Float64, "suspect_answer": pl.String, "suspect_support": pl.Float64,
        "suspect_key": pl.Boolean, "suspect_evidence": pl.String,
        "model_answers": pl.List(pl.Struct({"model": pl.String, "answer": pl.String, "solved": pl.Boolean})),
    }
    return pl.DataFrame(out, schema=schema).select(list(schema)).sort("item_id")


def summarize(stats: pl.DataFrame, acc: dict[str, float], *, rule: SuspectRule = SuspectRule()) -> dict:
    """Counts and shares for ``--json``, the audit summary and the report."""
    n = stats.height
    none = int((stats["n_solvers"] == 0).sum()) if n else 0
    every = int((stats["n_solvers"] == stats["n_models"]).sum()) if n else 0
    disc = stats["discriminability"].drop_nulls()
    edges = np.linspace(-1.0, 1.0, 11)
    counts, _ = np.histogram(disc.to_numpy(), bins=edges) if disc.len() else (np.zeros(10, dtype=int), edges)
    return {
        "n_items": n,
        "n_models": len(acc),
        "models": {m: round(a, 4) for m, a in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))},
        "no_model_solves": {"n": none, "share": round(none / n, 4) if n else None},
        "every_model_solves": {"n": every, "share": round(every / n, 4) if n else None},
        "suspect_keys": {"n": int(stats["suspect_key"].sum()) if n else 0, "share": round(float(stats["suspect_key"].mean()), 4) if n else None},
        "discriminability": {
            "n_defined": int(disc.len()),
            "mean": round(float(disc.mean()), 4) if disc.len() else None,
            "histogram": [{"lo": round(float(lo), 2), "hi": round(float(hi), 2), "n": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts)],
        },
        "rule": rule.to_dict(),
    }


def compute(runs: Sequence[Predictions], items: pl.DataFrame | None = None, *, names: Sequence[str] | None = None,
            matcher: str = "mmstar", source: str | None = None, rule: SuspectRule = SuspectRule()) -> tuple[pl.DataFrame, dict]:
    """Item statistics and their summary for ``runs`` (optionally matched to a stage table)."""
    if len(runs) < 3:
        warnings.warn(f"only {len(runs)} model(s): discriminability needs 3 and suspect keys {rule.min_models}", stacklevel=2)
    long = answers_table(runs, items, names=names, matcher=matcher, source=source)
    stats = item_stats(long, rule=rule)
    return stats, summarize(stats, model_accuracy(long), rule=rule)


def join_stats(table: pl.DataFrame, stats: pl.DataFrame) -> pl.DataFrame:
    """The stage table with :data:`STAGE_COLUMNS` (replaced when present) and ``difficulty``
    recomputed from the same counts, so n_solvers/n_models/difficulty never disagree."""
    drop = [c for c in (*STAGE_COLUMNS, *DIFFICULTY_COLUMNS) if c in table.columns]
    out = table.drop(drop).join(stats.select("item_id", *STAGE_COLUMNS), on="item_id", how="left")
    return out.with_columns(
        pl.struct("n_solvers", "n_models").map_elements(
            lambda r: difficulty_bin(r["n_solvers"], r["n_models"]) if r["n_models"] else None, return_dtype=pl.String
        ).alias("difficulty")
    )


def model_answers_json(row_answers: list[dict]) -> str:
    """``{model: letter}`` of one item's ``model_answers`` as compact JSON (for reports)."""
    return json.dumps({a["model"]: a["answer"] for a in row_answers}, ensure_ascii=False)


# ----------------------------------------------------------------------------------------
# the workspace command
# ----------------------------------------------------------------------------------------
def _write_item_stats(workdir: str | Path, runs: Sequence[Predictions], *, names: Sequence[str] | None = None,
                      matcher: str = "mmstar", source: str | None = None, rule: SuspectRule = SuspectRule()) -> dict:
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    base = ws.annotation_base("item_stats")  # read once: annotate joins into this same table
    table = base[1]
    stats, summary = compute(runs, table, names=names, matcher=matcher, source=source, rule=rule)
    joined = join_stats(table, stats)
    added = [c for c in joined.columns if c not in table.columns or c in (*STAGE_COLUMNS, "difficulty")]
    with ws.transaction() as tx:
        tx.write_parquet(ITEM_STATS_FILE, stats)
        stage, path = ws.annotate("item_stats", joined.select("item_id", *[c for c in added if c != "item_id"]), base=base)
    matched = stats.height
    return {"stage": stage, "path": str(path), "item_stats": str(ws.root / ITEM_STATS_FILE), "matched": matched,
            "unmatched": table.height - matched, **summary}


def write_item_stats(workdir: str | Path, runs: Sequence[Predictions], **kwargs) -> dict:
    """Write ``WORKDIR/item_stats.parquet`` and join :data:`STAGE_COLUMNS` (and ``difficulty``) into the
    newest stage file, in one transaction holding the workspace lock (as ``difficulty`` does)."""
    from curate.workspace import workspace_command

    return workspace_command("item-stats")(_write_item_stats)(workdir, runs, **kwargs)


# ----------------------------------------------------------------------------------------
# the audit's `--results FILES`
# ----------------------------------------------------------------------------------------
N_SUSPECT_LISTED = 50


def audit_item_stats(table: pl.DataFrame, results: Sequence[str | Path], *, matcher: str = "mmstar",
                     rule: SuspectRule = SuspectRule(), n_listed: int = N_SUSPECT_LISTED) -> dict:
    """``summary.json``'s ``item_stats`` object for the audited ``table`` and model ``results``:
    :func:`summarize`'s counts and histogram, the files, and the suspect keys (strongest first, at
    most ``n_listed``) each with its question, options, key and every model's answer."""
    paths = [Path(p) for p in results]
    names = model_names(paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats, summary = compute([read_predictions(p) for p in paths], table, names=names, matcher=matcher, rule=rule)
    sus = stats.filter(pl.col("suspect_key")).sort(["suspect_support", "item_id"], descending=[True, False])
    info = table.select("item_id", "question", "options", "answer")
    listed = []
    for r in sus.head(n_listed).join(info, on="item_id", how="left").sort(["suspect_support", "item_id"], descending=[True, False]).iter_rows(named=True):
        listed.append({
            "item_id": r["item_id"], "question": r["question"], "options": r["options"], "key": r["answer"],
            "suspect_answer": r["suspect_answer"], "suspect_support": round(r["suspect_support"], 4),
            "key_support": round(r["key_support"], 4), "evidence": r["suspect_evidence"],
            "answers": {a["model"]: a["answer"] for a in r["model_answers"]},
        })
    return {**summary, "files": {n: str(p) for n, p in zip(names, paths)}, "unmatched_items": table.height - stats.height,
            "suspect_items": listed, "warnings": [str(w.message) for w in caught]}
