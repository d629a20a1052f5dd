"""The stage registry: every stage file of a workspace, who writes it, what it reads, what it adds.

Why a registry: the pipeline order ("balanced" after "reviewed" after "screened" after "items")
and the link between a file (``screened.parquet``) and its ledger rows (stage ``screen``) were
spelled out in many modules, and the steps that add columns to another stage's file in place
(``difficulty``, ``suggest``, ``item-stats``) did so silently. Here they are written once:
``Workspace`` reads file names from it, ``Workspace.write`` checks every stage file for the item
contract and for the columns its stage declares it adds (``adds``; ``may_add`` lists, with the
reason, what a stage adds only in some runs), and ``Workspace.annotate`` is the one visible way to add
columns to a stage file that another stage wrote -- only the columns its :class:`Annotation` declares.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """A stage of the pipeline and its file in the workspace.

    ``name`` is the workspace's word for the file (``ws.read("screened")``); ``command`` is the
    CLI command that writes it and the ``stage`` value of its ledger rows; ``reads`` are the stages
    it takes its input from, newest first (the first present is used); ``adds`` names the columns
    it adds to its input and that every file it writes holds (``Workspace.write`` refuses a table
    without them; ``*`` ends a per-member prefix: one column per member named by ``answer__<m>``);
    ``may_add`` the columns it adds only in some runs (why: beside each stage below)."""

    name: str
    file: str
    command: str
    reads: tuple[str, ...]
    adds: tuple[str, ...]
    may_add: tuple[str, ...] = ()


@dataclass(frozen=True)
class Annotation:
    """A step that adds columns to the newest stage file in place, instead of writing a file of its own.

    ``into`` are the stages it may annotate, newest first. Through :meth:`curate.workspace.Workspace.annotate`."""

    name: str
    command: str
    adds: tuple[str, ...]
    into: tuple[str, ...]


#: The rule filters' columns (``filters.rules``): ``<check>_flag``/``_score``/``_reason`` (+ ``_group``/``_drop``).
RULE_COLUMNS = ("answer_leak_*", "near_duplicate_*", "duplicate_image_*", "malformed_*", "no_image_*", "rule_drop", "rule_reason")

STAGES: tuple[Stage, ...] = (
    # ingest writes the item contract itself (curate.schema, checked on every write); groups come later.
    Stage("items", "items.parquet", "ingest", (), ("item_id",)),
    # adds: the verdict every reader of a screened file needs (curate.audit_summary.check_screened, balance,
    # review): the members' answers, hits, n_members, blind. may_add: the rest of what `screen` writes,
    # which readers take as optional -- files screened by an older mmcurate lack the per-member
    # probabilities and the chance columns (the audit says "screened by an older mmcurate"); the rule
    # filters' columns are absent when screening with rules off (`audit --no-rules`); group_id/group_reason
    # only when the items had none (an earlier grouping is kept as it is); screen_error only when an item
    # could not be asked.
    Stage("screened", "screened.parquet", "screen", ("items",), ("answer__*", "hits", "n_members", "blind"),
          ("hit__*", "prob__*", "probs__*", "calprobs__*", "chance__*", "asks__*", "raw__*", "blind_chance",
           "blind_score", "screen_reason", "panel_hash", "screened_as", *RULE_COLUMNS, "group_id", "group_reason",
           "screen_error")),
    Stage("reviewed", "reviewed.parquet", "review", ("screened", "items"),
          ("review_n", "review_reviewers", "review_needs_image", "review_key_ok", "review_corrected_key",
           "review_capability", "review_dimension", "review_dimension_share", "review_kept", "review_status",
           "review_reason", "review_verdicts", "review_n_decided", "review_suggestions_accepted",
           "review_dimension_source", "review_key_confirmed")),
    # balance selects rows; it adds nothing every run has (group_id when its input had none).
    Stage("balanced", "balanced.parquet", "balance", ("reviewed", "screened", "items"), (), ("group_id", "group_reason")),
)

#: The stages whose output is a candidate table (items plus columns), newest first.
CANDIDATE_STAGES: tuple[str, ...] = ("reviewed", "screened", "items")

#: What ``mmcurate suggest`` adds (``curate.suggest``).
SUGGEST_COLUMNS = ("suggested_l2_category", "suggested_category", "suggested_prob", "suggested_by")

ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation("difficulty", "difficulty", ("n_solvers", "n_models", "difficulty"), CANDIDATE_STAGES),
    Annotation("suggest", "suggest", SUGGEST_COLUMNS, CANDIDATE_STAGES),
    Annotation("item_stats", "item-stats", ("n_models", "n_solvers", "discriminability", "suspect_key", "suspect_evidence",
                                            "key_support", "suspect_answer", "suspect_support", "difficulty"), CANDIDATE_STAGES),
)

#: Stage name -> file name, pipeline order (later stages are newer).
STAGE_FILES: dict[str, str] = {s.name: s.file for s in STAGES}


def stage(name: str) -> Stage:
    """The stage called ``name``; a ``KeyError`` lists the known ones."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; expected one of {[s.name for s in STAGES]}")


def annotation(name: str) -> Annotation:
    for a in ANNOTATIONS:
        if a.name == name:
            return a
    raise KeyError(f"unknown annotation {name!r}; expected one of {[a.name for a in ANNOTATIONS]}")


def newest_first(names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Stage names newest first (all stages, or those in ``names``) -- the order every "newest stage" lookup uses."""
    order = [s.name for s in reversed(STAGES)]
    return tuple(n for n in order if names is None or n in names)


def missing_columns(adds: tuple[str, ...], columns: list[str]) -> list[str]:
    """The names in ``adds`` that ``columns`` lacks; a ``prefix*`` name needs one column per member
    (the members are the ``<m>`` of the ``answer__<m>`` columns; none at all is ``answer__<member>``)."""
    present = set(columns)
    members = [c[len("answer__"):] for c in columns if c.startswith("answer__")]
    missing: list[str] = []
    for name in adds:
        if not name.endswith("*"):
            if name not in present:
                missing.append(name)
        elif not members:
            missing.append(name[:-1] + "<member>")
        else:
            missing.extend(name[:-1] + m for m in members if name[:-1] + m not in present)
    return missing
