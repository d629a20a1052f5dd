"""``mmcurate item-stats``: solver counts, discriminability and suspect keys from model results.

Thin command: read the result files with ``curate.metrics`` (the matchers of ``metrics`` and
``difficulty``), call ``curate.item_stats.write_item_stats``, print counts (or one JSON object).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from curate.cli._common import err, out, pct, print_json, warn
from curate.console import safe


def register(app: typer.Typer) -> None:
    app.command("item-stats")(item_stats_cmd)


def item_stats_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder: writes item_stats.parquet and joins its columns into the newest stage file.")],
    results: Annotated[list[Path], typer.Argument(help="Result files of the vision models (VLMEvalKit .xlsx/.tsv, one file per model).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the counts instead of tables.")] = False,
    min_models: Annotated[int, typer.Option("--min-models", help="Models an item needs before its key can be called suspect.")] = 3,
    option_text: Annotated[bool, typer.Option("--option-text", help="Use the option-text matcher instead of MMStar's rule.")] = False,
    source: Annotated[Optional[str], typer.Option(help="Match results to this source's items (when keyed by the source's own index).")] = None,
) -> None:
    """Per item: n_models, n_solvers, discriminability and a suspect-key flag with its evidence (issue #18)."""
    from curate.item_stats import SuspectRule, model_names, write_item_stats
    from curate.results import read_predictions

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [read_predictions(p) for p in results]
        result = write_item_stats(workdir, runs, names=model_names(results), source=source,
                                  matcher="option_text" if option_text else "mmstar", rule=SuspectRule(min_models=min_models))
    notes = [str(w.message) for w in caught]
    if as_json:
        print_json({**result, "warnings": notes})
        return
    print_item_stats(result, notes)


def print_item_stats(result: dict, notes: list[str]) -> None:
    """Accuracy per model, the item-statistics counts, then the warnings on stderr."""
    models = Table(title=f"{result['n_models']} model(s), accuracy on the {result['n_items']:,} matched items")
    models.add_column("model")
    models.add_column("accuracy", justify="right")
    for name, acc in result["models"].items():
        models.add_row(safe(name), pct(acc))
    out.print(models)
    counts = Table(title=f"item statistics -> {safe(result['item_stats'])} and {safe(result['path'])}")
    counts.add_column("items")
    counts.add_column("n", justify="right")
    counts.add_column("share", justify="right")
    for label, key in (("suspect key", "suspect_keys"), ("no model solves", "no_model_solves"), ("every model solves", "every_model_solves")):
        counts.add_row(label, str(result[key]["n"]), pct(result[key]["share"]))
    d = result["discriminability"]
    counts.add_row("discriminability defined", str(d["n_defined"]), f"mean {d['mean']:.2f}" if d["mean"] is not None else "–")
    counts.add_row("(no results)", str(result["unmatched"]), "")
    out.print(counts)
    for w in notes:
        warn(err, w)
