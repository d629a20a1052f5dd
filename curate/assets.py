"""Locate the files shipped in the ``data`` package (taxonomy, demo pool, default panel)."""

from __future__ import annotations

from pathlib import Path

import data as _data_pkg


def data_dir() -> Path:
    """The folder of shipped assets, in a source checkout or an installed wheel alike."""
    path = Path(_data_pkg.__file__).resolve().parent
    if not (path / "taxonomy.toml").is_file():  # another top-level "data" package shadowed ours
        raise RuntimeError(f"{path} is not mmcurate's data folder (taxonomy.toml missing)")
    return path


def asset_path(*parts: str) -> Path:
    return data_dir().joinpath(*parts)
