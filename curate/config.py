"""One way to read and check the TOML files a user writes (pipeline, panel, rules).

Why one module: a typo in a config file must stop the run with the same kind of message wherever it
is -- the file, the parameter, the value given, and the fix (scikit-learn's ``InvalidParameterError``
style) -- never a bare ``ValueError`` traceback from deep inside a stage. The CLI prints the
``UserError`` as one line and exits 2.

A *spec* maps each allowed key to a :class:`Param` (accepted types, optional choices and bounds).
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UserError


@dataclass(frozen=True)
class Param:
    """What one key accepts. ``types``: Python types (``float`` also takes an int, never a bool);
    ``choices``: the allowed values; ``low``/``high``: bounds for numbers, inclusive unless
    ``open_low``/``open_high``; ``each``: the element type of a list; ``items``: the values a list may
    hold, ``min_items`` how many it needs at least; ``also``: literal values accepted besides the typed
    ones (``rotations``: an integer or ``"adaptive"``); ``hint``: appended to the description (an
    example, or what a special value means).

    One spec type for the three config files (pipeline, panel, rules) is what makes their messages
    one shape: ``FILE: PARAM = VALUE is invalid; it must be WHAT (did you mean 'X'?)``."""

    types: tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    each: type | None = None
    open_low: bool = False
    open_high: bool = False
    items: tuple[Any, ...] | None = None
    min_items: int = 0
    also: tuple[Any, ...] = ()
    hint: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices) + self.hint
        if self.items is not None:
            size = "non-empty " if self.min_items else ""
            return f"a {size}list of values from " + ", ".join(repr(c) for c in self.items) + self.hint
        names = " or ".join(_type_name(t, self.each) for t in self.types)
        bounds = ""
        if self.low is not None and self.high is not None:
            bounds = f" in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        elif self.low is not None:
            bounds = f" {'>' if self.open_low else '>='} {self.low}"
        elif self.high is not None:
            bounds = f" {'<' if self.open_high else '<='} {self.high}"
        article = "an" if names[:1] in "aeiou" else "a"
        extra = "".join(f" or {a!r}" for a in self.also)
        return f"{article} {names}{bounds}{extra}{self.hint}"

    def in_range(self, value: float) -> bool:
        """Whether a number lies within ``low``/``high`` (with their openness)."""
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return True


def _type_name(t: type, each: type | None) -> str:
    if t is list and each is not None:
        return f"list of {each.__name__}"
    return {str: "string", int: "integer", float: "number", bool: "boolean (true/false)", list: "list",
            dict: "table"}.get(t, t.__name__)


def suggest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _accepts(param: Param, value: Any) -> bool:
    if isinstance(value, bool):
        return bool in param.types
    for t in param.types:
        if t is float and isinstance(value, (int, float)):
            return True
        if isinstance(value, t):
            if t is list and param.each is not None:
                return all(isinstance(v, param.each) and not (isinstance(v, bool) and param.each is not bool) for v in value)
            return True
    return False


def _is_also(param: Param, value: Any) -> bool:
    return any(type(value) is type(a) and value == a for a in param.also)


def invalid(src: str, name: str, value: Any, fix: str) -> UserError:
    """The one message shape for a bad value, for checks a :class:`Param` cannot express (a value that
    depends on another key): ``FILE: PARAM = VALUE is invalid; FIX``. Returned, for the caller to raise."""
    return UserError(f"{src}: {name} = {value!r} is invalid; {fix}")


def check_value(src: str, where: str, key: str, value: Any, param: Param) -> Any:
    """``value`` if ``param`` accepts it; else a ``UserError`` naming file, parameter, value and fix."""
    name = f"{where}.{key}" if where else key
    if _is_also(param, value):
        return value
    if not _accepts(param, value) or (param.choices is not None and value not in param.choices):
        hint = ""
        if isinstance(value, str) and (param.choices is not None or param.also):
            hint = suggest(value, param.choices if param.choices is not None else param.also)
        raise invalid(src, name, value, f"it must be {param.describe()}{hint}")
    if isinstance(value, list) and param.items is not None:
        bad = [v for v in value if v not in param.items]
        if bad:
            raise invalid(src, name, value, f"it must be {param.describe()}; {bad[0]!r} is not one of them"
                                            f"{suggest(bad[0], param.items)}")
    if isinstance(value, list) and len(value) < param.min_items:
        raise invalid(src, name, value, f"it must be {param.describe()}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not param.in_range(value):
        raise UserError(f"{src}: {name} = {value!r} is out of range; it must be {param.describe()}")
    return value


def check_table(src: str, where: str, table: dict[str, Any], spec: dict[str, Param]) -> dict[str, Any]:
    """Check every key of ``table`` against ``spec``: unknown keys (with the closest valid one) and
    bad values are errors; returns the table unchanged."""
    for key, value in table.items():
        if key not in spec:
            # A TOML section prints as [name]; an entry of an array of tables as it is ("member[2] (qwen)").
            section = (f" in [{where}]" if where.isidentifier() else f" in {where}") if where else ""
            raise UserError(f"{src}: unknown key {key!r}{section}{suggest(key, spec)}; valid keys: {', '.join(spec)}")
        check_value(src, where, key, value, spec[key])
    return table


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error is a one-line ``UserError``."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what} file ({type(exc).__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the syntax there") from None
