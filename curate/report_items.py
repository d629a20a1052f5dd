"""The audit report's item-statistics section (``audit --results FILES``; issue #18).

Kept apart from ``curate/report.py`` so the audit page grows by one call: suspect keys with each
model's answer, the discriminability histogram (inline SVG, like the other plots) and the shares
of items no model / every model solves. Input: ``summary["item_stats"]`` from
``curate.item_stats.audit_item_stats``.
"""

from __future__ import annotations

from typing import Any

from curate.report_html import esc, pct, pyplot, svg


def plot_discriminability(hist: list[dict], title: str = "Discriminability (point-biserial r: solving vs model accuracy)") -> str:
    """Bars over [-1, 1] in steps of 0.2: how many items discriminate, and how well."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    mids = [(h["lo"] + h["hi"]) / 2 for h in hist]
    counts = [h["n"] for h in hist]
    colors = ["#d9534f" if m < 0 else "#5b7db1" for m in mids]
    ax.bar(mids, counts, width=0.18, color=colors)
    for x, n in zip(mids, counts):
        if n:
            ax.annotate(str(n), (x, n), ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("discriminability (red: weaker models solve it more often than stronger ones)")
    ax.set_ylabel("items")
    ax.set_title(title, loc="left", fontsize=10)
    return svg(fig)


def _answers_cell(answers: dict[str, str | None], key: str | None) -> str:
    parts = []
    for model, letter in answers.items():
        cls = "ok" if letter == key else "no"
        parts.append(f"{esc(model)}: <span class={cls}>{esc(letter or '(none)')}</span>")
    return "<br>".join(parts)


def _options_cell(options: list | None, key: str | None, suspect: str | None) -> str:
    letters = "ABCDEFGHIJ"
    rows = []
    for letter, text in zip(letters, options or []):
        mark = " <b>(key)</b>" if letter == key else (" <b>(models)</b>" if letter == suspect else "")
        rows.append(f"{letter}. {esc(text)}{mark}")
    return "<br>".join(rows)


def item_stats_html(st: dict[str, Any]) -> str:
    """The section's HTML."""
    rule = st.get("rule", {})
    models = ", ".join(f"{esc(m)} {pct(a)}" for m, a in st.get("models", {}).items())
    s = [
        "<h2 id=item-stats>Item statistics from model results</h2>",
        f"<p class=muted>{st['n_items']} items with results of {st['n_models']} model(s) (accuracy: {models})"
        + (f"; {st['unmatched_items']} audited items have no result" if st.get("unmatched_items") else "") + ".</p>",
        "<div class=cards>",
        f"<div class=card><div class=v id=suspect-keys>{st['suspect_keys']['n']}</div><div class=l>suspect keys ({pct(st['suspect_keys']['share'])})</div></div>",
        f"<div class=card><div class=v id=no-model-solves>{pct(st['no_model_solves']['share'])}</div><div class=l>no model solves ({st['no_model_solves']['n']})</div></div>",
        f"<div class=card><div class=v id=every-model-solves>{pct(st['every_model_solves']['share'])}</div><div class=l>every model solves ({st['every_model_solves']['n']})</div></div>",
        "</div>",
        (
            "<p class=muted>Suspect key (a confident-learning style rule): with model accuracy as weight, the wrong option "
            "most models chose has a weighted share of at least max(q, the mean share keys get) "
            f"(q = {rule.get('q')}), at least {rule.get('min_agree')} models chose it, the best "
            f"{pct(rule.get('top'), 0)} of the models (at least one) all chose it, and the item has results of at least "
            f"{rule.get('min_models')} models. With few models the flag is a review queue, not a verdict: models of one family "
            "share their mistakes.</p>"
        ),
    ]
    d = st["discriminability"]
    if d["n_defined"]:
        s.append(f"<figure>{plot_discriminability(d['histogram'])}</figure>")
        s.append(f"<p class=muted>Defined for {d['n_defined']} of {st['n_items']} items (needs 3 models and an item some "
                 f"but not all solve); mean {d['mean']:.2f}.</p>")
    else:
        s.append("<p class=muted>Discriminability is undefined for every item (it needs results of at least 3 models).</p>")
    items = st.get("suspect_items") or []
    if items:
        rows = "".join(
            f"<tr><td>{esc(it['item_id'])}</td><td>{esc((it.get('question') or '')[:300])}</td>"
            f"<td>{_options_cell(it.get('options'), it.get('key'), it.get('suspect_answer'))}</td>"
            f"<td>{_answers_cell(it['answers'], it.get('key'))}</td><td>{esc(it['evidence'])}</td></tr>"
            for it in items
        )
        more = st["suspect_keys"]["n"] - len(items)
        s.append(f"<h3>Suspect keys{f' (the {len(items)} strongest; {more} more in item_stats)' if more > 0 else ''}</h3>"
                 f"<table id=suspect-table><tr><th>item</th><th>question</th><th>options</th><th>each model's answer</th><th>evidence</th></tr>{rows}</table>")
    for w in st.get("warnings") or []:
        s.append(f"<div class=warn>{esc(w)}</div>")
    return "".join(s)
