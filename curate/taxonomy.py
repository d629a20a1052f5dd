"""MMStar's 6 capabilities x 18 dimensions, loaded from ``data/taxonomy.toml`` into typed objects.

The released strings are the contract with MMStar's own files (its ``category`` and
``l2_category`` columns), so a typo in the TOML is an error at load time, not a silent
new dimension.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from curate.assets import asset_path
from curate.errors import UserError


@dataclass(frozen=True)
class Dimension:
    name: str
    capability: str
    description: str


@dataclass(frozen=True)
class Capability:
    name: str
    description: str
    dimensions: tuple[Dimension, ...]


@dataclass(frozen=True)
class SourceMapping:
    benchmark: str
    sources: tuple[str, ...]
    categories: dict[str, str] = field(hash=False)


@dataclass(frozen=True, eq=False)  # identity hash: cheap as a cache key in the per-row path
class Taxonomy:
    capabilities: tuple[Capability, ...]
    mappings: tuple[SourceMapping, ...]

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        return tuple(d for c in self.capabilities for d in c.dimensions)

    def capability_of(self, dimension: str) -> str:
        for d in self.dimensions:
            if d.name == dimension:
                return d.capability
        raise KeyError(dimension)

    def map_category(self, source: str, *categories: str | None) -> str | None:
        """The dimension a source's own category maps to, or None when no mapping is clear.

        ``categories`` are tried in order (e.g. l2 category first, then category).
        """
        src = (source or "").lower()
        for mapping in self.mappings:
            if not any(s in src for s in mapping.sources):
                continue
            for cat in categories:
                for key in _keys(cat):
                    if key in mapping.categories:
                        return mapping.categories[key]
        return None


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def _keys(category: str | None) -> list[str]:
    if not category:
        return []
    keys = [_norm(category)]
    if ":" in category:  # "Coarse Perception: Image Style" -> "image style"
        keys.append(_norm(category.rsplit(":", 1)[1]))
    return keys


EXPECTED = {
    "coarse perception": ["image scene and topic", "image style & quality", "image emotion"],
    "fine-grained perception": ["recognition", "object counting", "localization"],
    "instance reasoning": [
        "single-instance reasoning",
        "cross-instance attribute reasoning",
        "cross-instance relation reasoning",
    ],
    "logical reasoning": ["diagram reasoning", "common reasoning", "code & sequence reasoning"],
    "science & technology": [
        "biology & chemistry & physics",
        "geography & earth science & agriculture",
        "electronics & energy & mechanical eng.",
    ],
    "math": ["geometry", "statistical reasoning", "numeric commonsense and calculation"],
}


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Parse and validate a taxonomy file (default: the shipped MMStar taxonomy)."""
    path = Path(path) if path else asset_path("taxonomy.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: cannot read taxonomy ({exc})") from exc
    caps = []
    for i, c in enumerate(raw.get("capability", []), 1):
        try:
            dims = tuple(Dimension(d["name"], c["name"], d.get("description", "")) for d in c["dimension"])
            caps.append(Capability(c["name"], c.get("description", ""), dims))
        except KeyError as exc:
            raise UserError(f"{path}: capability #{i} lacks field {exc}") from exc
    names = {c.name: [d.name for d in c.dimensions] for c in caps}
    if path == asset_path("taxonomy.toml") and names != EXPECTED:
        raise UserError(f"{path}: capabilities/dimensions differ from MMStar's released strings: {names}")
    known = {d for ds in names.values() for d in ds}
    mappings = []
    for m in raw.get("mapping", []):
        cats = {}
        for key, dim in m.get("categories", {}).items():
            if dim not in known:
                raise UserError(f"{path}: mapping {m.get('benchmark')!r} maps {key!r} to unknown dimension {dim!r}")
            cats[_norm(key)] = dim
        mappings.append(SourceMapping(m["benchmark"], tuple(s.lower() for s in m["sources"]), cats))
    return Taxonomy(tuple(caps), tuple(mappings))


@functools.cache
def default_taxonomy() -> Taxonomy:
    return load_taxonomy()
