"""``mmcurate suggest``, ``mmcurate balance`` and ``mmcurate export``: the last stages of MMStar's recipe."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from curate.cli._common import out, print_json, warn
from curate.console import log_console, safe


def register(app: typer.Typer) -> None:
    app.command("suggest")(suggest_cmd)
    app.command("balance")(balance_cmd)
    app.command("export")(export_cmd)


def suggest_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the classifier.")] = 0,
    cv: Annotated[bool, typer.Option("--cv", help="Also print the cross-validated accuracy (slower).")] = False,
) -> None:
    """Suggest MMStar's dimension (with a probability) for items whose source category does not map to one."""
    from curate.suggest import cross_validate_suggester, suggest_workspace

    with warnings.catch_warnings(record=True) as caught, out.status("training the dimension classifier"):
        warnings.simplefilter("always")
        stage, df = suggest_workspace(workdir, seed=seed)
        score = cross_validate_suggester(df, use_category=False, seed=seed) if cv else None
    counts = df.group_by("suggested_by").len().sort("len", descending=True)
    out.print(f"{stage}.parquet: suggestions added to {df.height} items: "
              + ", ".join(f"{n} from {safe(by)}" for by, n in counts.iter_rows()), highlight=False)
    for w in {str(w.message) for w in caught}:
        warn(out, w)
    if score is not None:
        out.print(f"cross-validated: {score}", highlight=False)


def balance_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    total: Annotated[int, typer.Option(help="Items to select, split equally over the 6 capabilities.")] = 1500,
    seed: Annotated[int, typer.Option(help="Tie-breaking seed; same input + seed = same selection.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 2) instead of printing a shortfall table.")] = False,
    source_cap: Annotated[float, typer.Option(help="Most items from one source: a fraction of --total (<= 1) or a count; 0 = no cap.")] = 0.5,
    replace: Annotated[Optional[str], typer.Option("--replace", metavar="ITEM_ID", help="Replace one rejected item of balanced.parquet (same capability and difficulty).")] = None,
    allow_no_image: Annotated[bool, typer.Option("--allow-no-image", help="Also select items without any image (never by default).")] = False,
    prefer_discriminative: Annotated[bool, typer.Option("--prefer-discriminative/--no-prefer-discriminative", help="Within a cell, take items with higher discriminability first (when item-stats added it); never changes a quota.")] = True,
    keep_ranking: Annotated[Optional[list[Path]], typer.Option("--keep-ranking", metavar="RESULT_FILE", help="VLMEvalKit result file (repeat the option, or give a folder of them): choose each cell's items so the models rank as on the full pool; reports Kendall's tau.")] = None,
    option_text: Annotated[bool, typer.Option("--option-text", help="--keep-ranking: extract answers with the option-text matcher instead of MMStar's rule (as in `mmcurate metrics`).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (counts, shortfall, warnings) instead of tables.")] = False,
) -> None:
    """Select a balanced set from the newest of reviewed / screened / items into WORKDIR/balanced.parquet.

    Suspect keys (`mmcurate item-stats`) that no reviewer cleared are left out (ledger reason suspect_key).
    """
    from curate.balance import balance_workspace, replace_in_workspace

    cap = None if source_cap == 0 else (int(source_cap) if source_cap > 1 else source_cap)
    if replace:
        rep = replace_in_workspace(workdir, replace, seed=seed, source_cap=cap, allow_no_image=allow_no_image,
                                   prefer_discriminative=prefer_discriminative)
        if as_json:
            print_json({"removed": rep.removed, "added": rep.added, "selected": rep.selected.height,
                        "output": f"{workdir}/balanced.parquet"}, ensure_ascii=True)
        else:
            out.print(f"replaced {safe(rep.removed)} with {safe(rep.added)} in {safe(workdir)}/balanced.parquet", highlight=False)
        return
    with (log_console(stderr=True) if as_json else out).status("solving the selection (HiGHS)"):  # stdout: only the JSON
        res = balance_workspace(workdir, total=total, seed=seed, strict=strict, source_cap=cap, allow_no_image=allow_no_image,
                                prefer_discriminative=prefer_discriminative, keep_ranking=result_files(keep_ranking),
                                matcher="option_text" if option_text else "mmstar")
    if as_json:
        print_json(balance_summary(res, workdir))
    else:
        print_balance(res, workdir, out)


#: Result-file endings a --keep-ranking folder is searched for (VLMEvalKit's result files).
RESULT_SUFFIXES = (".xlsx", ".tsv", ".csv", ".jsonl")


def result_files(given: list[Path] | None) -> list[Path] | None:
    """``--keep-ranking`` values: files as given, a folder as its result files in name order."""
    if not given:
        return None
    from curate.errors import UserError

    files: list[Path] = []
    for p in given:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RESULT_SUFFIXES)
            if not found:
                raise UserError(f"--keep-ranking {p}: the folder holds no result file ({', '.join(RESULT_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"--keep-ranking {p}: no such file or folder")
    return files


def print_balance(res, workdir, console: Console) -> None:
    """Counts per capability / dimension, warnings and the shortfall table (CLI, `run` and `demo`)."""
    if res.suggested:
        console.print("some items had no dimension: suggested ones were used (run `mmcurate suggest` to keep them)")
    console.print(_counts(res.selected))
    for w in res.warnings:
        warn(console, w)
    if res.shortfall.height:
        console.print(_shortfall(res.shortfall))
    suspect = getattr(res, "suspect_excluded", None)
    if suspect:
        console.print(f"{suspect} items left out: item-stats flagged their key and no reviewer cleared it "
                      f"(ledger reason suspect_key; `mmcurate status {safe(workdir)} --rows`)", highlight=False)
    ranking = getattr(res, "ranking", None)
    if ranking:
        console.print(_ranking(ranking))
    console.print(f"{res.selected.height} items from {res.input_stage}.parquet -> {safe(workdir)}/balanced.parquet", highlight=False)


def balance_summary(res, workdir) -> dict:
    """``balance --json``: what print_balance shows, as one object (shortfall rows: dimension null = capability total).

    ``suspect_key_excluded`` appears when the input has item-stats columns, ``ranking`` with --keep-ranking.
    """
    counts = res.selected.group_by("category", "l2_category", maintain_order=True).len()
    out = {
        "selected": res.selected.height,
        "input_stage": res.input_stage,
        "output": f"{workdir}/balanced.parquet",
        "suggested": bool(res.suggested),
        "by_dimension": [{"category": c, "l2_category": d, "items": n} for c, d, n in counts.iter_rows()],
        "shortfall": res.shortfall.to_dicts(),
        "warnings": list(res.warnings),
    }
    if getattr(res, "suspect_excluded", None) is not None:
        out["suspect_key_excluded"] = res.suspect_excluded
    if getattr(res, "ranking", None) is not None:
        out["ranking"] = res.ranking
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x + 0.0:+.3f}" if abs(x) >= 5e-4 else "+0.000"


def _ranking(r: dict) -> Table:
    """Per model: accuracy on the full pool, on the selection, the difference (and the plain selection's)."""
    base = r.get("baseline") or {}
    tau = "-" if r.get("tau") is None else f"{r['tau']:.3f}"
    btau = "-" if base.get("tau") is None else f"{base['tau']:.3f}"
    t = Table(title=f"model ranking kept: Kendall's tau {tau} (same quotas without --keep-ranking: {btau}) over "
                    f"{r.get('selected_with_results')} selected of {r.get('full_set')} candidates with results")
    for c in ("model", "full", "selected", "diff", "diff without"):
        t.add_column(c, justify="left" if c == "model" else "right")
    full, sub, diff = r.get("accuracy_full") or {}, r.get("accuracy_subset") or {}, r.get("accuracy_diff") or {}
    bdiff = base.get("accuracy_diff") or {}
    for m in sorted(full, key=lambda m: -(full[m] or 0)):
        t.add_row(safe(m), "-" if full[m] is None else f"{full[m]:.3f}",
                  "-" if sub.get(m) is None else f"{sub[m]:.3f}", _fmt(diff.get(m)), _fmt(bdiff.get(m)))
    return t


def _counts(df) -> Table:
    t = Table(title="selected per capability / dimension")
    for c in ("capability", "dimension", "items"):
        t.add_column(c, justify="right" if c == "items" else "left")
    for cap, dim, n in df.group_by("category", "l2_category", maintain_order=True).len().iter_rows():
        t.add_row(safe(cap), safe(dim), str(n))
    return t


def _shortfall(df) -> Table:
    t = Table(title="shortfall (not enough candidates)", title_style="yellow")
    for c in df.columns:
        t.add_column(c, justify="right" if c in ("wanted", "available", "chosen") else "left")
    for row in df.iter_rows():
        t.add_row(*["(total)" if v is None else safe(v) for v in row])
    return t


def export_cmd(
    workdir: Annotated[Path, typer.Argument(help="Workspace folder.")],
    to: Annotated[Path, typer.Option("--to", help="Export folder (must not exist unless --overwrite).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="hf | parquet | tsv | jsonl")] = "hf",
    stage: Annotated[Optional[str], typer.Option(help="Stage to export: balanced, reviewed, screened, items (default: newest).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export folder.")] = False,
    license: Annotated[Optional[str], typer.Option("--license", help="Licence field of the dataset card (default: other).")] = None,
    license_name: Annotated[Optional[str], typer.Option("--license-name", help="Card's license_name when the licence is 'other' (default: source-benchmark-terms).")] = None,
    license_link: Annotated[Optional[str], typer.Option("--license-link", help="Card's license_link: a URL or a file in the export (default: a LICENSE.md listing the sources).")] = None,
    profile: Annotated[str, typer.Option("--profile", help="default (every column) | mmstar (MMStar's Hub layout, for lmms-eval's mmstar task; hf/parquet only).")] = "default",
    multi_image: Annotated[str, typer.Option("--multi-image", help="mmstar profile, items with several images: refuse | first (keep the first) | concat (tile side by side).")] = "refuse",
    allow_no_image: Annotated[bool, typer.Option("--allow-no-image", help="Export items without an image (a text-only set).")] = False,
    allow_uncategorized: Annotated[bool, typer.Option("--allow-uncategorized", help="TSV: write items without category / l2-category as 'uncategorized'.")] = False,
    ignore_check: Annotated[bool, typer.Option("--ignore-check", help="Export even when the release check (mmcurate check) finds errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object {written, path, format, profile, items, problems, ...}.")] = False,
) -> None:
    """Export a stage as a Hugging Face dataset, parquet, a VLMEvalKit TSV or JSONL, images embedded.

    The release check runs first: a set with errors is not written unless --ignore-check.
    """
    from curate.check import CheckResult
    from curate.cli.check import print_check
    from curate.export import ExportRefused, export_release

    card = {k: v for k, v in (("license", license), ("license_name", license_name), ("license_link", license_link)) if v}
    try:
        with out.status(f"checking and exporting ({fmt}, profile {profile})"):
            res = export_release(workdir, to, fmt=fmt, profile=profile, stage=stage, overwrite=overwrite, card_info=card,
                                 multi_image=multi_image, allow_no_image=allow_no_image,
                                 allow_uncategorized=allow_uncategorized, ignore_check=ignore_check)
    except ExportRefused as exc:  # the summary or the problem table, then the one error line (exit 2)
        if as_json:
            print_json(exc.result.as_dict())
        else:
            print_check(CheckResult(f"{workdir}/{exc.result.stage}.parquet", exc.result.items, list(exc.result.problems)))
        raise
    if as_json:
        print_json(res.as_dict())
    else:
        print_export(res, fmt, profile)


def print_export(res, fmt: str, profile: str) -> None:
    """The warnings (and errors --ignore-check let through), the multi-image note and where the export went."""
    for p in res.problems:
        label = "[yellow]warning:[/]" if p.severity == "warning" else "[red]ignored error (--ignore-check):[/]"
        out.print(f"{label} {p.code}: {safe(p.message)}", highlight=False, soft_wrap=True)
    out.print(f"multi-image items: {safe(res.notes[0])}", highlight=False)
    out.print(f"{res.stage}.parquet -> {safe(res.path)} ({fmt}, profile {profile}, {res.items} items, dataset card in "
              f"{safe(res.path)}/README.md)", highlight=False)
