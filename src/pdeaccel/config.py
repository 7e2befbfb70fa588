"""Nested configuration dictionaries: dotted overrides with strict checking, hashing, YAML.

Experiments are plain nested dicts (so they print, diff and serialise trivially). A user changes
them from the command line with ``key.sub=value``; every key must already exist (unknown keys fail
with a "did you mean" suggestion) and the value is parsed to the type of the default.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import yaml

from . import _checks


class ConfigError(ValueError):
    """A configuration key or value is not acceptable; the message says which and what is allowed."""


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _parse_value(text: str, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false).")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer (default {default}).") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number (default {default}).") from None
    if default is None or isinstance(default, (list, tuple)):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}={text!r}: not a valid value ({str(exc).splitlines()[0]}).") from None
        if isinstance(default, (list, tuple)) and not isinstance(value, list):
            raise ConfigError(f"{key}={text!r}: expected a list such as [1, 2] (default {list(default)}).")
        return value
    return text


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str],
                    keys_hint: str = "Run `pdeaccel experiments NAME` to list the keys.") -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``"a.b=value"`` overrides applied (keys must exist).

    ``keys_hint`` ends the message for an unknown key: where the user finds the valid keys.
    """
    out = copy.deepcopy(dict(cfg))
    known = flatten(out)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=10).")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint} {keys_hint}")
        value = _parse_value(text, known[key], key)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return out


def config_hash(cfg: Mapping[str, Any], length: int = 16) -> str:
    """Stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def to_yaml(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False)


def require(cond: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` naming the key, the value and what is allowed unless ``cond``."""
    if not cond:
        raise ConfigError(f"config key {key!r} has value {value!r}; allowed: {allowed}.")


@dataclass(frozen=True)
class Allowed:
    """What one config key may hold: ``check(key, value)`` raises :class:`~pdeaccel._checks.ArgumentError`
    when the value is not allowed, and ``text`` says what is, in the words of the error message."""

    check: Callable[[str, Any], Any]
    text: str


def _note(text: str, note: str) -> str:
    return f"{text} ({note})" if note else text


def integer_in(minimum: int | None = None, maximum: int | None = None, note: str = "") -> Allowed:
    """An integer (never a bool) within ``[minimum, maximum]`` (either may be open)."""
    text = "an integer" + _checks.bounds_text(minimum, maximum)
    return Allowed(lambda k, v: _checks.integer(k, v, minimum=minimum, maximum=maximum), _note(text, note))


def number_in(minimum: float | None = None, maximum: float | None = None, *, positive: bool = False,
              note: str = "") -> Allowed:
    """A finite real number (never a bool), ``> 0`` with ``positive``, within ``[minimum, maximum]``."""
    text = ("a finite number > 0" if positive else "a finite number") + _checks.bounds_text(minimum, maximum)
    return Allowed(lambda k, v: _checks.real(k, v, minimum=minimum, maximum=maximum, positive=positive),
                   _note(text, note))


def one_of(*options: Any, note: str = "") -> Allowed:
    return Allowed(lambda k, v: _checks.choice(k, v, options), _note(", ".join(str(o) for o in options), note))


def flag(note: str = "") -> Allowed:
    return Allowed(lambda k, v: _checks.flag(k, v), _note("true or false", note))


def check_ranges(cfg: Mapping[str, Any], ranges: Mapping[str, Allowed]) -> None:
    """Check every key of ``ranges`` (dotted names) that ``cfg`` holds against its declared range;
    the first value out of range raises :class:`ConfigError` naming the key, the value and what is
    allowed. An experiment declares its ranges next to its config dict and checks the relations
    between keys (which a per-key range cannot express) with :func:`require`."""
    flat = flatten(cfg)
    for key, allowed in ranges.items():
        if key in flat:
            try:
                allowed.check(key, flat[key])
            except _checks.ArgumentError:
                raise ConfigError(f"config key {key!r} has value {flat[key]!r}; allowed: {allowed.text}.") from None

