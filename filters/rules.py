"""Rule filters: checks that need no model, and the merge that turns their flags into drops.

Every check is ``check_<name>(items, config) -> DataFrame`` with ``item_id``, ``<name>_flag``
(bool), ``<name>_score`` (float) and ``<name>_reason`` (a sentence naming the evidence, null when
not flagged), one row per item in item order. ``run_rules`` runs the enabled checks, appends
their columns to the items table (refusing to overwrite any column) and adds ``rule_drop`` and
``rule_reason``. A check that raises fails the whole run: a crashed check must never read as
"no issues", or unscreened items would reach the benchmark.

What drops (default ``drop`` = answer_leak, near_duplicate, malformed) and what only flags:

- ``answer_leak``: drops (MMStar removes answers written in the text).
- ``near_duplicate``: the first item of a group (item order) is kept, the later ones drop.
  Same question text about clearly different images is not a duplicate (see
  ``near_duplicate_ignore_images``).
- ``duplicate_image``: groups items whose first image is the same picture; flag only by
  default (several questions per image is normal), drops when listed in ``drop``.
- ``malformed``: drops only for findings that make the item unscoreable (fewer than 2
  options, an empty option or question, answer letter not among the options, the correct
  option duplicated). Duplicated distractors and "all/none of the above"-style trap options
  only flag (``malformed_drop`` is false) unless ``drop_trap_options = true``.
- ``no_image``: flags items without any image; flag only by default (audits of text-only
  pools must still work), ``balance`` skips them unless ``--allow-no-image``.

Examples
--------
>>> cfg = RuleConfig.from_dict({"rules": {"near_duplicate_threshold": 0.95}}, source="panel.toml")
>>> cfg.near_duplicate_threshold
0.95
>>> RuleConfig.from_dict({"near_duplicate_treshold": 0.9}, source="panel.toml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
curate.errors.UserError: panel.toml: unknown key 'near_duplicate_treshold' in [rules] (did you mean 'near_duplicate_threshold'?); ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.config import Param, check_table, invalid, read_toml
from curate.errors import UserError
from filters.duplicates import check_duplicate_image, check_near_duplicate
from filters.leak import check_answer_leak
from filters.malformed import check_malformed
from filters.no_image import check_no_image

#: The checks, in the order their columns are appended.
CHECKS: dict[str, Callable[[pl.DataFrame, "RuleConfig"], pl.DataFrame]] = {
    "answer_leak": check_answer_leak,
    "near_duplicate": check_near_duplicate,
    "duplicate_image": check_duplicate_image,
    "malformed": check_malformed,
    "no_image": check_no_image,
}
#: Columns a check may add besides flag/score/reason.
EXTRA_COLUMNS = {"near_duplicate": ("group",), "duplicate_image": ("group",), "malformed": ("drop",)}
REQUIRED_COLUMNS = ("item_id", "question", "hint", "options", "answer", "images")


@dataclass(frozen=True)
class RuleConfig:
    """Thresholds and switches of the rule filters (the ``[rules]`` table of panel.toml)."""

    #: Checks to run.
    enabled: tuple[str, ...] = tuple(CHECKS)
    #: Checks whose findings drop an item (each must be enabled). ``duplicate_image`` only flags
    #: by default: benchmarks ask several different questions about one picture (AI2D: 240 of
    #: 309 items share an image with an earlier item); add it to keep one item per image.
    drop: tuple[str, ...] = ("answer_leak", "near_duplicate", "malformed")
    #: Answers shorter than this (normalised, spaces removed) are never called leaked.
    leak_min_answer_chars: int = 2
    #: Item fields searched for the answer.
    leak_fields: tuple[str, ...] = ("question", "hint")
    #: Cosine similarity of TF-IDF char n-gram vectors at or above which two questions are near-duplicates.
    near_duplicate_threshold: float = 0.9
    #: Cosine the questions alone must also reach (lower: paraphrases differ more than their
    #: options do). Stops "highest"/"lowest in the food chain" with shared options from pairing.
    near_duplicate_question_threshold: float = 0.8
    #: Character n-gram lengths (inclusive) of the TF-IDF vectors.
    near_duplicate_ngram: tuple[int, int] = (3, 5)
    #: When false, two near-identical questions about clearly different first images (pHash
    #: distance above ``phash_max_distance``) are not duplicates: that is how VQA sets ask one
    #: template question ("How many people are in the image?") about many pictures.
    near_duplicate_ignore_images: bool = False
    #: Largest Hamming distance between 64-bit perceptual hashes that still counts as the same image.
    phash_max_distance: int = 4
    #: "All of the above"-style trap options drop the item instead of only flagging it.
    drop_trap_options: bool = False

    def __post_init__(self) -> None:
        for name, value in _validated(dataclasses.asdict(self), "RuleConfig").items():
            object.__setattr__(self, name, value)  # lists from TOML become tuples

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "RuleConfig":
        """Build from parsed TOML: the ``[rules]`` table itself, or a whole file whose ``[rules]`` is used.

        A dict is taken as a whole file when it has a ``rules`` key or holds other tables (a
        panel.toml without ``[rules]`` gives the defaults). Errors name the source, the key, the
        value and the fix (``UserError``), e.g. an unknown key with the closest valid one.
        """
        if not isinstance(d, dict):
            raise invalid(source, "rules", d, "write it as a [rules] section")
        if "rules" in d or any(isinstance(v, dict) for v in d.values()):
            table = d.get("rules", {})
            if not isinstance(table, dict):
                raise invalid(source, "rules", table, "write it as a [rules] section")
        else:
            table = d
        check_table(source, "rules", _lists(table), RULES_SPEC)
        values = {**dataclasses.asdict(cls()), **table}
        return cls(**_validated(values, source))

    @classmethod
    def from_toml(cls, path: str | Path) -> "RuleConfig":
        """Read the ``[rules]`` table of a TOML file (absent table -> defaults)."""
        data = read_toml(path, "rules")
        return cls.from_dict({"rules": data.get("rules", {})}, source=str(path))

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples), for recording beside the results."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def digest(self) -> str:
        """Short hash of the resolved config: results carry it so a changed threshold is visible."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


_SIMILARITY = {"types": (float,), "low": 0, "high": 1, "open_low": True}
#: What each ``[rules]`` key accepts (``curate.config``: the same message shape as the panel and pipeline files).
RULES_SPEC: dict[str, Param] = {
    "enabled": Param((list,), each=str, items=tuple(CHECKS)),
    "drop": Param((list,), each=str, items=tuple(CHECKS)),
    "leak_min_answer_chars": Param((int,), low=1, hint=", e.g. 2"),
    "leak_fields": Param((list,), each=str, items=("question", "hint"), min_items=1),
    "near_duplicate_threshold": Param(**_SIMILARITY, hint=" (a cosine similarity), e.g. 0.9"),
    "near_duplicate_question_threshold": Param(**_SIMILARITY, hint=" (a cosine similarity), e.g. 0.8"),
    "near_duplicate_ngram": Param((list,), each=int),
    "near_duplicate_ignore_images": Param((bool,)),
    "phash_max_distance": Param((int,), low=0, high=32, hint=" (differing bits of 64), e.g. 4"),
    "drop_trap_options": Param((bool,)),
}


def _lists(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples (a RuleConfig built in code) as lists (as TOML gives them), so one spec checks both."""
    return {k: list(x) if isinstance(x, tuple) else x for k, x in values.items()}


def _validated(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every field against :data:`RULES_SPEC` and the rules between fields; lists -> tuples."""
    v = check_table(source, "rules", _lists(values), RULES_SPEC)
    moot = [c for c in v["drop"] if c not in v["enabled"]]
    if moot:
        raise invalid(source, "rules.drop", v["drop"],
                      f"{moot[0]!r} is not in enabled = {v['enabled']}, so dropping on it has no effect; "
                      f"add it to enabled or remove it from drop")
    ng = v["near_duplicate_ngram"]
    if len(ng) != 2 or not 1 <= ng[0] <= ng[1] <= 10:
        raise invalid(source, "rules.near_duplicate_ngram", ng,
                      "it must be two integers [min, max] with 1 <= min <= max <= 10, e.g. [3, 5]")
    return {k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}


def _check_output(name: str, out: pl.DataFrame, items: pl.DataFrame) -> None:
    """A check must return one row per item, in item order, with exactly its own columns."""
    allowed = {"item_id"} | {f"{name}_{s}" for s in ("flag", "score", "reason", *EXTRA_COLUMNS.get(name, ()))}
    required = {"item_id", f"{name}_flag", f"{name}_score", f"{name}_reason"}
    cols = set(out.columns)
    if not required <= cols or not cols <= allowed:
        raise RuntimeError(f"check {name!r} returned columns {out.columns}; expected {sorted(required)} (+ {sorted(allowed - required)})")
    if out.height != items.height or not out["item_id"].equals(items["item_id"]):
        raise RuntimeError(f"check {name!r} returned {out.height} rows not aligned with the {items.height} items")


def run_rules(items: pl.DataFrame, config: RuleConfig | None = None) -> pl.DataFrame:
    """Run the enabled rule checks and return ``items`` with their columns, ``rule_drop`` and ``rule_reason`` added.

    One row per input item, same order. ``rule_reason`` joins "<check>: <reason>" of the
    checks that drop the item with "; " (null when kept). Raises ``UserError`` when a column
    would be overwritten (e.g. rules already ran on this table) or a required column is missing.
    """
    config = config or RuleConfig()
    missing = [c for c in REQUIRED_COLUMNS if c not in items.columns]
    if missing:
        raise UserError(f"items table lacks column(s) {missing}; run `mmcurate ingest` to build items.parquet first.")
    if items["item_id"].null_count() or items["item_id"].is_duplicated().any():
        dup = items.filter(pl.col("item_id").is_duplicated())["item_id"].head(3).to_list()
        raise UserError(f"items table: item_id must be unique and non-null (duplicates e.g. {dup}); re-run ingest.")
    taken = set(items.columns)
    for col in ("rule_drop", "rule_reason"):
        if col in taken:
            raise UserError(f"items table already has column {col!r} (rules ran on it before?); start from items.parquet.")

    result = items
    drop_terms: list[pl.Expr] = []
    for name, check in CHECKS.items():
        if name not in config.enabled:
            continue
        out = check(items, config)  # never wrapped: a crash must fail the run
        _check_output(name, out, items)
        new = [c for c in out.columns if c != "item_id"]
        clash = [c for c in new if c in taken]
        if clash:
            raise UserError(
                f"items table already has column(s) {clash} (rules ran on it before?); "
                f"start from items.parquet or drop those columns first."
            )
        taken.update(new)
        result = result.with_columns(out.select(new))
        if name in config.drop:
            dropping = pl.col(f"{name}_drop") if f"{name}_drop" in new else pl.col(f"{name}_flag")
            drop_terms.append(
                pl.when(dropping.fill_null(False))
                .then(pl.lit(f"{name}: ") + pl.col(f"{name}_reason").fill_null("flagged"))
                .otherwise(None)
            )
    if drop_terms:
        reason = pl.concat_str(drop_terms, separator="; ", ignore_nulls=True)
        result = result.with_columns(rule_reason=pl.when(reason != "").then(reason).otherwise(None))
    else:
        result = result.with_columns(rule_reason=pl.lit(None, dtype=pl.String))
    return result.with_columns(rule_drop=pl.col("rule_reason").is_not_null()).select(
        [*[c for c in result.columns if c != "rule_reason"], "rule_drop", "rule_reason"]
    )
