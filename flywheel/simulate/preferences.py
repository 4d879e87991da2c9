"""Preference specs: what a simulated population likes, read from a TOML file.

A preference is a list of weighted rules plus a rating policy. It lives in a file so that a new
preference (a different population, a deliberately reversed one for a worse canary) needs a new
file and no code. The loader is strict: an unknown key or a bad value is one ``PreferenceError``
line naming the file and the key, never a silently ignored typo.

File format::

    name = "default"
    description = "..."

    [rating]                    # all optional; see RatingPolicy
    threshold = 0.6
    temperature = 0.0
    noise = 0.05
    rating_probability = 0.7
    adversarial_fraction = 0.05

    [[rules]]
    name = "cites_source"       # unique; reported per version
    kind = "citation"           # length | contains | forbids | pattern | forbid_pattern | citation | politeness | fact
    weight = 2.0                # > 0
    negate = false              # optional: the rule holds when its check fails
    # ...the kind's own fields (see flywheel/simulate/rules.py)
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from flywheel.simulate.rating import RatingPolicy
from flywheel.simulate.rules import RULE_KINDS, LengthRule, Rule

DATA_PACKAGE = "flywheel.simulate.data"
_TOP_KEYS = {"name", "description", "rating", "rules"}
_REGEX_FIELDS = {"regex"}


class PreferenceError(ValueError):
    """A preference file that cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Preference:
    """A named list of weighted rules and how their score becomes a rating."""

    name: str
    rules: tuple[Rule, ...]
    rating: RatingPolicy
    description: str = ""
    source: str = ""

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)


def preset_path(name: str) -> Path:
    """A shipped preference file (``default``, ``reversed``) as a path."""
    path = Path(str(resources.files(DATA_PACKAGE).joinpath(f"{name}.toml")))
    if not path.is_file():
        raise PreferenceError(f"no shipped preference named {name!r}")
    return path


def load_preference(path: Path | str | None = None) -> Preference:
    """Read and validate a preference file (default: the shipped ``default.toml``)."""
    path = Path(path) if path is not None else preset_path("default")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PreferenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PreferenceError(f"{path}: not valid TOML: {exc}") from None
    return parse_preference(data, str(path))


def parse_preference(data: dict[str, Any], source: str = "<preference>") -> Preference:
    """Validate an already-parsed TOML document."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PreferenceError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    name = _check(str, data.get("name", Path(source).stem), source, "name")
    description = _check(str, data.get("description", ""), source, "description")
    rating = _rating(_check(dict, data.get("rating", {}), source, "rating"), source)
    raw_rules = _check(list, data.get("rules", []), source, "rules")
    if not raw_rules:
        raise PreferenceError(f"{source}: needs at least one [[rules]] entry")
    rules = tuple(_rule(r, source, f"rules[{i}]") for i, r in enumerate(raw_rules))
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise PreferenceError(f"{source}: two rules are named {rule.name!r}")
        seen.add(rule.name)
    return Preference(name=name, rules=rules, rating=rating, description=description, source=source)


def _rating(table: dict[str, Any], source: str) -> RatingPolicy:
    values = _fields(RatingPolicy, table, source, "rating")
    try:
        return RatingPolicy(**values)
    except ValueError as exc:
        raise PreferenceError(f"{source}: rating: {exc}") from None


def _rule(raw: Any, source: str, where: str) -> Rule:
    table = dict(_check(dict, raw, source, where))
    kind = table.pop("kind", None)
    if kind not in RULE_KINDS:
        raise PreferenceError(f"{source}: {where}.kind must be one of {', '.join(RULE_KINDS)}, got {kind!r}")
    if "name" not in table:
        raise PreferenceError(f"{source}: {where} needs a name")
    cls = RULE_KINDS[kind]
    values = _fields(cls, table, source, where)
    where = f"{where} ({values['name']})"
    if values.get("weight", 1.0) <= 0:
        raise PreferenceError(f"{source}: {where}.weight must be > 0")
    for key in ("phrases", "markers"):
        if key in values and not values[key]:
            raise PreferenceError(f"{source}: {where}.{key} must not be empty")
    for key in _REGEX_FIELDS & set(values):
        try:
            re.compile(values[key])
        except re.error as exc:
            raise PreferenceError(f"{source}: {where}.{key} is not a valid regex: {exc}") from None
    if kind in ("pattern", "forbid_pattern") and not values.get("regex"):
        raise PreferenceError(f"{source}: {where} needs a regex")
    if kind in ("contains", "forbids") and "phrases" not in values:
        raise PreferenceError(f"{source}: {where} needs phrases")
    if cls is LengthRule:
        _check_length(values, source, where)
    if values.get("min_count", 1) < 1:
        raise PreferenceError(f"{source}: {where}.min_count must be >= 1")
    return cls(**values)


def _check_length(values: dict[str, Any], source: str, where: str) -> None:
    low, high = values.get("min_words", 0), values.get("max_words")
    if "min_words" not in values and high is None:
        raise PreferenceError(f"{source}: {where} needs min_words or max_words")
    if low < 0 or (high is not None and high < low):
        raise PreferenceError(f"{source}: {where} needs 0 <= min_words <= max_words")


def _fields(cls: type, table: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    """Check every key of ``table`` against the dataclass's fields and their types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise PreferenceError(f"{source}: {where}: unknown key {key!r} (allowed: {', '.join(sorted(names))})")
        out[key] = _coerce(hints[key], value, source, f"{where}.{key}")
    return out


def _coerce(hint: Any, value: Any, source: str, where: str) -> Any:
    """The value as the field's type wants it (TOML arrays become tuples), or a PreferenceError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, source, where)
    if origin is typing.Literal:
        if value not in args:
            raise PreferenceError(f"{source}: {where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        items = _check(list, value, source, where)
        return tuple(_check(args[0], item, source, f"{where}[{i}]") for i, item in enumerate(items))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return _check(hint, value, source, where)


def _check(kind: type, value: Any, source: str, where: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise PreferenceError(f"{source}: {where} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value
