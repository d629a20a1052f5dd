"""Real items for the export tests, and the one step that makes them a releasable set.

Both test_export.py and test_export_profiles.py build on these: MMBench samples (hints, Chinese
translations), AI2D and MMMU rows with 2 and 4 images, all ingested from ../shared/data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.taxonomy import default_taxonomy


@functools.lru_cache(maxsize=4)
def real_items(shared_data: Path, *, max_options: int | None = None) -> pl.DataFrame:
    """MMBench samples, 30 AI2D items and MMMU's multi-image rows plus some single-image ones.

    Cached for the session: three test modules build on it and each ingest decodes every image
    (~3 s); a polars frame is not changed in place by the tests, they derive new ones."""
    from curate.ingest import ingest

    v = shared_data / "vlmevalkit"
    mmb = ingest(v / "MMBench_samples.tsv")
    ai2d = ingest(v / "AI2D_TEST_sub309.tsv").head(30)
    mmmu = ingest(v / "MMMU_DEV.tsv")
    if max_options is not None:
        mmmu = mmmu.filter(pl.col("options").list.len() <= max_options)
    mmmu = pl.concat([mmmu.filter(pl.col("n_images") > 1), mmmu.filter(pl.col("n_images") == 1).head(6)])
    df = pl.concat([mmb, ai2d, mmmu], how="vertical")
    assert df["n_images"].max() == 4
    return df.with_columns(pl.Series("difficulty", ["easy", "moderate", "hard", "tough"] * (df.height // 4)
                                     + ["easy"] * (df.height % 4)))


def releasable(df: pl.DataFrame) -> pl.DataFrame:
    """One item per group (MMBench's EN/CN translations are groups) and a dimension for every item.

    Items without one get MMStar's dimensions in turn (what `mmcurate suggest` or a reviewer
    would give them), so the release check has nothing to refuse.
    """
    from curate.groups import assign_groups

    df = assign_groups(df).unique("group_id", keep="first", maintain_order=True)
    dims = default_taxonomy().dimensions
    turn = [dims[i % len(dims)] for i in range(df.height)]
    missing = pl.col("l2_category").is_null() | pl.col("category").is_null()
    return df.with_columns(
        pl.when(missing).then(pl.Series([d.name for d in turn])).otherwise(pl.col("l2_category")).alias("l2_category"),
        pl.when(missing).then(pl.Series([d.capability for d in turn])).otherwise(pl.col("category")).alias("category"),
    )


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def run_cli(capsys, monkeypatch, *args: str) -> CliRun:
    """``mmcurate ARGS`` through the console-script entry point (``curate.cli.main``), in process.

    The same code path as the installed command (UserError -> one line + exit 2, typer's exit
    codes) without a new interpreter importing polars, datasets and pyarrow (~5 s per call on
    this machine); an unexpected exception propagates and fails the test with its traceback.
    ``tests/test_cli.py`` runs the real executable.
    """
    import sys

    from curate import cli

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["mmcurate", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return CliRun(code, out, err)
