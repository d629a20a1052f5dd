"""The screening panel: which text-only models are asked, how, and when an item counts as blind.

A panel is a TOML file read into frozen dataclasses. Why frozen dataclasses and a hash: the
verdicts in ``screened.parquet`` are only as meaningful as the exact panel that produced them,
so the resolved configuration (paths made absolute, defaults filled in) is hashed and that hash
travels with the results (column ``panel_hash`` and the ledger).

A panel of eight 7B-70B models served by vLLM is the same file with ``backend = "openai"``
members::

    [panel]
    name = "big"
    max_hits = 2                # MMStar: dropped when more than 2 of 8 members answer right

    [[member]]
    name = "qwen72b"
    backend = "openai"
    base_url = "http://gpu-node:8000/v1"
    model = "Qwen/Qwen2.5-72B-Instruct"
    method = "loglik"
    concurrency = 32

Errors follow scikit-learn's habit: name the file, the field, the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.config import Param, check_table, invalid, read_toml, suggest
from curate.errors import UserError

BACKENDS = ("auto", "transformers", "llamacpp", "openai", "scripted")
METHODS = ("loglik", "generate")
TEMPLATES = ("mmstar",)
DTYPES = ("float32", "bfloat16", "float16")
AT_CHANCE_POLICIES = ("count", "exclude")
ADAPTIVE = "adaptive"  # panel.rotations: rotate only what hits, stop at the first miss (see filters.screen)
#: Member fields written by ``mmcurate panel calibrate`` that describe a member but change no verdict (not hashed).
INFORMATIONAL_FIELDS = ("false_hit_rate", "recall")

#: Model references that name weights shipped in pip packages (see ``filters.backends.packaged``).
PACKAGED_PREFIX = "package:"


@dataclass(frozen=True)
class Member:
    """One panel member: a model, the backend that runs it and the way it is asked."""

    name: str
    backend: str = "auto"
    model: str = ""  # folder, GGUF file, "package:<id>", or the served model name (openai)
    gguf_file: str | None = None  # file name inside ``model`` when ``model`` is a folder of GGUFs
    base_url: str | tuple[str, ...] | None = None  # openai only: one URL, or replicas of one model (a TOML list)
    api: str = "auto"  # openai loglik: "completions", "chat" (chat completions + top_logprobs) or "auto" (probe once)
    api_key_env: str | None = None  # name of an environment variable holding the key (never the key)
    revision: str | None = None  # pins the identity of a remote model (openai) or skips hashing
    method: str = "loglik"
    shots: int = 0
    template: str = "mmstar"
    chat: bool | None = None  # generate: use the model's chat template (default: yes when it has one)
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 8
    max_new_tokens: int = 16
    n_threads: int | None = None
    n_ctx: int = 2048
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 3
    margin: float | None = None  # overrides the panel's margin for this member (``mmcurate panel calibrate``)
    false_hit_rate: float | None = None  # informational: measured on vision-needed controls at ``margin``
    recall: float | None = None  # informational: share of the MMLU controls still hit at ``margin`` (`panel calibrate`)

    @property
    def column_suffix(self) -> str:
        return self.name

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every URL in ``base_url`` (one, or the replicas), without trailing slashes."""
        urls = (self.base_url,) if isinstance(self.base_url, str) else (self.base_url or ())
        return tuple(u.rstrip("/") for u in urls)


@dataclass(frozen=True)
class Panel:
    """The members plus the verdict rule.

    ``blind`` is ``hits > max_hits``; with ``max_hit_fraction`` set instead, ``max_hits`` is
    ``floor(fraction * counted members)``. ``rotations`` > 1 asks each question with its options
    rotated that many times and counts a hit only when every rotation is right (CircularEval);
    ``"adaptive"`` (the default) asks every question once and rotates only the hits, stopping at the
    first miss: a hit needs all ``n_options`` rotations right, at a cost of one ask for most items.
    ``adaptive_depth = k`` stops the adaptive rule after ``k`` asks (the first and ``k - 1``
    rotations): each rotation cuts a guess's chance by about ``1/n`` but also costs a small member
    some of its real knowledge (it answers the same question differently when the options move),
    so fewer rotations at a larger calibrated margin can meet one false-hit rate with more recall;
    ``mmcurate panel calibrate`` prints both rates for every depth. ``None``: every rotation.
    """

    name: str
    members: tuple[Member, ...]
    max_hits: int | None = 0
    max_hit_fraction: float | None = None
    rotations: int | str = ADAPTIVE
    adaptive_depth: int | None = None
    chance_corrected: bool = True
    margin: float = 0.1
    control_size: int = 100
    at_chance: str = "count"
    rules: Any = None  # filters.rules.RuleConfig from the [rules] table (None: the rule filters' defaults)
    source: str = "<memory>"

    def threshold(self, n_members: int) -> int:
        if self.max_hit_fraction is not None:
            return int(math.floor(self.max_hit_fraction * n_members))
        return int(self.max_hits or 0)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise UserError(f"{self.source}: no panel member named {name!r}; members are {[m.name for m in self.members]}")

    def select(self, names: list[str] | None) -> Panel:
        """The same panel restricted to ``names`` (``--members a,b``), in the panel's order."""
        if not names:
            return self
        wanted = [self.member(n).name for n in names]
        return dataclasses.replace(self, members=tuple(m for m in self.members if m.name in wanted))

    def resolved(self) -> dict[str, Any]:
        """Everything that changes a verdict, as plain data (``source`` is where, not what)."""
        d = dataclasses.asdict(dataclasses.replace(self, rules=None))
        d.pop("source")
        if d["adaptive_depth"] is None:
            d.pop("adaptive_depth")  # a panel that rotates fully keeps the hash it had before depths existed
        d["rules"] = self.rules.as_dict() if self.rules is not None else None
        for m in d["members"]:
            for k in ("concurrency", "timeout", "max_retries", "batch_size", "n_threads", "api_key_env", *INFORMATIONAL_FIELDS):
                m.pop(k)  # speed and plumbing knobs do not change answers; measured rates describe, not decide
            if m["margin"] is None:
                m.pop("margin")  # a panel without per-member margins keeps the hash it had before they existed
            if m["api"] == "auto":
                m.pop("api")  # likewise for members that do not choose an API
        return d

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


OPENAI_APIS = ("auto", "completions", "chat")
_UNIT = Param((float,), low=0, high=1, open_high=True)  # a margin or a fraction: [0, 1)
_RATE = Param((float,), low=0, high=1)  # a measured rate: [0, 1]
_COUNT = Param((int,), low=1)

#: What each ``[[member]]`` key accepts (``curate.config``: one message shape for every config file).
MEMBER_SPEC: dict[str, Param] = {
    "name": Param((str,)), "backend": Param((str,), choices=BACKENDS), "model": Param((str,)),
    "gguf_file": Param((str,)), "base_url": Param((str, list)), "api": Param((str,), choices=OPENAI_APIS),
    "api_key_env": Param((str,)), "revision": Param((str,)), "method": Param((str,), choices=METHODS),
    "shots": Param((int,), choices=(0, 2)), "template": Param((str,), choices=TEMPLATES), "chat": Param((bool,)),
    "dtype": Param((str,), choices=DTYPES), "device": Param((str,)), "batch_size": _COUNT, "max_new_tokens": _COUNT,
    "n_threads": Param((int,)), "n_ctx": _COUNT, "concurrency": _COUNT, "timeout": Param((float,)),
    "max_retries": Param((int,)), "margin": _UNIT, "false_hit_rate": _RATE, "recall": _RATE,
}
#: What each ``[panel]`` key accepts.
PANEL_SPEC: dict[str, Param] = {
    "name": Param((str,)), "max_hits": Param((int,), low=0), "max_hit_fraction": _UNIT,
    "rotations": Param((int,), low=1, also=(ADAPTIVE,), hint=" (1 means no rotation)"),
    "adaptive_depth": Param((int,), low=2, hint=" (asks per hit under rotations = \"adaptive\", the first included)"),
    "chance_corrected": Param((bool,)), "margin": _UNIT,
    "control_size": Param((int,), low=0, hint=" (0 skips the competence check)"),
    "at_chance": Param((str,), choices=AT_CHANCE_POLICIES),
}

def _check_endpoints(src: str, where: str, m: dict[str, Any]) -> None:
    """``base_url``: one URL, or a list of replicas serving the same model (``filters.backends.openai_http``
    spreads requests over them and fails over when one dies). A one-entry list becomes the plain
    string, so the panel hash does not change; several become a tuple (a frozen Member stays hashable)."""
    urls = m["base_url"] if isinstance(m["base_url"], list) else [m["base_url"]]
    if not urls:
        raise UserError(f"{src}: {where}.base_url = [] names no endpoint; give one URL or a list of replicas")
    seen: set[str] = set()
    for url in urls:
        if not isinstance(url, str) or not url.strip():
            raise UserError(f"{src}: {where}.base_url entry {url!r} must be a URL string such as \"http://127.0.0.1:8000/v1\"")
        if not url.startswith(("http://", "https://")):
            raise UserError(f"{src}: {where}.base_url entry {url!r} must start with http:// or https://")
        key = url.rstrip("/")
        if key in seen:
            raise UserError(f"{src}: {where}.base_url names {url!r} twice; list each replica once")
        seen.add(key)
    m["base_url"] = urls[0] if len(urls) == 1 else tuple(urls)


def _resolve_model(src: str, base: Path, where: str, m: dict[str, Any]) -> None:
    """Make local model paths absolute (relative to the panel file) and check they exist."""
    model = m.get("model", "")
    if m["backend"] == "openai":
        if not m.get("base_url"):
            raise UserError(f"{src}: {where} uses backend 'openai' but has no base_url; add e.g. base_url = \"http://127.0.0.1:8000/v1\"")
        if not model:
            raise UserError(f"{src}: {where}.model is empty; give the model name the server serves")
        _check_endpoints(src, where, m)
        return
    if m.get("api", "auto") != "auto":
        raise UserError(f"{src}: {where}.api is only used with backend = 'openai' (backend is {m['backend']!r}); remove it")
    if m["backend"] == "scripted" and model.lstrip().startswith("{"):
        return  # an inline script (filters.backends.scripted); a script file is resolved like any model path
    if m.get("base_url"):
        raise UserError(f"{src}: {where}.base_url is only used with backend = 'openai' (backend is {m['backend']!r}); remove it or set backend = \"openai\"")
    if not model:
        raise UserError(f"{src}: {where}.model is empty; give a local model folder, a .gguf file or 'package:<id>'")
    if model.startswith(PACKAGED_PREFIX):
        from filters.backends.packaged import PACKAGED

        key = model[len(PACKAGED_PREFIX):]
        if key not in PACKAGED:
            raise UserError(f"{src}: {where}.model = {model!r} names no packaged model; known: {[PACKAGED_PREFIX + k for k in PACKAGED]}{suggest(key, PACKAGED)}")
        return
    path = Path(os.path.expanduser(model))
    if not path.is_absolute():
        path = (base / path).resolve()
    if not path.exists():
        raise UserError(f"{src}: {where}.model = {model!r}: no such file or folder ({path}); fix the path or use 'package:<id>'")
    m["model"] = str(path)
    if m.get("gguf_file") and not (path / m["gguf_file"]).is_file():
        raise UserError(f"{src}: {where}.gguf_file = {m['gguf_file']!r} not found in {path}")


def panel_from_dict(data: dict[str, Any], *, source: str = "<memory>", base: Path | None = None) -> Panel:
    """Validate a parsed panel.toml and build the frozen :class:`Panel`."""
    src = source
    base = base or Path.cwd()
    unknown_top = set(data) - {"panel", "member", "rules"}
    if unknown_top:
        k = sorted(unknown_top)[0]
        raise UserError(f"{src}: unknown table [{k}]{suggest(k, ['panel', 'member', 'rules'])}; a panel file has [panel], [[member]] and [rules] entries")
    rules = None
    if "rules" in data:
        from filters.rules import RuleConfig

        rules = RuleConfig.from_dict({"rules": data["rules"]}, source=src)
    if not isinstance(data.get("panel", {}), dict):
        raise invalid(src, "panel", data["panel"], "write it as a [panel] section")
    head = dict(data.get("panel", {}))
    check_table(src, "panel", head, PANEL_SPEC)
    if "max_hits" in head and "max_hit_fraction" in head:
        raise UserError(f"{src}: panel sets both max_hits and max_hit_fraction; keep one of them")
    if "max_hit_fraction" in head:
        head["max_hits"] = None
    if "adaptive_depth" in head and head.get("rotations", ADAPTIVE) != ADAPTIVE:
        raise invalid(src, "panel.adaptive_depth", head["adaptive_depth"],
                      f'it applies only to rotations = "adaptive" (this panel has rotations = {head["rotations"]!r})')
    raw_members = data.get("member", [])
    if not isinstance(raw_members, list) or not raw_members:
        raise UserError(f"{src}: the panel has no members; add at least one [[member]] table with name and model")
    members = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_members, 1):
        where = f"member[{i}]" + (f" ({raw.get('name')})" if isinstance(raw, dict) and raw.get("name") else "")
        if not isinstance(raw, dict):
            raise UserError(f"{src}: {where} must be a [[member]] table")
        m = dict(raw)
        if m.get("backend") == "scripted" and isinstance(m.get("model"), dict):  # an inline script (tests)
            m["model"] = json.dumps(m["model"], sort_keys=True, separators=(",", ":"))
        check_table(src, where, m, MEMBER_SPEC)
        if not m.get("name"):
            raise UserError(f"{src}: {where} has no name; add name = \"...\" (it names the columns answer__<name>, ...)")
        if not all(c.isalnum() or c in "_-." for c in m["name"]):
            raise invalid(src, f"{where}.name", m["name"], "it may only hold letters, digits, '_', '-' and '.'")
        if m["name"] in seen:
            raise invalid(src, f"{where}.name", m["name"], "it is used twice; member names must be unique")
        seen.add(m["name"])
        m.setdefault("backend", "auto")
        _resolve_model(src, base, where, m)
        members.append(Member(**m))
    return Panel(members=tuple(members), source=src, rules=rules, name=head.pop("name", Path(src).stem), **head)


def load_panel(path: str | Path | None = None) -> Panel:
    """Read a panel file; ``None`` loads the default offline panel shipped in ``data/``."""
    if path is None:
        from curate.assets import asset_path

        path = asset_path("panel.toml")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: panel file not found; pass --panel with a panel.toml (see data/panel.toml for an example)")
    data = read_toml(path, "panel")
    return panel_from_dict(data, source=str(path), base=path.parent)
