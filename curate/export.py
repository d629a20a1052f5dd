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
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import UserError
from curate.schema import LETTERS
from curate.taxonomy import Taxonomy, default_taxonomy

FORMATS = ("hf", "parquet", "tsv", "jsonl")
SHARD_BYTES = 500 * 2**20  # parquet shard size, as the Hub's own uploads
REQUIRED = ("item_id", "question", "options", "answer", "images")
STRING_COLUMNS = ("item_id", "question", "hint", "answer_text", "source", "source_category", "source_l2_category",
                  "orig_index", "split", "difficulty", "meta")


def export(
    df: pl.DataFrame,
    to: str | Path,
    *,
    fmt: str = "hf",
    overwrite: bool = False,
    card_info: Mapping[str, Any] | None = None,
    split: str = "test",
    name: str | None = None,
    taxonomy: Taxonomy | None = None,
) -> Path:
    """Write ``df`` to the folder ``to`` in format ``fmt``; return the folder.

    ``card_info`` fills the dataset card: ``license`` (default ``other``), ``pretty_name``,
    ``description``, ``language``, ``screening`` (e.g. ``filters.screen.ScreenReport.as_dict()``:
    panel, threshold, members) and ``review`` (e.g. the reviewers' agreement), rendered when
    present.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"cannot export: the table lacks column(s) {missing}; export a stage file written by mmcurate")
    if df.height == 0:
        raise UserError("cannot export: the table has no items")
    to = Path(to)
    if to.exists() and not to.is_dir():
        raise UserError(f"{to}: exists and is a file; give a folder for --to")
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise UserError(f"{to}: export folder already exists; pass --overwrite to replace it, or choose another --to")
    name = name or to.name or "mmcurate"
    tax = taxonomy or default_taxonomy()
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.", suffix=".tmp", dir=to.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an export is meant to be shared
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the CLI shows its own status; keep the output to one line
    try:
        table = _prepare(df)
        if fmt in ("hf", "parquet"):
            ds = to_hf_dataset(table, taxonomy=tax, split=split)
            if fmt == "hf":
                ds.save_to_disk(str(tmp))
            _write_parquet_shards(ds[split], tmp / "data", split)
        elif fmt == "tsv":
            write_vlmevalkit_tsv(table, tmp / f"{name}.tsv")
        else:
            write_jsonl(table, tmp / f"{name}.jsonl")
        (tmp / "README.md").write_text(dataset_card(table, fmt=fmt, split=split, name=name, card_info=card_info,
                                                    taxonomy=tax), encoding="utf-8")
        _swap_into_place(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()
    return to


def _swap_into_place(tmp: Path, to: Path) -> None:
    """Rename ``tmp`` to ``to``; an old ``to`` is moved aside first and removed only after."""
    old = None
    if to.exists():
        old = to.with_name(f".{to.name}.old-{os.getpid()}")
        os.replace(to, old)
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


def write_vlmevalkit_tsv(table: pl.DataFrame, path: Path) -> Path:
    """VLMEvalKit's MCQ TSV: tab separated, every field quoted, images base64 of the original bytes.

    Several images go in one cell as a list literal with a matching ``image_path`` list
    (VLMEvalKit needs those names to dump a multi-image row). The original bytes are
    written unchanged (no JPEG re-encoding) so the content hash survives the round trip.
    """
    if "index" not in table.columns:
        table = _prepare(table)
    n_letters = max((len(o or []) for o in table["options"].to_list()), default=0)
    letters = list(LETTERS[:n_letters])
    extra = [c for c in ("item_id", "source", "difficulty") if c in table.columns]
    header = ["index", "question", "hint", *letters, "answer", "category", "l2_category", "image", "image_path", *extra]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(header)
        for r in table.iter_rows(named=True):
            imgs = _images(r["images"])
            b64 = [base64.b64encode(b).decode("ascii") for b in imgs]
            names = [f"{r['index']}.{_ext(b)}" if len(imgs) == 1 else f"{r['index']}_{k}.{_ext(b)}" for k, b in enumerate(imgs)]
            opts = list(r["options"] or [])
            w.writerow([
                r["index"], r["question"] or "", r.get("hint") or "",
                *[opts[k] if k < len(opts) else "" for k in range(n_letters)],
                r["answer"] or "", r.get("category") or "", r.get("l2_category") or "",
                (b64[0] if len(b64) == 1 else json.dumps(b64)) if b64 else "",
                (names[0] if len(names) == 1 else json.dumps(names)) if names else "",
                *[("" if r.get(c) is None else r.get(c)) for c in extra],
            ])
    return path


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


def _features_yaml(table: pl.DataFrame, split: str, taxonomy: Taxonomy) -> list[dict]:
    """The ``dataset_info.features`` list the Hub reads (dtype / list / class_label)."""
    n_letters = max(2, max((len(o or []) for o in table["options"].to_list()), default=2))
    multi = max((len(x or []) for x in table["images"].to_list()), default=0) > 1

    def labels(names):
        return {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}

    cats = table["category"].to_list() if "category" in table.columns else []
    l2s = table["l2_category"].to_list() if "l2_category" in table.columns else []
    feats = [{"name": "index", "dtype": "int64"}]
    feats += [{"name": c, "dtype": "string"} for c in ("item_id", "question", "hint")]
    feats += [{"name": "options", "list": "string"}, {"name": "answer", "dtype": labels(LETTERS[:n_letters])}]
    feats += [{"name": "images", "list": "image"}] if multi else [{"name": "image", "dtype": "image"}]
    feats += [{"name": "category", "dtype": labels(_names([c.name for c in taxonomy.capabilities], cats))},
              {"name": "l2_category", "dtype": labels(_names([d.name for d in taxonomy.dimensions], l2s))}]
    feats += [{"name": c, "dtype": "string"} for c in STRING_COLUMNS if c in table.columns and c not in ("item_id", "question", "hint")]
    return feats


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


def dataset_card(table: pl.DataFrame, *, fmt: str = "hf", split: str = "test", name: str = "mmcurate",
                 card_info: Mapping[str, Any] | None = None, taxonomy: Taxonomy | None = None) -> str:
    """README.md with the YAML header the Hub reads and the counts a reader checks first."""
    import yaml

    tax = taxonomy or default_taxonomy()
    info = dict(card_info or {})
    n = table.height
    header: dict[str, Any] = {
        "license": info.get("license", "other"),
        "language": info.get("language", ["en"]),
        "pretty_name": info.get("pretty_name", name),
        "task_categories": ["multiple-choice", "visual-question-answering"],
        "size_categories": [_size_category(n)],
        "tags": ["mmcurate", "vision-dependent", "multiple-choice"],
    }
    if info.get("source_datasets"):
        header["source_datasets"] = list(info["source_datasets"])
    if fmt in ("hf", "parquet"):
        header["configs"] = [{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"}]}]
        header["dataset_info"] = {"features": _features_yaml(table, split, tax),
                                  "splits": [{"name": split, "num_examples": n}]}
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {header['pretty_name']}", ""]
    lines.append(info.get("description") or _default_description(table))
    lines += ["", _usage(fmt, name, split), "## Counts", ""]
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
    lines.append(_render_mapping("Screening", screening))
    lines.append(_render_mapping("Review", info.get("review")))
    lines.append(f"\nLicence: `{header['license']}`. Items keep the terms of their source benchmarks"
                 + (f" ({', '.join(sorted(table['source'].drop_nulls().unique().to_list()))})." if "source" in table.columns else "."))
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


def _usage(fmt: str, name: str, split: str) -> str:
    if fmt == "hf":
        return ("## Loading\n\n```python\nimport datasets\nds = datasets.load_from_disk(\"PATH\")            "
                f"# arrow copy\nds = datasets.load_dataset(\"PATH\")           # parquet shards in data/\nds[\"{split}\"][0]\n```\n")
    if fmt == "parquet":
        return f"## Loading\n\n```python\nimport datasets\nds = datasets.load_dataset(\"PATH\")\nds[\"{split}\"][0]\n```\n"
    if fmt == "tsv":
        return (f"## Loading\n\nA VLMEvalKit MCQ TSV: copy `{name}.tsv` into `$LMUData` and run "
                f"`python run.py --data {name} --model <model>` (loaded as a custom MCQ dataset).\n")
    return f"## Loading\n\n`{name}.jsonl`: one item per line, images as `data:` URIs; `mmcurate ingest {name}.jsonl` reads it back.\n"


EXPORT_STAGES = ("balanced", "reviewed", "screened", "items")
REPORT_FILES = {"screening": "screen_report.json", "review": "review_report.json"}


def export_workspace(workdir, to, *, fmt: str = "hf", stage: str | None = None, overwrite: bool = False,
                     card_info: Mapping[str, Any] | None = None) -> tuple[str, Path]:
    """Export the newest stage of a workspace (or ``stage``); return (stage, folder).

    The card picks up ``screen_report.json`` / ``review_report.json`` from the workspace
    when they exist and ``card_info`` does not say otherwise.
    """
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
    return stage, export(df, to, fmt=fmt, overwrite=overwrite, card_info=info)
