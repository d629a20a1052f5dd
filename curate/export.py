"""Export: the items table -> a Hugging Face dataset, parquet, a VLMEvalKit TSV or JSONL.

Every format embeds the image bytes (never paths), so an export still loads after the
workspace and the source images are gone -- ``Dataset.to_parquet`` keeps only paths for
images given by path, which is why the Image column is built from bytes here.

An export is written into a temporary folder beside ``to`` and renamed into place at the
end: an error leaves the old export (or nothing) behind, never a half-written one. An
existing, non-empty ``to`` is an error unless ``overwrite=True``.

Layouts (``name`` defaults to the folder's name):

* ``hf``: ``dataset_dict.json`` + ``<split>/`` (``DatasetDict.save_to_disk``: load with
  ``datasets.load_from_disk(to)``) and ``data/<split>-0000i-of-0000n.parquet`` (load with
  ``load_dataset("parquet", data_files=...)`` or ``load_dataset(to)``), plus ``README.md``.
* ``parquet``: ``data/*.parquet`` + ``README.md``.
* ``tsv``: ``<name>.tsv`` (VLMEvalKit MCQ: put the folder in ``$LMUData`` and evaluate the
  dataset ``<name>``) + ``README.md``.
* ``jsonl``: ``<name>.jsonl`` (images as ``data:`` URIs, readable by ``mmcurate ingest``) +
  ``README.md``.

Profiles (``hf`` and ``parquet`` only): ``default`` keeps every column we have (ClassLabel
answer and categories, options as a list, all images); ``mmstar`` writes exactly the public
MMStar layout (split ``val``; ``index``, ``question`` with the options embedded as
``"...\\nOptions: A: x, B: y"``, one ``image``, ``answer`` letter, ``category`` and
``l2_category`` strings, ``meta_info`` {source, split, image_path}) so lmms-eval's ``mmstar``
task runs on it by changing only ``dataset_path``. That task opens one image per item and reads
only the letters A-D, so the profile refuses items it cannot score (more than 4 options, no
image, no MMStar capability/dimension) and, unless told what to do (``multi_image``), items
with several images.

What is exported is what the card says: rows an earlier stage dropped (``blind`` or ``rule_drop``
true, ``review_kept`` false, ``screen_error`` set) are left out, so exporting the ``screened`` stage
writes the items screening kept, and the card says how many rows of the stage were left out and why.

Text is written exactly as it is in parquet, ``hf`` and JSONL (formats read by programs). A TSV is
also opened in spreadsheets, which run a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR as a
formula (CSV injection), so its text cells that start so get a leading ``'`` (OWASP's advice); plain
numbers (``-3``, ``+1.5``) are left alone. The card says so when it happened.

Interrupted exports: the new folder is built as ``.NAME.<pid>.<random>.tmp`` beside ``to`` and swapped
in with two renames (old -> ``.NAME.old-<pid>``, new -> ``NAME``). The next export to ``to`` first
repairs what a killed one left: an ``.NAME.old-<pid>`` of a dead process is renamed back to ``NAME``
when ``NAME`` is missing (killed between the renames) and removed otherwise, and temporaries of dead
processes are removed. So ``NAME`` is always the old or the new export.

When the licence is ``other`` (the default: items keep their source benchmarks' terms) the card
names it (``license_name``) and links a ``LICENSE.md`` written beside it that lists the sources.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import UserError
from curate.schema import LETTERS, drop_reasons, dropped_expr
from curate.stages import newest_first
from curate.taxonomy import Taxonomy, default_taxonomy
from curate.workspace import workspace_command

FORMATS = ("hf", "parquet", "tsv", "jsonl")
PROFILES = ("default", "mmstar")
#: What the mmstar profile does with an item of several images: stop and name them, keep the
#: first image, or tile all of them side by side into one image.
MULTI_IMAGE = ("refuse", "first", "concat")
MMSTAR_SPLIT = "val"
MMSTAR_MAX_OPTIONS = 4  # lmms-eval's mmstar task extracts only A-D from a reply
TILE_GAP = 10  # white pixels between tiled images
#: TSV category cell of an item without one, when allowed: VLMEvalKit's report sorts the
#: category values, and an empty cell (NaN) among strings makes that sort raise.
UNCATEGORIZED = "uncategorized"
LICENSE_NAME = "source-benchmark-terms"
LICENSE_FILE = "LICENSE.md"
SHARD_BYTES = 500 * 2**20  # parquet shard size, as the Hub's own uploads
REQUIRED = ("item_id", "question", "options", "answer", "images")
STRING_COLUMNS = ("item_id", "question", "hint", "answer_text", "source", "source_category", "source_l2_category",
                  "orig_index", "split", "difficulty", "meta")


def export(
    df: pl.DataFrame,
    to: str | Path,
    *,
    fmt: str = "hf",
    profile: str = "default",
    overwrite: bool = False,
    card_info: Mapping[str, Any] | None = None,
    split: str | None = None,
    name: str | None = None,
    taxonomy: Taxonomy | None = None,
    multi_image: str = "refuse",
    allow_no_image: bool = False,
    allow_uncategorized: bool = False,
) -> Path:
    """Write ``df`` to the folder ``to`` in format ``fmt`` (and ``profile``); return the folder.

    ``card_info`` fills the dataset card: ``license`` (default ``other``), ``license_name``,
    ``license_link``, ``pretty_name``, ``description``, ``language`` (default: the scripts found
    in the text), ``screening`` (e.g. ``filters.screen.ScreenReport.as_dict()``: panel,
    threshold, members) and ``review`` (e.g. the reviewers' agreement), rendered when present.
    ``split`` defaults to ``test`` (``val`` for the mmstar profile, as MMStar's own).
    ``multi_image`` (mmstar profile): ``refuse`` | ``first`` | ``concat``. ``allow_no_image`` and
    ``allow_uncategorized`` let a TSV hold items without an image or a category.
    """
    return _export(df, to, fmt=fmt, profile=profile, overwrite=overwrite, card_info=card_info, split=split,
                   name=name, taxonomy=taxonomy, multi_image=multi_image, allow_no_image=allow_no_image,
                   allow_uncategorized=allow_uncategorized).path


@dataclass(frozen=True)
class _Written:
    path: Path
    notes: tuple[str, ...]


def _check_request(df: pl.DataFrame, to: Path, fmt: str, profile: str, multi_image: str, overwrite: bool) -> None:
    """Every reason to refuse that does not need the rows: before any file is touched."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r}: expected one of {', '.join(PROFILES)}")
    if profile == "mmstar" and fmt not in ("hf", "parquet"):
        raise UserError(f"--profile mmstar is a Hugging Face layout: use it with --format hf or parquet, not {fmt}")
    if multi_image not in MULTI_IMAGE:
        raise UserError(f"--multi-image {multi_image!r}: expected one of {', '.join(MULTI_IMAGE)}")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"cannot export: the table lacks column(s) {missing}; export a stage file written by mmcurate")
    if df.height == 0:
        raise UserError("cannot export: the table has no items")
    if to.exists() and not to.is_dir():
        raise UserError(f"{to}: exists and is a file; give a folder for --to")
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise UserError(f"{to}: export folder already exists; pass --overwrite to replace it, or choose another --to")


def kept_rows(df: pl.DataFrame) -> tuple[pl.DataFrame, str | None]:
    """The rows no earlier stage dropped, and one sentence on what was left out (None: nothing)."""
    reasons = drop_reasons(df.columns)
    counts = df.select([m.sum().alias(str(i)) for i, (m, _) in enumerate(reasons)]).row(0) if reasons else ()
    parts = [f"{n} {why}" for n, (_, why) in zip(counts, reasons) if n]
    dropped = dropped_expr(df.columns)
    kept = df.filter(~dropped)
    if kept.height == df.height:
        return df, None
    return kept, (f"{df.height - kept.height} of the stage's {df.height} rows were dropped by an earlier stage and are not in "
                  f"this export ({'; '.join(parts)}; a row can count under several reasons)")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralise_formula(text: str) -> str:
    """``text`` made safe for a spreadsheet (OWASP CSV injection): a leading ``'`` when it starts
    with ``= + - @``, tab or CR, unless it is a plain number."""
    if text and text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _recover_export(to: Path) -> None:
    """Repair what a killed export to ``to`` left beside it (see the module docstring)."""
    if not to.parent.is_dir():
        return
    for old in sorted(to.parent.glob(f".{glob_escape(to.name)}.old-*")):
        pid = old.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if not to.exists():
            os.replace(old, to)  # killed between the two renames: the old export comes back
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in to.parent.glob(f".{glob_escape(to.name)}.*.tmp"):
        pid = tmp.name[len(to.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _export(df: pl.DataFrame, to: str | Path, *, fmt: str, profile: str, overwrite: bool,
            card_info: Mapping[str, Any] | None, split: str | None, name: str | None, taxonomy: Taxonomy | None,
            multi_image: str, allow_no_image: bool, allow_uncategorized: bool) -> _Written:
    to = Path(to)
    _recover_export(to)
    df, left_out = kept_rows(df)
    _check_request(df, to, fmt, profile, multi_image, overwrite)
    name = name or to.name or "mmcurate"
    split = split or (MMSTAR_SPLIT if profile == "mmstar" else "test")
    tax = taxonomy or default_taxonomy()
    table = _prepare(df)
    notes: tuple[str, ...] = ()
    if profile == "mmstar":
        table, note = mmstar_rows(table, taxonomy=tax, multi_image=multi_image)
        notes = (note,)
    elif fmt == "tsv":
        table = _tsv_rows(table, allow_no_image=allow_no_image, allow_uncategorized=allow_uncategorized)
    info = dict(card_info or {})
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.{os.getpid()}.", suffix=".tmp", dir=to.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an export is meant to be shared
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the CLI shows its own status; keep the output to one line
    try:
        ds_info = None
        if fmt in ("hf", "parquet"):
            ds = to_mmstar_dataset(table, split=split) if profile == "mmstar" else to_hf_dataset(table, taxonomy=tax, split=split)
            if fmt == "hf":
                ds.save_to_disk(str(tmp))
            shards = _write_parquet_shards(ds[split], tmp / "data", split)
            ds_info = dataset_info_yaml(ds[split], split, shards)
        elif fmt == "tsv":
            write_vlmevalkit_tsv(table, tmp / f"{name}.tsv")
            n_safe = _formula_cells(table)
            if n_safe:
                left_out = ((left_out + ". ") if left_out else "") + (
                    f"{n_safe} text cell(s) start with =, +, -, @, tab or CR and are written with a leading ' so a "
                    "spreadsheet shows them as text instead of running them as formulas (OWASP CSV injection); the "
                    "parquet, hf and jsonl formats keep the exact text")
        else:
            write_jsonl(table, tmp / f"{name}.jsonl")
        if info.get("license", "other") == "other" and not info.get("license_link"):
            (tmp / LICENSE_FILE).write_text(license_text(table), encoding="utf-8")
        (tmp / "README.md").write_text(dataset_card(table, fmt=fmt, split=split, name=name, card_info=info, taxonomy=tax,
                                                    profile=profile, dataset_info=ds_info, notes=notes,
                                                    contents=left_out),
                                       encoding="utf-8")
        _swap_into_place(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()
    return _Written(to, notes)


def fault(point: str) -> None:
    from curate.workspace import fault as _fault

    _fault(point)


def _swap_into_place(tmp: Path, to: Path) -> None:
    """Rename ``tmp`` to ``to``; an old ``to`` is moved aside first and removed only after."""
    old = None
    if to.exists():
        old = to.with_name(f".{to.name}.old-{os.getpid()}")
        os.replace(to, old)
        fault("export-aside")
    try:
        os.replace(tmp, to)
    except BaseException:
        if old is not None:
            os.replace(old, to)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prepare(df: pl.DataFrame) -> pl.DataFrame:
    """Export order and an ``index`` 0..n-1 (VLMEvalKit needs unique integers)."""
    out = df.with_row_index("index")
    for c in STRING_COLUMNS + ("category", "l2_category"):
        if c in out.columns:
            out = out.with_columns(pl.col(c).cast(pl.String))
    return out


def _images(row_images: list | None) -> list[bytes]:
    out = []
    for im in row_images or []:
        data = im.get("bytes") if isinstance(im, dict) else None
        if not data:
            raise UserError("cannot export: an image has no embedded bytes (the stage file is not self-contained); re-run ingest")
        out.append(data)
    return out


# --------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------
def _names(base: list[str], values: list[str | None]) -> list[str]:
    extra = sorted({v for v in values if v is not None and v not in base})
    return base + extra


def to_hf_dataset(table: pl.DataFrame, *, taxonomy: Taxonomy | None = None, split: str = "test"):
    """A ``datasets.DatasetDict`` with one split: Image / List(Image), ClassLabel answer and categories."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

    tax = taxonomy or default_taxonomy()
    if "index" not in table.columns:
        table = _prepare(table)
    images = [_images(v) for v in table["images"].to_list()]
    multi = max((len(x) for x in images), default=0) > 1
    n_letters = max(2, max((len(o or []) for o in table["options"].to_list()), default=2))
    answers = table["answer"].to_list()
    bad = [a for a in answers if a is not None and a not in LETTERS[:n_letters]]
    if bad:
        raise UserError(f"cannot export: answer {bad[0]!r} is not an option letter A..{LETTERS[n_letters - 1]}")
    cats = table["category"].to_list() if "category" in table.columns else [None] * table.height
    l2s = table["l2_category"].to_list() if "l2_category" in table.columns else [None] * table.height
    cols: dict[str, Any] = {"index": table["index"].cast(pl.Int64).to_list()}
    feats: dict[str, Any] = {"index": Value("int64")}
    for c in ("item_id", "question", "hint"):
        cols[c] = table[c].to_list() if c in table.columns else [None] * table.height
        feats[c] = Value("string")
    cols["options"] = [list(o or []) for o in table["options"].to_list()]
    feats["options"] = List(Value("string"))
    cols["answer"] = answers
    feats["answer"] = ClassLabel(names=list(LETTERS[:n_letters]))
    if multi:
        cols["images"] = [[{"bytes": b, "path": None} for b in x] for x in images]
        feats["images"] = List(Image())
    else:
        cols["image"] = [{"bytes": x[0], "path": None} if x else None for x in images]
        feats["image"] = Image()
    cols["category"] = cats
    feats["category"] = ClassLabel(names=_names([c.name for c in tax.capabilities], cats))
    cols["l2_category"] = l2s
    feats["l2_category"] = ClassLabel(names=_names([d.name for d in tax.dimensions], l2s))
    for c in STRING_COLUMNS:
        if c in table.columns and c not in cols:
            cols[c] = table[c].to_list()
            feats[c] = Value("string")
    ds = Dataset.from_dict(cols, features=Features(feats))
    return DatasetDict({split: ds})


def _some(ids: list[str], shown: int = 5) -> str:
    """The first few item ids of a refusal (all of them would not fit on one line)."""
    return ", ".join(ids[:shown]) + (f", ... (+{len(ids) - shown} more)" if len(ids) > shown else "")


def _ids(table: pl.DataFrame, mask: pl.Expr) -> list[str]:
    return table.filter(mask)["item_id"].cast(pl.String).to_list()


def _blank(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).str.strip_chars().fill_null("") == ""


def _n_images() -> pl.Expr:
    return pl.col("images").list.len().fill_null(0)


# --------------------------------------------------------------------------------------
# The mmstar profile: MMStar's own Hub layout, for lmms-eval's `mmstar` task
# --------------------------------------------------------------------------------------
def mmstar_question(question: str, hint: str | None, options: list[str]) -> str:
    """The question as MMStar spells it: options after it, ``"\\nOptions: A: x, B: y"``.

    lmms-eval's mmstar task shows ``question`` as it is, so the options must be inside it.
    A hint (MMBench's context) goes first as ``Hint: ...`` / ``Question: ...``, as in MMStar's
    own items that carry one.
    """
    opts = ", ".join(f"{letter}: {text}" for letter, text in zip(LETTERS, options))
    body = f"Hint: {hint}\nQuestion: {question}" if hint else question
    return f"{body}\nOptions: {opts}"


def _flatten_for_tile(im):
    """RGB, or RGBA when the image has transparency (pasted with its alpha over white)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    return im.convert("RGB")


def tile_images(images: list[bytes], gap: int = TILE_GAP) -> bytes:
    """Several images side by side, left to right in their order, as one PNG.

    Each keeps its own size (no rescaling: small text stays readable), centred vertically on
    white, ``gap`` white pixels apart. PNG so the tiles are not re-compressed lossily.
    """
    from PIL import Image

    tiles = [_flatten_for_tile(Image.open(io.BytesIO(b))) for b in images]
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    height = max(t.height for t in tiles)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for t in tiles:
        pos = (x, (height - t.height) // 2)
        canvas.paste(t, pos, t if t.mode == "RGBA" else None)
        x += t.width + gap
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _mmstar_refusals(table: pl.DataFrame, taxonomy: Taxonomy, multi_image: str) -> list[str]:
    """Why items cannot go into the mmstar layout, one clause per reason (empty: all can)."""
    n_opts = pl.col("options").list.len().fill_null(0)
    caps = [c.name for c in taxonomy.capabilities]
    dims = [d.name for d in taxonomy.dimensions]
    key = pl.col("answer").str.strip_chars().replace_strict({L: i for i, L in enumerate(LETTERS)}, default=None,
                                                            return_dtype=pl.Int64)
    checks = [
        (n_opts > MMSTAR_MAX_OPTIONS, f"have more than {MMSTAR_MAX_OPTIONS} options (lmms-eval's mmstar task reads only "
                                      "A-D from a reply, so they could never be scored right)"),
        (key.is_null() | (key >= n_opts), "have a key that is not the letter of one of their options"),
        (_n_images() == 0, "have no image (lmms-eval's mmstar task opens one image per item)"),
        (~pl.col("category").is_in(caps).fill_null(False) | ~pl.col("l2_category").is_in(dims).fill_null(False),
         "have no MMStar capability (category) or dimension (l2_category) (lmms-eval reports per capability; "
         "run `mmcurate suggest` / `balance`, or use the default profile)"),
    ]
    if multi_image == "refuse":
        checks.append((_n_images() > 1, "have several images (lmms-eval's mmstar task shows one: pass "
                                        "--multi-image first to keep the first, or concat to tile them side by side)"))
    out = []
    for mask, why in checks:
        ids = _ids(table, mask)
        if ids:
            out.append(f"{len(ids)} item(s) {why}: {_some(ids)}")
    return out


def multi_image_note(table: pl.DataFrame, *, profile: str = "default", fmt: str = "hf", multi_image: str = "refuse") -> str:
    """One sentence on what the export does with items of several images (card and command line)."""
    n = table.filter(_n_images() > 1).height
    if n == 0:
        return "no item has several images"
    if profile != "mmstar":
        where = {"tsv": "as a list in the `image` cell, with matching `image_path` names (VLMEvalKit's multi-image form)",
                 "jsonl": "in the item's `images` list"}.get(fmt, "in the `images` column (a list of images)")
        return f"{n} item(s) have several images: all are kept, in order, {where}"
    if multi_image == "first":
        return (f"{n} item(s) have several images: only the first is kept (--multi-image first); a question that "
                "refers to a later image may not be answerable")
    return (f"{n} item(s) have several images: tiled side by side into one PNG, left to right in their order with a "
            f"{TILE_GAP}-pixel white gap (--multi-image concat), so `<image k>` is the k-th panel from the left")


def mmstar_rows(table: pl.DataFrame, *, taxonomy: Taxonomy | None = None, multi_image: str = "refuse") -> tuple[pl.DataFrame, str]:
    """``table`` plus the mmstar columns (``mmstar_question``, ``mmstar_image``, ``mmstar_image_path``)
    and the multi-image sentence; a UserError naming the items that the layout cannot hold."""
    tax = taxonomy or default_taxonomy()
    if "index" not in table.columns:
        table = _prepare(table)
    for col in ("category", "l2_category", "hint", "source", "split"):
        if col not in table.columns:
            table = table.with_columns(pl.lit(None, pl.String).alias(col))
    refusals = _mmstar_refusals(table, tax, multi_image)
    if refusals:
        raise UserError("cannot export --profile mmstar: " + "; ".join(refusals))
    questions, images, paths = [], [], []
    for r in table.select("index", "question", "hint", "options", "images").iter_rows(named=True):
        imgs = _images(r["images"])
        data = tile_images(imgs) if len(imgs) > 1 and multi_image == "concat" else imgs[0]
        questions.append(mmstar_question(r["question"] or "", r["hint"], list(r["options"] or [])))
        images.append(data)
        paths.append(f"images/{r['index']}.{_ext(data)}")
    note = multi_image_note(table, profile="mmstar", multi_image=multi_image)
    return table.with_columns(pl.Series("mmstar_question", questions, pl.String), pl.Series("mmstar_image", images, pl.Binary),
                              pl.Series("mmstar_image_path", paths, pl.String)), note


def to_mmstar_dataset(table: pl.DataFrame, *, split: str = MMSTAR_SPLIT, multi_image: str = "refuse",
                      taxonomy: Taxonomy | None = None):
    """A ``datasets.DatasetDict`` with MMStar's columns and types, nothing else."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    if "mmstar_question" not in table.columns:
        table, _ = mmstar_rows(table, taxonomy=taxonomy, multi_image=multi_image)
    feats = Features({
        "index": Value("int64"),
        "question": Value("string"),
        "image": Image(),
        "answer": Value("string"),
        "category": Value("string"),
        "l2_category": Value("string"),
        "meta_info": {"source": Value("string"), "split": Value("string"), "image_path": Value("string")},
    })
    cols = {
        "index": table["index"].cast(pl.Int64).to_list(),
        "question": table["mmstar_question"].to_list(),
        "image": [{"bytes": b, "path": None} for b in table["mmstar_image"].to_list()],
        "answer": table["answer"].to_list(),
        "category": table["category"].to_list(),
        "l2_category": table["l2_category"].to_list(),
        "meta_info": [{"source": s, "split": sp, "image_path": p} for s, sp, p in
                      table.select("source", "split", "mmstar_image_path").iter_rows()],
    }
    return DatasetDict({split: Dataset.from_dict(cols, features=feats)})


def _write_parquet_shards(ds, folder: Path, split: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, math.ceil(ds.data.nbytes / SHARD_BYTES))
    paths = []
    for i in range(n):
        path = folder / f"{split}-{i:05d}-of-{n:05d}.parquet"
        ds.shard(num_shards=n, index=i, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------
# VLMEvalKit TSV and JSONL
# --------------------------------------------------------------------------------------
def _ext(data: bytes) -> str:
    for magic, ext in ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp")):
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _tsv_rows(table: pl.DataFrame, *, allow_no_image: bool = False, allow_uncategorized: bool = False) -> pl.DataFrame:
    """VLMEvalKit's custom-MCQ rules, before anything is written.

    VLMEvalKit drops rows whose image cell is empty without a word, and its accuracy report
    sorts the category values, which fails when an empty cell (NaN) sits among strings. So
    such items are refused unless allowed; allowed uncategorized items get ``uncategorized``.
    """
    for col in ("category", "l2_category"):
        if col not in table.columns:
            table = table.with_columns(pl.lit(None, pl.String).alias(col))
    problems = []
    no_image = _ids(table, _n_images() == 0)
    if no_image and not allow_no_image:
        problems.append(f"{len(no_image)} item(s) have no image, and VLMEvalKit skips rows with an empty image cell "
                        f"(pass --allow-no-image to write them anyway): {_some(no_image)}")
    uncategorized = _ids(table, _blank("category") | _blank("l2_category"))
    if uncategorized and not allow_uncategorized:
        problems.append(f"{len(uncategorized)} item(s) have no capability (category) or dimension (l2_category), and "
                        "VLMEvalKit's accuracy report fails on an empty category (pass --allow-uncategorized to write "
                        f"them as {UNCATEGORIZED!r}): {_some(uncategorized)}")
    if problems:
        raise UserError("cannot export a VLMEvalKit TSV: " + "; ".join(problems))
    return table.with_columns(*[pl.when(_blank(c)).then(pl.lit(UNCATEGORIZED)).otherwise(pl.col(c)).alias(c)
                                for c in ("category", "l2_category")])


def write_vlmevalkit_tsv(table: pl.DataFrame, path: Path) -> Path:
    """VLMEvalKit's MCQ TSV: tab separated, every field quoted, images base64 of the original bytes.

    The dimension column is ``l2-category`` (hyphen): VLMEvalKit's ``report_acc`` looks for
    that name and reports one accuracy per value (``l2_category`` would be ignored). Several
    images go in one cell as a list literal with a matching ``image_path`` list (VLMEvalKit
    needs those names to dump a multi-image row). The original bytes are written unchanged
    (no JPEG re-encoding) so the content hash survives the round trip.
    """
    if "index" not in table.columns:
        table = _prepare(table)
    n_letters = max((len(o or []) for o in table["options"].to_list()), default=0)
    letters = list(LETTERS[:n_letters])
    # Columns VLMEvalKit ignores, written so `mmcurate ingest` gets the item back whole: the source's own
    # categories (else the MMStar capability in `category` would come back as the source's category).
    # `split` is VLMEvalKit's own column (its report has one row per value), so it is written only when every
    # item has one: an empty cell would make a split of its own that matches no row.
    extra = [c for c in ("item_id", "source", "difficulty", "source_category", "source_l2_category") if c in table.columns]
    if "split" in table.columns and not table.select(_blank("split").any()).item():
        extra.insert(0, "split")
    header = ["index", "question", "hint", *letters, "answer", "category", "l2-category", "image", "image_path", *extra]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(header)
        for r in table.iter_rows(named=True):
            imgs = _images(r["images"])
            b64 = [base64.b64encode(b).decode("ascii") for b in imgs]
            names = [f"{r['index']}.{_ext(b)}" if len(imgs) == 1 else f"{r['index']}_{k}.{_ext(b)}" for k, b in enumerate(imgs)]
            opts = list(r["options"] or [])
            safe = neutralise_formula
            w.writerow([
                safe(str(r["index"])), safe(r["question"] or ""), safe(r.get("hint") or ""),
                *[safe(str(opts[k])) if k < len(opts) else "" for k in range(n_letters)],
                safe(r["answer"] or ""), safe(r.get("category") or ""), safe(r.get("l2_category") or ""),
                (b64[0] if len(b64) == 1 else json.dumps(b64)) if b64 else "",  # base64: never a formula, kept exact
                (names[0] if len(names) == 1 else json.dumps(names)) if names else "",
                *[("" if r.get(c) is None else safe(str(r.get(c)))) for c in extra],
            ])
    return path


def _formula_cells(table: pl.DataFrame) -> int:
    """How many text cells the TSV writer neutralised (for the card)."""
    n = 0
    for col in ("index", "question", "hint", "answer", "category", "l2_category", "item_id", "source", "difficulty", "source_category", "source_l2_category"):
        if col in table.columns:
            n += sum(1 for v in table[col].cast(pl.String).to_list() if v and neutralise_formula(v) != v)
    if "options" in table.columns:
        n += sum(1 for opts in table["options"].to_list() for v in (opts or []) if v and neutralise_formula(str(v)) != str(v))
    return n


_MIME = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp", "webp": "image/webp"}


def write_jsonl(table: pl.DataFrame, path: Path) -> Path:
    """One JSON object per item; images as ``data:`` URIs (self-contained, readable by ingest)."""
    if "index" not in table.columns:
        table = _prepare(table)
    keep = ["index", "item_id", "question", "hint", "options", "answer", "answer_text", "category", "l2_category",
            "source", "source_category", "source_l2_category", "orig_index", "split", "difficulty"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in table.iter_rows(named=True):
            rec = {k: r[k] for k in keep if k in r}
            imgs = _images(r["images"])
            rec["images"] = [f"data:{_MIME[_ext(b)]};base64," + base64.b64encode(b).decode("ascii") for b in imgs]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------
def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def _count_table(table: pl.DataFrame, col: str, title: str) -> str:
    if col not in table.columns or table[col].null_count() == table.height:
        return ""
    counts = table.group_by(col).len().sort(["len", col], descending=[True, False], nulls_last=True)
    lines = [f"### By {title}", "", f"| {title} | items |", "|---|---:|"]
    lines += [f"| {v if v is not None else '(none)'} | {n} |" for v, n in counts.iter_rows()]
    return "\n".join(lines) + "\n"


def dataset_info_yaml(ds, split: str, shards: list[Path] | None = None) -> dict:
    """The card's ``dataset_info`` as the Hub writes it: features, splits with sizes, totals.

    Without ``num_bytes`` in ``splits``, ``load_dataset(folder)`` logs that the YAML is
    malformed and ignores it. Features come from the Dataset itself, so they cannot drift.
    """
    nbytes = int(ds.data.nbytes)
    info: dict[str, Any] = {"features": ds.features._to_yaml_list(),
                            "splits": [{"name": split, "num_bytes": nbytes, "num_examples": ds.num_rows}]}
    if shards:
        info["download_size"] = sum(p.stat().st_size for p in shards)
    info["dataset_size"] = nbytes
    return info


#: Scripts that name a language by themselves, checked in this order (kana before Han: Japanese
#: text has both). Latin-script text is taken as English: no language detector is shipped.
_SCRIPTS = (
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("zh", re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
)
_LATIN = re.compile(r"[A-Za-z]")


def _language_of(text: str) -> str | None:
    for code, pattern in _SCRIPTS:
        if len(pattern.findall(text)) >= 2:  # one stray character (a symbol, a name) is not a language
            return code
    return "en" if _LATIN.search(text) else None


def languages(table: pl.DataFrame) -> list[str]:
    """Languages of the items' text (question, hint, options), most items first."""
    counts: dict[str, int] = {}
    cols = [c for c in ("question", "hint") if c in table.columns]
    for r in table.select(*cols, "options").iter_rows(named=True):
        text = " ".join([*(r[c] or "" for c in cols), *(r["options"] or [])])
        lang = _language_of(text)
        if lang:
            counts[lang] = counts.get(lang, 0) + 1
    return [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))] or ["en"]


def license_text(table: pl.DataFrame) -> str:
    """``LICENSE.md`` for licence ``other``: mmcurate adds no licence; each item keeps its source's."""
    lines = ["# Terms of use", "",
             "This set was assembled with mmcurate from items of the benchmarks listed below. It adds no licence of its",
             "own: every item (question, options, answer and image) stays under the terms of the benchmark it came",
             "from. Read those terms before you use or redistribute the set.", "", "| source | items |", "|---|---:|"]
    if "source" in table.columns:
        counts = table.group_by("source").len().sort(["len", "source"], descending=[True, False], nulls_last=True)
        lines += [f"| {s if s is not None else '(unknown)'} | {n} |" for s, n in counts.iter_rows()]
    else:
        lines.append(f"| (unknown) | {table.height} |")
    return "\n".join(lines) + "\n"


def _render_mapping(title: str, info: Any) -> str:
    if not info:
        return ""
    lines = [f"## {title}", ""]
    if isinstance(info, Mapping):
        members = info.get("members")
        for k, v in info.items():
            if k == "members" or isinstance(v, (dict, list)):
                continue
            lines.append(f"- **{k}**: {v}")
        if isinstance(members, list) and members:
            keys = [k for k in ("name", "backend", "method", "counted", "hit_rate", "expected_chance_hit_rate") if k in members[0]]
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for m in members:
                lines.append("| " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
        for k, v in info.items():
            if k != "members" and isinstance(v, (dict, list)):
                lines.append(f"- **{k}**: `{json.dumps(v, sort_keys=True, default=str)}`")
    else:
        lines.append(str(info))
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _card_header(table: pl.DataFrame, info: Mapping[str, Any], *, name: str, fmt: str, profile: str, split: str,
                 dataset_info: dict | None) -> dict[str, Any]:
    lic = info.get("license", "other")
    header: dict[str, Any] = {"license": lic}
    if lic == "other":  # the Hub asks for both then; the LICENSE.md written beside the card by default
        header["license_name"] = info.get("license_name", LICENSE_NAME)
        header["license_link"] = info.get("license_link", LICENSE_FILE)
    else:
        header |= {k: info[k] for k in ("license_name", "license_link") if info.get(k)}
    header |= {
        "language": list(info.get("language") or languages(table)),
        "pretty_name": info.get("pretty_name", name),
        "task_categories": ["multiple-choice", "visual-question-answering"],
        "size_categories": [_size_category(table.height)],
        "tags": ["mmcurate", "vision-dependent", "multiple-choice"],
    }
    if info.get("source_datasets"):
        header["source_datasets"] = list(info["source_datasets"])
    if fmt in ("hf", "parquet"):
        config = MMSTAR_SPLIT if profile == "mmstar" else "default"  # MMStar's one subset is "val"
        header["configs"] = [{"config_name": config, "data_files": [{"split": split, "path": f"data/{split}-*"}]}]
        header["dataset_info"] = dataset_info
    return header


def dataset_card(table: pl.DataFrame, *, fmt: str = "hf", split: str = "test", name: str = "mmcurate",
                 card_info: Mapping[str, Any] | None = None, taxonomy: Taxonomy | None = None,
                 profile: str = "default", dataset_info: dict | None = None, notes: tuple[str, ...] = (),
                 contents: str | None = None) -> str:
    """README.md with the YAML header the Hub reads and the counts a reader checks first.

    ``dataset_info`` is :func:`dataset_info_yaml` of the written split (built here when not
    given); ``notes`` are what the export did with multi-image items (the mmstar profile's);
    ``contents`` what the export left out of the stage or changed (``kept_rows``, TSV formula cells).
    """
    import yaml

    tax = taxonomy or default_taxonomy()
    info = dict(card_info or {})
    if fmt in ("hf", "parquet") and dataset_info is None:
        ds = to_mmstar_dataset(table, split=split, taxonomy=tax) if profile == "mmstar" else to_hf_dataset(table, taxonomy=tax, split=split)
        dataset_info = dataset_info_yaml(ds[split], split)
    header = _card_header(table, info, name=name, fmt=fmt, profile=profile, split=split, dataset_info=dataset_info)
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {header['pretty_name']}", ""]
    lines.append(info.get("description") or _default_description(table))
    if contents:
        lines += ["", "## What is in this export", "", contents + "."]
    lines += ["", _usage(fmt, name, split, profile)]
    lines += ["## Items with several images", "", (notes[0] if notes else multi_image_note(table, profile=profile, fmt=fmt)) + ".", ""]
    lines += ["## Counts", ""]
    for col, title in (("category", "capability"), ("l2_category", "dimension"), ("source", "source"),
                       ("difficulty", "difficulty")):
        block = _count_table(table, col, title)
        if block:
            lines += [block]
    screening = info.get("screening")
    if not screening and "panel_hash" in table.columns:  # no report given: what the columns still tell
        screening = {"panel_hash": ", ".join(sorted(table["panel_hash"].drop_nulls().unique().to_list()))}
        if "n_members" in table.columns and table["n_members"].drop_nulls().len():
            screening["members counted"] = int(table["n_members"].drop_nulls().max())
    lines += [block for block in (_render_mapping("Screening", screening), _render_mapping("Review", info.get("review"))) if block]
    sources = (f" ({', '.join(sorted(table['source'].drop_nulls().unique().to_list()))})" if "source" in table.columns else "")
    terms = f"; see [{header['license_link']}]({header['license_link']})" if header.get("license_link") else ""
    lines.append(f"\nLicence: `{header['license']}`. Items keep the terms of their source benchmarks{sources}{terms}.")
    return "\n".join(x for x in lines if x is not None).rstrip() + "\n"


def _default_description(table: pl.DataFrame) -> str:
    text = f"{table.height} multiple-choice items exported by mmcurate, which follows MMStar's recipe (arXiv 2403.20330)."
    if "blind" in table.columns:
        text += " Items that a text-only panel answered without the image were screened out."
    if "review_kept" in table.columns:
        text += " Human reviewers checked that each item needs its image and has one correct answer."
    if "dimension_from" in table.columns:
        text += " The items are balanced over MMStar's 6 capabilities x 18 dimensions."
    return text


def lmms_eval_task_name(name: str) -> str:
    """A task name lmms-eval accepts (letters, digits, underscores) for the card's example."""
    return re.sub(r"[^0-9a-z_]+", "_", name.lower()).strip("_") or "mmcurate"


def _usage(fmt: str, name: str, split: str, profile: str = "default") -> str:
    if profile == "mmstar":
        task = lmms_eval_task_name(name)
        return ("## Evaluating with lmms-eval\n\n"
                "The layout is MMStar's own (subset and split `val`; `index`, `question` with the options inside, "
                "`image`, `answer` letter, `category` and `l2_category` strings, `meta_info`), so lmms-eval's `mmstar` "
                f"task runs on it with only `dataset_path` changed. Save this as `tasks/{task}.yaml`:\n\n"
                f"```yaml\ntask: {task}\ndataset_path: /absolute/path/to/this/folder\n"
                "include: LMMS_EVAL/tasks/mmstar/mmstar.yaml   # LMMS_EVAL: python -c \"import lmms_eval; print(lmms_eval.__path__[0])\"\n"
                f"```\n\nthen run `lmms-eval --model <model> --tasks {task} --include_path tasks`. Its score is "
                "lmms-eval's: the mean over dimensions (`l2_category`) of each dimension's accuracy. `meta_info.source` "
                "names the benchmark each item came from.\n")
    if fmt == "hf":
        return ("## Loading\n\n```python\nimport datasets\nds = datasets.load_from_disk(\"PATH\")            "
                f"# arrow copy\nds = datasets.load_dataset(\"PATH\")           # parquet shards in data/\nds[\"{split}\"][0]\n```\n")
    if fmt == "parquet":
        return f"## Loading\n\n```python\nimport datasets\nds = datasets.load_dataset(\"PATH\")\nds[\"{split}\"][0]\n```\n"
    if fmt == "tsv":
        return (f"## Evaluating with VLMEvalKit\n\nA VLMEvalKit multiple-choice TSV: copy `{name}.tsv` into `$LMUData` "
                f"(default `~/LMUData`) and run `python run.py --data {name} --model <model> --judge exact_matching`. A name "
                "that is not one of VLMEvalKit's own datasets is loaded as a custom MCQ dataset (the file has `A`, `B` "
                "and `image` columns); a name containing `MMBench` or `circular` switches to circular evaluation. "
                "Accuracy is reported overall, per `l2-category` (dimension) and per `category` (capability).\n")
    return f"## Loading\n\n`{name}.jsonl`: one item per line, images as `data:` URIs; `mmcurate ingest {name}.jsonl` reads it back.\n"


EXPORT_STAGES = newest_first()  # curate.stages: balanced, reviewed, screened, items
REPORT_FILES = {"screening": "screen_report.json", "review": "review_report.json"}


@dataclass(frozen=True)
class ExportResult:
    """What ``export_release`` wrote (or refused to write) and what the release check found."""

    stage: str
    path: Path
    fmt: str
    profile: str
    items: int
    written: bool
    problems: tuple = ()  # curate.check.Problem, errors first
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        """The one JSON object ``mmcurate export --json`` prints."""
        errors = sum(p.severity == "error" for p in self.problems)
        return {"written": self.written, "path": str(self.path), "format": self.fmt, "profile": self.profile,
                "stage": self.stage, "items": self.items, "ok": errors == 0, "errors": errors,
                "warnings": len(self.problems) - errors, "problems": [p.as_dict() for p in self.problems],
                "multi_image": self.notes[0] if self.notes else None}


class ExportRefused(UserError):
    """The release check found errors: nothing was written (``result`` says what was found)."""

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


def _read_stage(workdir, stage: str | None, card_info: Mapping[str, Any] | None) -> tuple[str, pl.DataFrame, dict]:
    """The stage to export (default: the newest), its table and the card info with the workspace's reports."""
    from curate.workspace import Workspace

    ws = Workspace(workdir)
    stage = stage or ws.newest(EXPORT_STAGES)
    df = ws.read(stage)
    info = dict(card_info or {})
    for key, fname in REPORT_FILES.items():
        path = ws.root / fname
        if key not in info and path.is_file():
            try:
                info[key] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: not readable JSON ({exc}); fix or delete it") from exc
    return stage, df, info


@workspace_command("export")
def export_release(workdir, to, *, fmt: str = "hf", profile: str = "default", stage: str | None = None,
                   overwrite: bool = False, card_info: Mapping[str, Any] | None = None, multi_image: str = "refuse",
                   allow_no_image: bool = False, allow_uncategorized: bool = False,
                   ignore_check: bool = False) -> ExportResult:
    """Export a workspace stage after the release check (``curate.check.check_table``).

    A set with check errors is refused (``ExportRefused``, nothing written) unless
    ``ignore_check``; warnings never stop it. The card picks up ``screen_report.json`` /
    ``review_report.json`` from the workspace when ``card_info`` does not say otherwise.
    """
    from curate.check import check_table, has_errors

    stage, df, info = _read_stage(workdir, stage, card_info)
    stage_df = df
    df, _ = kept_rows(df)  # the rows the export writes (and the card describes) are the ones checked
    problems = tuple(check_table(df, allow_no_image=allow_no_image))
    result = ExportResult(stage, Path(to), fmt, profile, df.height, False, problems)
    if has_errors(problems) and not ignore_check:
        errors = [p for p in problems if p.severity == "error"]
        summary = "; ".join(f"{p.code} ({len(p.item_ids)} item(s))" if p.item_ids else p.code for p in errors)
        raise ExportRefused(f"cannot export {stage}.parquet: the release check found {len(errors)} error(s): {summary}. "
                            f"`mmcurate check {workdir}` lists the items; fix them, or pass --ignore-check", result)
    written = _export(stage_df, to, fmt=fmt, profile=profile, overwrite=overwrite, card_info=info, split=None, name=None,
                      taxonomy=None, multi_image=multi_image, allow_no_image=allow_no_image,
                      allow_uncategorized=allow_uncategorized)
    notes = written.notes or (multi_image_note(df, profile=profile, fmt=fmt, multi_image=multi_image),)
    return ExportResult(stage, written.path, fmt, profile, df.height, True, problems, notes)


def export_workspace(workdir, to, *, fmt: str = "hf", stage: str | None = None, overwrite: bool = False,
                     card_info: Mapping[str, Any] | None = None, **options: Any) -> tuple[str, Path]:
    """Export the newest stage of a workspace (or ``stage``); return (stage, folder).

    ``options`` are those of :func:`export_release` (profile, multi_image, allow_no_image,
    allow_uncategorized, ignore_check); the release check runs as there.
    """
    res = export_release(workdir, to, fmt=fmt, stage=stage, overwrite=overwrite, card_info=card_info, **options)
    return res.stage, res.path
