"""Item rows -> Label Studio task dicts (data + pre-annotations).

Why this shape: a reviewer must judge an item on what a benchmark user would see -- image(s),
hint, question, options -- plus what the text-only screening panel answered, so a suspicious
"nobody got it without the image" is visible. The only pre-annotation (Label Studio
"prediction") is the suggested dimension, with the suggester's real probability. The questions
that decide an item ("needs the image", "key right") are NEVER pre-filled: items reach review
because the panel mostly failed them, so a pre-filled "yes" would be accepted by a reviewer
pressing submit on an untouched task. The panel's hit share is shown as evidence instead.

Items whose key the vision models doubt (``suspect_key`` from ``mmcurate item-stats``) carry the
evidence (``suspect_evidence``) right under the options, beside the marked key, and in the task data
field ``suspect_evidence`` (present only on such tasks: it records that the reviewer was shown it).
The reviewer answers the existing "is the key right?" question (k / x); ``annotation.verdicts``
turns that answer into ``review_key_confirmed``. No new control, so the labeling config (v2) is
unchanged and projects made before item-stats existed keep working.

Images travel as base64 data URIs when the pool is small (the task is self-contained, any
server shows it); a large pool goes through Label Studio's local-file storage rooted at the
workspace instead (the sqlite database stays small). Only files inside the workspace are
ever served: any other path is refused.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import polars as pl

from annotation.config import DIMENSION, LETTER_CHOICES, NO, TO_NAME, YES
from curate.errors import UserError
from curate.schema import ITEM_SCHEMA, LETTERS
from curate.taxonomy import Taxonomy, default_taxonomy
from curate.workspace import Workspace

ImageMode = Literal["auto", "inline", "local"]
#: ``auto`` inlines images while the whole pool's image bytes stay under this.
INLINE_LIMIT_BYTES = 64 * 1024 * 1024
#: Folder (inside the workspace) local-file mode writes images to; registered as LS storage.
LOCAL_IMAGE_DIR = "review_images"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
PREDICTION_MODEL = "mmcurate-suggest-v1"
#: A survivor is guessed to need the image when at most this share of the panel hit it blind.
NEEDS_IMAGE_MAX_HIT_SHARE = 0.25
SUGGESTED_COLUMN = "suggested_l2_category"

#: Screening per-member answer columns, e.g. ``answer_smollm2`` or ``smollm2_answer``.
_MEMBER_COLUMN = re.compile(r"^answer__(?P<a>.+)$")  # filters.screen: answer__<member>, hit__<member>
_KNOWN_COLUMNS = set(ITEM_SCHEMA) | {"hits", "n_members", "blind", "rule_drop", SUGGESTED_COLUMN}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"GIF87a", "image/gif", "gif"),
    (b"GIF89a", "image/gif", "gif"),
    (b"BM", "image/bmp", "bmp"),
)


def image_mime(data: bytes) -> tuple[str, str]:
    """(MIME type, file extension) from the leading bytes; PNG for anything unrecognised."""
    for magic, mime, ext in _MAGIC:
        if data.startswith(magic):
            return mime, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return "image/png", "png"


def data_uri(data: bytes) -> str:
    mime, _ = image_mime(data)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def local_file_url(path: str | Path, root: str | Path) -> str:
    """The Label Studio URL serving ``path`` from local-file storage rooted at ``root``.

    Refuses (``UserError``) any path that resolves outside ``root`` -- including through ``..``
    or a symlink -- so a task can never expose a file beyond the workspace.
    """
    root = Path(root).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise UserError(f"{path}: image path is outside the workspace {root}; only files inside it are served to Label Studio")
    if not resolved.is_file():
        raise UserError(f"{path}: image file does not exist")
    return LOCAL_FILES_PREFIX + quote(resolved.relative_to(root).as_posix(), safe="/")


def options_text(options: list[str] | None, answer: str | None) -> str:
    """``A. ...`` one per line, the key marked so the reviewer checks it, not hunts for it."""
    lines = []
    for letter, text in zip(LETTERS, options or []):
        mark = "   <-- KEY" if letter == (answer or "").strip().upper() else ""
        lines.append(f"{letter}. {text}{mark}")
    return "\n".join(lines)


def member_columns(columns: list[str]) -> dict[str, str]:
    """``{member name: column}`` of the screening panel's per-member answer columns."""
    found = {}
    for col in columns:
        if col in _KNOWN_COLUMNS or col.startswith(("review_", "suggested_")):
            continue
        m = _MEMBER_COLUMN.match(col)
        if m:
            found[m.group("a")] = col
    return found


def evidence_text(row: dict[str, Any], members: dict[str, str]) -> str:
    """What the text-only panel did with this item (image withheld), as a few plain lines
    (plus the suspect-key evidence when item-stats flagged the key)."""
    lines = []
    doubt = suspect_evidence(row)
    if doubt:
        lines.append(f"Suspect key: {doubt}.")
    hits, n = row.get("hits"), row.get("n_members")
    if hits is not None and n:
        lines.append(f"{hits} of {n} text-only panel members answered correctly without the image.")
    for name, col in members.items():
        value = row.get(col)
        if value is not None and value != "":
            hit = row.get(f"hit__{name}")
            lines.append(f"{name}: {value}" + (" (correct)" if hit else " (wrong)" if hit is not None else ""))
    return "\n".join(lines) if lines else "No screening evidence (items were not screened)."


def suggested_dimension(row: dict[str, Any], taxonomy: Taxonomy) -> str | None:
    """The item's own dimension when known, else the classifier's suggestion; only valid names."""
    known = {d.name for d in taxonomy.dimensions}
    for key in ("l2_category", SUGGESTED_COLUMN):
        value = row.get(key)
        if value in known:
            return value
    return None


def needs_image_guess(row: dict[str, Any]) -> tuple[str, float] | None:
    """("yes"|"no", confidence) from the panel's hit share, or None without screening columns."""
    hits, n = row.get("hits"), row.get("n_members")
    if hits is None or not n:
        return None
    share = float(hits) / float(n)
    return (YES if share <= NEEDS_IMAGE_MAX_HIT_SHARE else NO), round(1.0 - share, 4)


def suggested_score(row: dict[str, Any]) -> float | None:
    """The suggester's own probability for its dimension, or None when it gave none (never a made-up 1.0)."""
    score = row.get("suggested_l2_score")
    if isinstance(score, (int, float)) and not math.isnan(score):
        return round(float(score), 4)
    return None


def prediction(row: dict[str, Any], taxonomy: Taxonomy) -> dict[str, Any] | None:
    """A Label Studio prediction pre-filling ONLY the suggested dimension; None without a suggestion.

    An item's own ``l2_category`` (from its source benchmark) is suggested without a score; a
    classifier's suggestion carries its probability (``suggested_l2_score``).
    """
    dim = suggested_dimension(row, taxonomy)
    if dim is None:
        return None
    pred: dict[str, Any] = {"model_version": PREDICTION_MODEL, "result": [{"from_name": DIMENSION, "to_name": TO_NAME, "type": "choices", "value": {"choices": [dim]}}]}
    score = suggested_score(row) if row.get("l2_category") != dim else None
    if score is not None:
        pred["score"] = score
    return pred


# -- what the reviewer reads (HTML fragments rendered by HyperText) -------------------------------
def images_html(urls: list[str]) -> str:
    """The item's images side by side, each captioned with its number (``Image 1`` ...)."""
    if not urls:
        return '<div class="mmc-imgs"><em>This item has no image.</em></div>'
    figs = [f"<figure><figcaption>Image {i}</figcaption>{_picture(u, i)}</figure>" for i, u in enumerate(urls, 1)]
    return '<div class="mmc-imgs">' + "".join(figs) + "</div>"


def _picture(url: str, number: int) -> str:
    """An ``<img>`` for a served file; a CSS background for a ``data:`` URI.

    Why two forms: Label Studio's HTML sanitiser drops ``data:`` from ``src`` but keeps ``style``,
    so inline images (a team server that cannot read the workspace) still show.
    """
    if url.startswith("data:"):
        return f'<div class="mmc-bg" role="img" aria-label="Image {number}" style="background-image: url(&quot;{url}&quot;)"></div>'
    return f'<img src="{html.escape(url, quote=True)}" alt="Image {number}"/>'


def hint_html(hint: str | None) -> str:
    """The hint in a box, or nothing at all when the item has none (no empty "Hint" header)."""
    hint = (hint or "").strip()
    return f'<div class="mmc-hint"><b>Hint:</b> {html.escape(hint)}</div>' if hint else ""


#: Shown instead of the evidence when an item is flagged but item-stats left no text.
SUSPECT_FALLBACK = "the vision models' answers disagree with this key"
#: Inline styles (the config's CSS is part of its version contract; Label Studio's sanitiser keeps ``style``).
_SUSPECT_TAG_STYLE = "background: #b71c1c;"
_SUSPECT_BOX_STYLE = "background: #fdecea; border: 1px solid #b71c1c;"


def suspect_evidence(row: dict[str, Any]) -> str | None:
    """The suspect-key evidence to show for ``row``; None when the key is not suspect (or unknown)."""
    if row.get("suspect_key") is not True:
        return None
    text = str(row.get("suspect_evidence") or "").strip()
    return text or SUSPECT_FALLBACK


def options_html(options: list[str] | None, answer: str | None, suspect: str | None = None) -> str:
    """The options as a list; the key's line highlighted and tagged "KEY" at its start, not lost at the end.

    ``suspect``: the evidence against the key (``suspect_evidence``). The key's line is then also
    tagged "DOUBTED" and the evidence follows the list, so the reviewer reads it beside the key
    before answering "is the key right?". Without it the output is exactly the plain list.
    """
    key = (answer or "").strip().upper()
    lines = []
    for letter, text in zip(LETTERS, options or []):
        is_key = letter == key
        tag = '<span class="mmc-keytag">KEY</span>' if is_key else ""
        if is_key and suspect:
            tag += f'<span class="mmc-keytag mmc-doubted" style="{_SUSPECT_TAG_STYLE}">DOUBTED</span>'
        cls = ' class="mmc-key"' if is_key else ""
        lines.append(f"<li{cls}><b>{letter}.</b> {html.escape(str(text))}{tag}</li>")
    out = '<ul class="mmc-opts">' + "".join(lines) + "</ul>"
    if suspect:
        out += (f'<div class="mmc-hint mmc-suspect" style="{_SUSPECT_BOX_STYLE}"><b>Is the key wrong?</b> '
                f"{html.escape(suspect)}. Check it before answering (k keeps the key, x marks it wrong).</div>")
    return out


def letter_choices(options: list[str] | None) -> list[dict[str, str]]:
    """This item's own option letters as Label Studio dynamic choices, each with its lower-case hotkey."""
    return [{"value": letter, "hotkey": letter.lower()} for letter in LETTERS[: len(options or [])]]


def evidence_html(row: dict[str, Any], members: dict[str, str], suggestion: str | None, score: float | None) -> str:
    """The evidence column: panel answers without the image, vision-model solves, the suggested dimension."""
    parts = ['<div class="mmc-ev"><b>Evidence (suggestions only; you decide)</b>']
    hits, n = row.get("hits"), row.get("n_members")
    if hits is not None and n:
        parts.append(f"<div>{hits} of {n} text-only panel members answered correctly <b>without the image</b>.</div>")
    rows = []
    for name, col in members.items():
        value = row.get(col)
        if value is None or value == "":
            continue
        hit = row.get(f"hit__{name}")
        mark = '<span class="mmc-hit">correct</span>' if hit else '<span class="mmc-miss">wrong</span>' if hit is not None else ""
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value))}</td><td>{mark}</td></tr>")
    if rows:
        parts.append("<table><tr><th>panel member</th><th>answered</th><th></th></tr>" + "".join(rows) + "</table>")
    if hits is None and not rows:
        parts.append("<div>Not screened: no text-only panel answers.</div>")
    solvers, n_models = row.get("n_solvers"), row.get("n_models")
    if solvers is not None and n_models:
        diff = row.get("difficulty")
        parts.append(f"<div>Solved by {solvers} of {n_models} vision models" + (f" ({html.escape(str(diff))})" if diff else "") + ".</div>")
    if suggestion:
        prob = f" (suggester's probability {score:.2f})" if score is not None else " (the source benchmark's label)"
        parts.append(f"<div>Suggested dimension: <b>{html.escape(suggestion)}</b>{prob}</div>")
    parts.append("</div>")
    return "".join(parts)


@dataclass(frozen=True)
class ImagePlan:
    """How images reach the reviewer: inline data URIs, or files under ``root/LOCAL_IMAGE_DIR``."""

    mode: Literal["inline", "local"]
    root: Path | None = None

    @property
    def image_dir(self) -> Path | None:
        return None if self.root is None else self.root / LOCAL_IMAGE_DIR


def plan_images(items: pl.DataFrame, mode: ImageMode = "auto", root: str | Path | None = None) -> ImagePlan:
    """Pick inline or local-file images for a pool.

    ``auto`` serves files from the workspace whenever our local server runs for it (`review
    serve`): the sqlite database stays small and the page loads each image once. Otherwise
    (a team server that cannot read the workspace) images travel inline as ``data:`` URIs, which
    the page shows as CSS backgrounds (Label Studio's sanitiser drops ``data:`` in ``src``).
    ``INLINE_LIMIT_BYTES`` is kept for callers.
    """
    if mode == "auto":
        from annotation.server import recorded_url

        mode = "local" if root is not None and recorded_url(root) else "inline"
    if mode == "local":
        if root is None:
            raise UserError("local-file images need the workspace folder (root) to serve them from")
        return ImagePlan("local", Path(root).resolve())
    if mode != "inline":
        raise UserError(f"image mode {mode!r}: expected one of auto, inline, local")
    return ImagePlan("inline")


def _image_value(image: dict[str, Any], plan: ImagePlan, item_id: str) -> str:
    data = image.get("bytes")
    if plan.mode == "inline":
        if not data:
            raise UserError(f"item {item_id}: an image has no embedded bytes (re-run ingest, or push with --images local)")
        return data_uri(data)
    assert plan.root is not None and plan.image_dir is not None
    if not data:  # no bytes: serve the original file, but only from inside the workspace
        if not image.get("path"):
            raise UserError(f"item {item_id}: an image has neither bytes nor a path")
        return local_file_url(image["path"], plan.root)
    digest = image.get("sha256") or hashlib.sha256(data).hexdigest()
    target = plan.image_dir / f"{digest}.{image_mime(data)[1]}"
    if not target.is_file():
        plan.image_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return local_file_url(target, plan.root)


def item_to_task(row: dict[str, Any], plan: ImagePlan, *, members: dict[str, str] | None = None, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """One item row (a dict of the stage table) -> one Label Studio task dict."""
    tax = taxonomy or default_taxonomy()
    item_id = row["item_id"]
    data = {
        "item_id": item_id,
        "source": row.get("source") or "",
        "images": [_image_value(img, plan, item_id) for img in (row.get("images") or [])],
        "hint": row.get("hint") or "",
        "question": row.get("question") or "",
        "options_text": options_text(row.get("options"), row.get("answer")),
        "key": (row.get("answer") or "").strip().upper(),
        "n_options": len(row.get("options") or []),
        "evidence": evidence_text(row, members or {}),
    }
    dim = suggested_dimension(row, tax)
    doubt = suspect_evidence(row)
    if doubt:
        data["suspect_evidence"] = doubt  # what the reviewer was shown (verdicts: review_key_confirmed)
    data.update(
        images_html=images_html(data["images"]),
        hint_html=hint_html(row.get("hint")),
        options_html=options_html(row.get("options"), row.get("answer"), doubt),
        evidence_html=evidence_html(row, members or {}, dim, suggested_score(row) if dim and dim != row.get("l2_category") else None),
        item_id_html=f'<div class="mmc-id">item {html.escape(str(item_id))}</div>',
        **{LETTER_CHOICES: letter_choices(row.get("options"))},
    )
    task: dict[str, Any] = {"data": data}
    pred = prediction(row, tax)
    if pred is not None:
        task["predictions"] = [pred]
    return task


def iter_tasks(items: pl.DataFrame, plan: ImagePlan, *, taxonomy: Taxonomy | None = None) -> Iterator[dict[str, Any]]:
    """Tasks for every row of ``items``, in table order (streams: one row's images in memory at a time)."""
    members = member_columns(items.columns)
    tax = taxonomy or default_taxonomy()
    for row in items.iter_rows(named=True):
        yield item_to_task(row, plan, members=members, taxonomy=tax)


def task_size(task: dict[str, Any]) -> int:
    """Approximate JSON payload size of a task in bytes (for byte-bounded import batches)."""
    return len(json.dumps(task, ensure_ascii=False))


def review_mask(stage: pl.DataFrame) -> list[bool]:
    """Which rows go to review: all of items.parquet; of screened.parquet those screened as not
    blind (``blind == False``; a null -- screening failed for the item -- never goes) and not
    rule-dropped."""
    expr = pl.lit(True)
    if "blind" in stage.columns:
        expr = expr & (pl.col("blind").fill_null(True) == False)  # noqa: E712
    if "rule_drop" in stage.columns:
        expr = expr & (pl.col("rule_drop").fill_null(False) != True)  # noqa: E712
    return stage.with_columns(expr.alias("__review_mask"))["__review_mask"].to_list() if stage.height else []


#: Stages a review can be pushed from: the screened pool (default), or the balanced selection
#: (MMStar reviewed its final picks; a rejected pick is swapped by `balance --replace` and pushed alone).
REVIEW_STAGES = ("screened", "items", "balanced")


def review_stage(ws: Workspace, stage: str | None = None) -> str:
    """The stage review reads: ``stage`` when given, else screened when present, else items."""
    if stage is None:
        return ws.newest(("screened", "items"))
    if stage not in REVIEW_STAGES:
        raise UserError(f"--stage {stage!r}: expected one of {', '.join(REVIEW_STAGES)}")
    if not ws.has(stage):
        raise UserError(f"--stage {stage}: {ws.path(stage)} does not exist")
    return stage


def select_for_review(ws: Workspace, stage: str | None = None) -> tuple[str, pl.DataFrame]:
    """(stage name, rows to review) from ``stage`` (default: the newest of screened / items)."""
    stage = review_stage(ws, stage)
    table = ws.read(stage)
    return stage, table.filter(pl.Series(review_mask(table), dtype=pl.Boolean)) if table.height else table
