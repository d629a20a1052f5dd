"""``mmcurate audit``, ``mmcurate metrics`` and ``mmcurate difficulty``.

Thin commands: map flags, call ``curate.audit`` / ``curate.metrics``, print a rich summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from curate.cli._common import err, out, pct, print_json, warn
from curate.console import safe
from curate.errors import UserError


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)
    app.command("metrics")(metrics_cmd)
    app.command("difficulty")(difficulty_cmd)


def audit_cmd(
    sources: Annotated[list[Path], typer.Argument(help="Benchmark files (any format ingest reads), or one workspace folder.")],
    report: Annotated[Path, typer.Option("--report", "-r", help="Folder for report.html and summary.json (created).")],
    panel: Annotated[Optional[Path], typer.Option(help="Panel file (default: the shipped offline panel).")] = None,
    compare: Annotated[Optional[list[Path]], typer.Option(help="A second benchmark to show side by side (repeat for several files).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Audit only the first N items (a quick look).")] = None,
    sample: Annotated[Optional[int], typer.Option(help="Audit a seeded random sample of N items, stratified by source (an estimate with its interval, in minutes).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --sample.")] = 0,
    members: Annotated[Optional[str], typer.Option(help="Comma-separated panel members to use (default: all).")] = None,
    rules: Annotated[bool, typer.Option("--rules/--no-rules", help="Run the rule filters (leaks, duplicates, malformed).")] = True,
    title: Annotated[Optional[str], typer.Option(help="Report title.")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="SQLite response cache (default: one per user, shared by every workspace and audit: $MMCURATE_CACHE/responses.sqlite, else ~/.cache/mmcurate/responses.sqlite).")] = None,
    results: Annotated[Optional[list[Path]], typer.Option("--results", help="Model result files (VLMEvalKit .xlsx/.tsv, one per model; repeat the option): the report adds suspect keys, discriminability and the no-model/every-model shares.")] = None,
) -> None:
    """Screen a benchmark with a text-only panel and write an HTML report of how much is answerable blind."""
    from curate.audit import audit

    summary = audit(
        sources, panel=panel, report_dir=report, compare=compare, limit=limit,
        members=[m.strip() for m in members.split(",")] if members else None, rules=rules, title=title, sample=sample, seed=seed,
        cache_path=cache,
        **({"results": results} if results else {}),  # curate.audit.audit(results=...), issue #18
    )
    print_audit(summary, report)


def print_audit(summary: dict, report: Path) -> None:
    """The headline, notes, the per-source table and the lines on prompts, throughput, comparison and item statistics."""
    from curate.audit_summary import headline, pct_range, prompts_line
    from curate.throughput import projection_line, throughput_line

    if summary.get("sample"):
        smp = summary["sample"]
        out.print(f"a random sample of {smp['n']:,} of {smp['of']:,} items (stratified by source, seed {smp['seed']})")
    copies = summary.get("n_questions", summary["n_items"]) != summary["n_items"]
    if copies:
        out.print(f"{summary['n_items']:,} items hold {summary['n_questions']:,} distinct questions: copies of one question count once")
    out.print(f"[bold]{headline(summary)}[/]", highlight=False)
    for note in summary.get("notes") or []:
        out.print(f"note: {safe(note)}", highlight=False)
    table = Table(title="per source")
    for col in ("source", "items", "blind", "share", "expected by chance", "beyond chance", "95 % CI"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, g in summary["by_source"].items():
        bc = g.get("beyond_chance") or {}
        table.add_row(safe(name), str(g["n"]), str(g["k"]), pct(g["share"]), pct(bc.get("chance")), pct(bc.get("share")), pct_range(bc.get("lo"), bc.get("hi")))
    out.print(table)
    if prompts_line(summary):
        out.print(prompts_line(summary), highlight=False)
    for name, m in summary.get("members", {}).items():
        if m.get("throughput"):
            out.print(throughput_line(name, m["throughput"]), highlight=False)
    if summary.get("projection"):
        out.print(projection_line(summary["projection"]), highlight=False, soft_wrap=True)
    if summary.get("compare"):
        c = summary["compare"]
        out.print(f"compare: {c['left']['label']} {pct(c['left']['blind_share'])} vs {c['right']['label']} {pct(c['right']['blind_share'])}")
    if summary.get("item_stats"):
        st = summary["item_stats"]
        out.print(f"item statistics from {st['n_models']} model(s): {st['suspect_keys']['n']} suspect key(s), "
                  f"no model solves {pct(st['no_model_solves']['share'])}, every model solves {pct(st['every_model_solves']['share'])}")
    out.print(f"report: {safe(Path(report) / 'report.html')}  summary: {safe(Path(report) / 'summary.json')}")


def _parse_shots(pairs: list[str] | None) -> dict[str, int]:
    keys = {"v": "vision", "vision": "vision", "wv": "without_image", "without-image": "without_image", "t": "text_only", "text-only": "text_only"}
    shots: dict[str, int] = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if key.strip() not in keys or not value.strip().isdigit():
            raise UserError(f"--shots {pair!r}: expected RUN=N with RUN one of v, wv, t (e.g. --shots wv=0 --shots t=2)")
        shots[keys[key.strip()]] = int(value)
    return shots


def _load_items(path: Path | None):
    if path is None:
        return None
    from curate.workspace import Workspace, read_parquet_checked

    if path.is_dir():
        ws = Workspace(path)
        return ws.read(ws.newest())
    return read_parquet_checked(path)


def metrics_cmd(
    vision: Annotated[Optional[Path], typer.Option("--vision", help="Predictions of the LVLM with the image (S_v).")] = None,
    without_image: Annotated[Optional[Path], typer.Option("--without-image", help="Predictions of the same LVLM without the image (S_wv).")] = None,
    text_only: Annotated[Optional[Path], typer.Option("--text-only", help="Predictions of its LLM base, text only (S_t).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    option_text: Annotated[bool, typer.Option("--option-text", help="Extract answers with the option-text matcher (VLMEvalKit can_infer-like) instead of MMStar's rule.")] = False,
    shots: Annotated[Optional[list[str]], typer.Option("--shots", help="Shot setting of a run, RUN=N with RUN v, wv or t (repeatable). Otherwise read from a 'shots' column or the file name.")] = None,
    items: Annotated[Optional[Path], typer.Option("--items", help="Workspace folder or items parquet, for JSONL predictions without answers/options.")] = None,
) -> None:
    """MMStar's S_v, S_wv, S_t, multi-modal gain MG = S_v - S_wv and leakage ML = max(0, S_wv - S_t), in percent."""
    from curate.metrics import mg_ml
    from curate.results import read_predictions

    shot = _parse_shots(shots)
    ref = _load_items(items)
    runs = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key, path in (("vision", vision), ("without_image", without_image), ("text_only", text_only)):
            runs[key] = read_predictions(path, shots=shot.get(key), items=ref) if path else None
        report = mg_ml(**runs, matcher="option_text" if option_text else "mmstar")
    report.warnings[:0] = [str(w.message) for w in caught]
    if as_json:
        print_json(report.to_dict())
        for w in report.warnings:
            warn(err, w)
        return
    print_metrics(report)


def print_metrics(report) -> None:
    """The metrics per group (overall, category, dimension), the runs table, then the warnings on stderr."""
    cols = [k for k in ("S_v", "S_wv", "S_t", "MG", "ML") if k in report.overall]
    table = Table(title=f"MMStar metrics (%), matcher {report.matcher}, {report.n_items} items")
    table.add_column("group")
    table.add_column("n", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    table.add_row("[bold]overall[/]", str(report.n_items), *[f"[bold]{fmt(report.overall.get(c))}[/]" for c in cols])
    for title, groups in (("category", report.by_category), ("dimension", report.by_l2_category)):
        for name, row in groups.items():
            table.add_row(f"{title}: {safe(name)}", str(row["n"]), *[fmt(row.get(c)) for c in cols])
    out.print(table)
    files = Table(title="runs")
    for c in ("run", "file", "shots", "items", "unextractable"):
        files.add_column(c)
    for name, r in report.runs.items():
        files.add_row(safe(name), safe(r["file"]), "?" if r["shots"] is None else f"{r['shots']} ({r['shots_source']})", str(r["n"]), str(r["unextractable"]))
    out.print(files)
    for w in report.warnings:
        warn(err, w)


def difficulty_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder: the newest stage file gets n_solvers / n_models / difficulty columns.")],
    predictions: Annotated[list[Path], typer.Argument(help="Prediction files of the vision models (one file per model, with the image).")],
    option_text: Annotated[bool, typer.Option("--option-text", help="Use the option-text matcher instead of MMStar's rule.")] = False,
    source: Annotated[Optional[str], typer.Option(help="Match predictions to this source's items (when keyed by the source's own index).")] = None,
) -> None:
    """Bin items by how many vision models solve them (MMStar: easy 12-16, moderate 8-11, hard 4-7, tough 0-3 of 16)."""
    from curate.difficulty import write_difficulty
    from curate.results import read_predictions

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [read_predictions(p) for p in predictions]
        result = write_difficulty(workdir, runs, matcher="option_text" if option_text else "mmstar", source=source)
    table = Table(title=f"difficulty from {result['n_models']} model(s) -> {safe(result['path'])}")
    table.add_column("bin")
    table.add_column("items", justify="right")
    for name, n in result["bins"].items():
        table.add_row(name, str(n))
    table.add_row("(no predictions)", str(result["unmatched"]))
    out.print(table)
    for w in caught:
        warn(err, w.message)
