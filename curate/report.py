"""The audit report: one self-contained HTML file plus ``summary.json``.

Self-contained because reports get mailed, attached to reviews and opened on air-gapped
machines: CSS is inline, plots are inline SVG drawn by matplotlib's Agg/SVG backend (text as
paths, so no font or network is needed), and nothing is loaded from a CDN.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curate.audit_summary import headline, member_accuracy, prompts_line
from curate.report_html import esc, pct, pyplot, svg
from curate.schema import LETTERS
from curate.throughput import projection_line, throughput_line

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px} h2{font-size:1.25em;margin-top:2em;border-bottom:2px solid #e3e6eb;padding-bottom:4px}
h3{font-size:1.05em;margin-top:1.4em}
.muted{color:#667085;font-size:.92em}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{flex:1 1 180px;border:1px solid #e3e6eb;border-radius:8px;padding:12px 14px;background:#fafbfc}
.card .v{font-size:1.7em;font-weight:600} .card .l{color:#667085;font-size:.85em}
table{border-collapse:collapse;width:100%;margin:8px 0 16px;font-size:.92em}
th,td{border-bottom:1px solid #e9ecf0;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{display:inline-block;height:10px;background:#d9534f;border-radius:2px;vertical-align:middle}
.item{border:1px solid #e3e6eb;border-radius:8px;padding:10px 14px;margin:10px 0}
.item .q{font-weight:500;white-space:pre-wrap} .item ol{margin:6px 0 6px 4px;padding-left:22px}
.item li.key{font-weight:600;color:#1a7f37}
.ok{color:#1a7f37;font-weight:600} .no{color:#b42318}
.warn{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:10px 0}
figure{margin:8px 0} figure svg{max-width:100%;height:auto}
code{background:#f2f4f7;padding:1px 4px;border-radius:3px}
"""


#: Groups beyond this many are listed in the table only (a 65-bar chart is unreadable).
MAX_PLOT_GROUPS = 30


def _ci(ci: list | tuple | None) -> str:
    return "–" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %"


def _bc(g: dict[str, Any]) -> dict[str, Any]:
    """A share entry's ``beyond_chance`` object ({} when the table had no blind_chance)."""
    return g.get("beyond_chance") or {}


def _with_expected(groups: dict[str, dict]) -> dict[str, dict]:
    """Groups with ``expected``: the blind share chance alone gives with this panel (for the plots' tick)."""
    return {n: {**g, "expected": _bc(g).get("chance")} for n, g in groups.items()}


# ----------------------------------------------------------------------------------------
# plots (matplotlib, Agg, inline SVG)
# ----------------------------------------------------------------------------------------
def plot_shares(groups: dict[str, dict], title: str, *, chance_key: str = "expected", xlabel: str = "blind-answerable share",
                chance_label: str = "chance") -> str:
    """Horizontal bars: share per group with 95 % CI whiskers and the chance level as a tick."""
    plt = pyplot()
    names = list(groups)[::-1]
    shares = [groups[n]["share"] or 0.0 for n in names]
    lo = [max(0.0, s - (groups[n]["ci95"] or (s, s))[0]) for n, s in zip(names, shares)]
    hi = [max(0.0, (groups[n]["ci95"] or (s, s))[1] - s) for n, s in zip(names, shares)]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(names) + 1.0))
    ax.barh(range(len(names)), [100 * s for s in shares], xerr=[[100 * x for x in lo], [100 * x for x in hi]], color="#d9534f", ecolor="#444", capsize=2, height=0.6)
    chance = [groups[n].get(chance_key) for n in names]
    if any(c is not None for c in chance):
        ys = [i for i, c in enumerate(chance) if c is not None]
        ax.scatter([100 * chance[i] for i in ys], ys, marker="|", s=160, color="#1f4e99", zorder=3, label=chance_label)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_yticks(range(len(names)), [f"{n} (n={groups[n]['n']})" for n in names])
    ax.set_xlabel(xlabel + " (%)")
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlim(0, max(5.0, 100 * max((s + h) for s, h in zip(shares, hi)) * 1.15) if names else 100)
    return svg(fig)


def plot_histogram(hist: list[dict], title: str = "How many members answered right (without the image)") -> str:
    plt = pyplot()
    rows = [h for h in hist if h["hits"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    ax.bar([h["hits"] for h in rows], [h["items"] for h in rows], color="#5b7db1", width=0.7)
    for h in rows:
        ax.annotate(str(h["items"]), (h["hits"], h["items"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks([h["hits"] for h in rows])
    ax.set_xlabel("members with the right answer")
    ax.set_ylabel("items")
    ax.set_title(title, loc="left", fontsize=10)
    return svg(fig)


def plot_compare(left: dict[str, dict], right: dict[str, dict], labels: tuple[str, str], title: str) -> str:
    plt = pyplot()
    names = sorted(set(left) | set(right))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(names) + 1.0))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [100 * ((left.get(n) or {}).get("share") or 0) for n in names], height=0.38, color="#d9534f", label=labels[0])
    ax.barh([y - 0.2 for y in ys], [100 * ((right.get(n) or {}).get("share") or 0) for n in names], height=0.38, color="#5b7db1", label=labels[1])
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("blind-answerable share (%)")
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(title, loc="left", fontsize=10)
    return svg(fig)


# ----------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------
def _share_table(groups: dict[str, dict], first: str) -> str:
    rows = []
    for name, g in groups.items():
        bc = _bc(g)
        width = int(round(200 * (g["share"] or 0)))
        rows.append(
            f"<tr><td>{esc(name)}</td><td class=n>{g['n']}</td><td class=n>{g['k']}</td>"
            f"<td class=n>{pct(g['share'])}</td><td class=n>{_ci(g['ci95'])}</td>"
            f"<td class=n>{pct(bc.get('chance'))}</td><td class=n><b>{pct(bc.get('share'))}</b></td>"
            f"<td class=n>{_ci((bc['lo'], bc['hi']) if bc else None)}</td>"
            f"<td><span class=bar style='width:{width}px'></span></td></tr>"
        )
    return (
        f"<table><tr><th>{esc(first)}</th><th>items</th><th>blind</th><th>share</th><th>95 % CI</th>"
        f"<th>expected by chance</th><th>beyond chance</th><th>95 % CI</th><th></th></tr>{''.join(rows)}</table>"
    )


def _calibration_cell(r: dict[str, Any], has_panel: bool) -> str:
    """A member's margin and measured error rates, or "not calibrated" (``mmcurate panel calibrate`` writes them)."""
    cal = r.get("calibration")
    if not cal:
        return "not calibrated" if has_panel else "–"
    margin = "" if cal.get("margin") is None else f"margin {cal['margin']:.3g}" + (" (panel default)" if cal.get("margin_source") == "panel" else "")
    if not cal.get("calibrated"):
        return f"not calibrated<br><span class=muted>{margin}</span>" if margin else "not calibrated"
    return (
        f"{margin}<br>false hits {pct(cal.get('false_hit_rate'))} on vision-needed controls<br>"
        f"recall {pct(cal.get('recall'))} of MMLU control hits"
    )


def _member_table(members: dict[str, dict], models: dict[str, dict], has_panel: bool = False) -> str:
    rows = []
    for m, r in members.items():
        info = models.get(m, {})
        above = r.get("above_chance")
        verdict = "–" if above is None else ("<span class=no>answers blind above chance</span>" if above else "<span class=ok>not above chance</span>")
        comp = r.get("competence")
        if comp:
            ctl = f"{pct(comp.get('accuracy'))} ({pct(comp.get('ci_low'), 0)}–{pct(comp.get('ci_high'), 0)}) of {comp.get('n')}"
            ctl += " <span class=no>at chance</span>" if comp.get("at_chance") else " <span class=ok>above chance</span>"
        else:
            ctl = "–"
        counted = "" if r.get("counted") is None else ("yes" if r["counted"] else "<span class=no>no (at chance)</span>")
        acc = member_accuracy(r)
        bc = _bc(r)
        beyond = f"{pct(bc.get('share'))} ({_ci((bc['lo'], bc['hi']))})" if bc else "–"
        rows.append(
            f"<tr><td><b>{esc(m)}</b><br><span class=muted>{esc(info.get('model', ''))} {esc(info.get('method', ''))}"
            f"{' ' + str(info['shots']) + '-shot' if info.get('shots') is not None else ''}</span></td>"
            f"<td>{ctl}</td><td>{_calibration_cell(r, has_panel)}</td><td>{counted}</td>"
            f"<td class=n>{acc['n']}</td><td class=n>{acc['k']}</td><td class=n>{pct(acc['share'])}</td><td class=n>{_ci(acc['ci95'])}</td>"
            f"<td class=n>{pct(acc.get('chance_hit'))}</td><td class=n>{r['k']} ({pct(r['share'])})</td><td class=n>{beyond}</td>"
            f"<td class=n>{r.get('no_answer', 0)}</td><td>{verdict}</td></tr>"
        )
    return (
        "<table><tr><th>member</th><th>controls (MMLU, 95 % CI)</th><th>calibration</th><th>counted</th><th>items</th><th>right</th>"
        "<th>accuracy without image</th><th>95 % CI</th><th>chance</th><th>hits (toward blind)</th><th>hits beyond chance (95 % CI)</th>"
        "<th>no answer</th><th></th></tr>"
        f"{''.join(rows)}</table>"
    )


def _options_html(options: list | None, key: str | None) -> str:
    items = []
    for letter, text in zip(LETTERS, options or []):
        cls = " class=key" if letter == key else ""
        items.append(f"<li{cls}><b>{letter}.</b> {esc(text if text is not None else '(empty)')}{' ✓' if letter == key else ''}</li>")
    return f"<ol style='list-style:none'>{''.join(items)}</ol>"


def _top_items_html(items: list[dict]) -> str:
    out = []
    for it in items:
        answers = []
        for m, a in it["members"].items():
            mark = "ok" if a.get("hit") else "no"
            prob = f" (P(key) {a['prob']:.2f})" if a.get("prob") is not None else ""
            answers.append(f"<span class={mark}>{esc(m)}: {esc(a.get('answer') or 'no answer')}{' ✓' if a.get('hit') else ''}{prob}</span>")
        hint = f"<div class=muted>Hint: {esc(it['hint'])}</div>" if it.get("hint") else ""
        score = f"blind score {it['blind_score']:.2f}" if it.get("blind_score") is not None else None
        head = " · ".join(esc(x) for x in (it["item_id"], it.get("category"), score, f"{it.get('hits')} member(s) right", f"key {it.get('answer')}") if x)
        out.append(
            f"<div class=item><div class=muted>{head}</div>{hint}"
            f"<div class=q>{esc(it.get('question'))}</div>{_options_html(it.get('options'), it.get('answer'))}"
            f"<div>Answers without the image: {' · '.join(answers)}</div></div>"
        )
    return "".join(out)


def _rules_html(rules: dict[str, Any]) -> str:
    if not rules:
        return "<p class=muted>The rule filters did not run on this table.</p>"
    parts = []
    labels = {
        "answer_leak": "answer leaked into the question or hint",
        "near_duplicate": "near-duplicate questions",
        "duplicate_image": "duplicate images",
        "malformed": "malformed items",
    }
    rows = "".join(
        f"<tr><td>{esc(labels.get(c, c))} <code>{esc(c)}</code></td><td class=n>{v['flagged']}</td><td class=n>{pct(v.get('share'))}</td>"
        f"<td class=n>{v.get('dropping', '') if 'dropping' in v else ''}</td></tr>"
        for c, v in rules.items()
        if c != "rule_drop"
    )
    parts.append(f"<table><tr><th>check</th><th>flagged</th><th>share</th><th>of which drop</th></tr>{rows}</table>")
    if "rule_drop" in rules:
        parts.append(f"<p>{rules['rule_drop']['dropped']} of {rules['rule_drop']['n']} items would be dropped by the rule filters.</p>")
    for c, v in rules.items():
        if c == "rule_drop" or not v.get("examples"):
            continue
        ex = "".join(
            f"<tr><td>{esc(e['item_id'])}</td><td>{esc((e.get('question') or '')[:300])}</td><td>{esc(e.get('reason'))}</td></tr>"
            for e in v["examples"]
        )
        parts.append(f"<h3>{esc(labels.get(c, c))}: examples</h3><table><tr><th>item</th><th>question</th><th>evidence</th></tr>{ex}</table>")
    return "".join(parts)


def _compare_html(cmp: dict[str, Any]) -> str:
    a, b = cmp["left"], cmp["right"]
    la, lb = a.get("label") or "A", b.get("label") or "B"
    rows = [
        ("items", a["n_items"], b["n_items"]),
        ("blind-answerable share", pct(a["blind_share"]), pct(b["blind_share"])),
        ("95 % CI", _ci(a["ci95"]), _ci(b["ci95"])),
        ("blind-answerable beyond chance", pct(_bc(a).get("share")), pct(_bc(b).get("share"))),
        ("95 % CI (beyond chance)", _ci((_bc(a)["lo"], _bc(a)["hi"]) if _bc(a) else None), _ci((_bc(b)["lo"], _bc(b)["hi"]) if _bc(b) else None)),
        ("expected by chance", pct(_bc(a).get("chance")), pct(_bc(b).get("chance"))),
    ]
    for m in sorted(set(a["members"]) | set(b["members"])):
        rows.append((f"member {m}: accuracy without image", pct(a["members"].get(m)), pct(b["members"].get(m))))
    for c in sorted(set(a["rules"]) | set(b["rules"])):
        rows.append((f"rule {c}: flagged", a["rules"].get(c, "–"), b["rules"].get(c, "–")))
    body = "".join(f"<tr><td>{esc(r[0])}</td><td class=n>{esc(r[1])}</td><td class=n>{esc(r[2])}</td></tr>" for r in rows)
    html_parts = [f"<table><tr><th></th><th>{esc(la)}</th><th>{esc(lb)}</th></tr>{body}</table>"]
    right = cmp["right_summary"]
    if cmp.get("by_dimension"):
        left_groups = {k: {"share": v[0]} for k, v in cmp["by_dimension"].items()}
        right_groups = {k: {"share": v[1]} for k, v in cmp["by_dimension"].items()}
        html_parts.append(f"<figure>{plot_compare(left_groups, right_groups, (la, lb), 'Blind-answerable share per dimension')}</figure>")
    elif cmp.get("by_category"):
        left_groups = {k: {"share": v[0]} for k, v in cmp["by_category"].items()}
        right_groups = {k: {"share": v[1]} for k, v in cmp["by_category"].items()}
        html_parts.append(f"<figure>{plot_compare(left_groups, right_groups, (la, lb), 'Blind-answerable share per capability')}</figure>")
    if right.get("by_source"):
        html_parts.append(f"<h3>{esc(lb)} per source</h3>" + _share_table(right["by_source"], "source"))
    return "".join(html_parts)


def _headline_cards(summary: dict[str, Any]) -> list[str]:
    """The headline: blind-answerable beyond chance with its interval, the raw share beside it."""
    blind = summary["blind"]
    bc = summary.get("beyond_chance") or {}
    unit = "questions" if summary.get("n_questions", summary["n_items"]) != summary["n_items"] else "items"
    if bc:
        first = [
            f"<div class=card><div class=v id=beyond-chance>{pct(bc['share'])}</div><div class=l>blind-answerable beyond chance</div></div>",
            f"<div class=card><div class=v id=beyond-chance-ci>{_ci((bc['lo'], bc['hi']))}</div><div class=l>95 % interval (beyond chance)</div></div>",
        ]
        expected = (f"<div class=card><div class=v>{pct(bc['chance'])}</div><div class=l>expected by chance: this panel's own "
                    "answers, scored against a random key</div></div>")
    else:
        first = [("<div class=card><div class=v id=beyond-chance>–</div><div class=l>beyond chance: not available "
                  "(screened without blind_chance)</div></div>")]
        expected = ""
    return [
        "<div class=cards>",
        *first,
        (f"<div class=card><div class=v id=blind-share>{pct(blind['share'])}</div><div class=l>called blind by the panel, raw "
         f"({blind['k']} of {blind['n']} {unit}; 95 % CI {_ci(blind['ci95'])})</div></div>"),
        expected,
        f"<div class=card><div class=v>{pct(blind.get('chance_hit'))}</div><div class=l>chance of one guess (mean 1/options)</div></div>",
        "</div>",
        f"<p id=headline>{esc(headline(summary))}</p>",
    ]


def _model_time_html(summary: dict[str, Any]) -> str:
    """Prompts (rotation's extra ones), each member's model time and the projection to MMStar's scale."""
    parts = []
    prompts = prompts_line(summary)
    if prompts:
        parts.append(f"<p id=prompts>{esc(prompts)}</p>")
    parts += [f"<p>{esc(throughput_line(m, r['throughput']))}</p>" for m, r in summary.get("members", {}).items() if r.get("throughput")]
    if summary.get("projection"):
        parts.append(f"<p id=projection>{esc(projection_line(summary['projection']))}</p>")
    return "<h2>Prompts and model time</h2>" + "".join(parts) if parts else ""


def render_html(summary: dict[str, Any], *, title: str | None = None) -> str:
    """The report page for an audit summary (see :func:`curate.audit_summary.summarize`)."""
    title = title or f"Vision-dependence audit: {summary.get('label') or ', '.join(summary.get('sources', []))}"
    panel = summary.get("panel", {})
    models = panel.get("models", {})
    s = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f"<div class=muted>{summary['n_items']} items from {len(summary.get('sources', []))} source(s)"
        + (f" ({summary['n_questions']} distinct questions: copies of one question count once)"
           if summary.get("n_questions", summary["n_items"]) != summary["n_items"] else "")
        + (f" (a random sample of {summary['sample']['n']} of {summary['sample']['of']}, stratified by source, seed {summary['sample']['seed']})" if summary.get("sample") else "")
        + " · panel "
        f"{esc(panel.get('name') or '')} {('(' + esc(panel.get('hash')) + ')') if panel.get('hash') else ''} · "
        f"{esc(summary.get('blind_rule'))} · generated {esc(summary.get('generated'))} by mmcurate</div>",
        *_headline_cards(summary),
        ("<p class=muted>Beyond chance: the share of items blind for a reason, after removing the items the panel would "
         "call blind by luck -- each item's chance of a blind verdict if its key were a random option, from the members' "
         "own answers and hit rules (the classical correction for guessing, (B - E) / (1 - E), with a 95 % score interval).</p>"),
    ]
    for note in summary.get("notes") or []:
        s.append(f"<div class=warn>{esc(note)}</div>")
    members = summary["members"]
    at_chance = [m for m, r in members.items() if (r.get("competence") or {}).get("at_chance")]
    unmeasured = [m for m, r in members.items() if not r.get("competence")]
    if at_chance:
        s.append(
            f"<div class=warn id=at-chance>Member(s) {esc(', '.join(at_chance))} are at chance on text-answerable control "
            "questions: their hits are guesses, so the blind share they contribute is noise. Use stronger text-only "
            "models (or <code>at_chance = \"exclude\"</code> in the panel).</div>"
        )
    if unmeasured:
        s.append(
            f"<div class=warn id=unmeasured>No control-question competence is recorded for {esc(', '.join(unmeasured))}: "
            "a member that cannot answer text-only questions makes any blind share meaningless, so check it "
            "(panel <code>control_size</code>).</div>"
        )
    s.append("<h2>Blind-answerable share</h2><p class=muted>Bars: the share the panel called blind, with its 95 % "
             "interval; tick: the share chance alone gives with this panel. The tables give the share beyond chance.</p>")
    if len(summary.get("by_source", {})) > 0:
        s.append(f"<figure>{plot_shares(_with_expected(summary['by_source']), 'Per source', chance_label='expected by chance')}</figure>")
        s.append(_share_table(summary["by_source"], "source"))
    for key, label in (("by_category", "capability"), ("by_dimension", "dimension"), ("by_source_category", "source category"), ("by_n_options", "options")):
        groups = summary.get(key) or {}
        if not groups:
            continue
        s.append(f"<h3>Per {label}</h3>")
        if len(groups) <= MAX_PLOT_GROUPS:
            s.append(f"<figure>{plot_shares(_with_expected(groups), 'Per ' + label, chance_label='expected by chance')}</figure>")
        s.append(_share_table(groups, label))
    s.append(
        "<h2>Panel members</h2><p class=muted>Each member's accuracy on these questions without the image, against the "
        "chance of guessing; above chance means the member answers part of the benchmark without looking. A hit, which "
        "counts toward the blind verdict, can need more than a right answer: every rotation right, or the key winning "
        "after the member's letter bias is divided out. "
        "Controls: its accuracy on text-answerable questions, which shows whether its verdicts mean anything. "
        "Calibration: the margin its hits need and, when <code>mmcurate panel calibrate</code> measured them, its "
        "false-hit rate on questions that need the image and the share of its MMLU control hits it keeps.</p>"
    )
    accuracy = {m: member_accuracy(r) for m, r in summary["members"].items()}
    s.append(f"<figure>{plot_shares(accuracy, 'Accuracy without the image', chance_key='chance_hit', xlabel='accuracy')}</figure>")
    s.append(_member_table(summary["members"], models, has_panel=bool(models)))
    s.append(_model_time_html(summary))
    s.append(f"<h2>Hit-count histogram</h2><figure>{plot_histogram(summary['hit_histogram'])}</figure>")
    s.append("<h2>Rule-filter findings</h2>" + _rules_html(summary.get("rules", {})))
    ranked = "highest blind score first (mean calibrated probability of the key over the members), then most hits"
    if not any(it.get("blind_score") is not None for it in summary["top_items"]):
        ranked = "most members right first, then the most confident"
    s.append(f"<h2>Most blind-answerable items</h2><p class=muted>The {len(summary['top_items'])} items the panel was surest of "
             f"without the image ({ranked}).</p>")
    s.append(_top_items_html(summary["top_items"]))
    if summary.get("item_stats"):
        from curate.report_items import item_stats_html  # issue #18: audit --results

        s.append(item_stats_html(summary["item_stats"]))
    if summary.get("compare"):
        s.append("<h2>Side by side</h2>" + _compare_html(summary["compare"]))
    s.append("</main></body></html>")
    return "\n".join(s)


def write_report(summary: dict[str, Any], report_dir: str | Path, *, title: str | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``summary.json`` into ``report_dir``; returns their paths."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    html_path = report_dir / "report.html"
    json_path = report_dir / "summary.json"
    _atomic_text(html_path, render_html(summary, title=title))
    _atomic_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return {"html": html_path, "json": json_path}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
