"""Item rows -> Label Studio task dicts (data + pre-annotations).

Why this shape: a reviewer must judge an item on what a benchmark user would see -- image(s),
hint, question, options -- plus what the text-only screening panel answered, so a suspicious
"nobody got it without the image" is visible. Pre-annotations (Label Studio "predictions")
pre-fill the suggested dimension and a "needs the image" guess so a reviewer confirms rather
than types; they are never counted as a reviewer's verdict.

Images travel as base64 data URIs when the pool is small (the task is self-contained, any
server shows it); a large pool goes through Label Studio's local-file storage rooted at the
workspace instead (the sqlite database stays small). Only files inside the workspace are
ever served: any other path is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import polars as pl

from annotation.config import DIMENSION, NEEDS_IMAGE, NO, TO_NAME, YES
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
    """What the text-only panel did with this item (image withheld), as a few plain lines."""
    lines = []
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


def prediction(row: dict[str, Any], taxonomy: Taxonomy) -> dict[str, Any] | None:
    """A Label Studio prediction pre-filling dimension and needs-image; None when we know neither."""
    result, scores = [], []
    dim = suggested_dimension(row, taxonomy)
    if dim is not None:
        result.append({"from_name": DIMENSION, "to_name": TO_NAME, "type": "choices", "value": {"choices": [dim]}})
        score = row.get("suggested_l2_score")
        scores.append(float(score) if isinstance(score, (int, float)) and not math.isnan(score) else 1.0)
    guess = needs_image_guess(row)
    if guess is not None:
        result.append({"from_name": NEEDS_IMAGE, "to_name": TO_NAME, "type": "choices", "value": {"choices": [guess[0]]}})
        scores.append(guess[1])
    if not result:
        return None
    return {"model_version": PREDICTION_MODEL, "score": round(sum(scores) / len(scores), 4), "result": result}


@dataclass(frozen=True)
class ImagePlan:
    """How images reach the reviewer: inline data URIs, or files under ``root/LOCAL_IMAGE_DIR``."""

    mode: Literal["inline", "local"]
    root: Path | None = None

    @property
    def image_dir(self) -> Path | None:
        return None if self.root is None else self.root / LOCAL_IMAGE_DIR


def plan_images(items: pl.DataFrame, mode: ImageMode = "auto", root: str | Path | None = None) -> ImagePlan:
    """Pick inline or local-file images for a pool (``auto``: inline up to ``INLINE_LIMIT_BYTES``)."""
    if mode == "auto":
        total = 0
        if "images" in items.columns and items.height:
            total = int(items.select(pl.col("images").list.eval(pl.element().struct.field("bytes").bin.size()).list.sum().sum()).item() or 0)
        mode = "inline" if total <= INLINE_LIMIT_BYTES or root is None else "local"
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


def review_stage(ws: Workspace) -> str:
    """The stage review reads: screened when present, else items."""
    return ws.newest(("screened", "items"))


def select_for_review(ws: Workspace) -> tuple[str, pl.DataFrame]:
    """(stage name, rows to review) from the newest of screened.parquet / items.parquet."""
    stage = review_stage(ws)
    table = ws.read(stage)
    return stage, table.filter(pl.Series(review_mask(table), dtype=pl.Boolean)) if table.height else table
