"""Typed configuration: nested frozen dataclasses built from TOML or dicts, validated once.

``dataclass_from_dict`` rejects unknown keys and wrong types with a message that
names the full key (``train.learning_rate``), so a typo fails before any work starts.
The privacy ledger reads its JSON with the same loader, so files and configs are
held to one set of rules.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from recsys_core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

T = TypeVar("T")

#: Per-type functions that rewrite a raw value before it is checked, for formats that spell a value their own way.
Decoders = Mapping[Any, Callable[[Any], Any]]


class ConfigKeyError(ConfigError):
    """A :class:`ConfigError` about one key, which keeps the key and the reason apart for callers that
    report them in their own words (the privacy ledger names the file, then the field)."""

    def __init__(self, key: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{key}: {reason}")
        self.key = key
        self.reason = reason


def read_toml(path: str | Path) -> dict[str, Any]:
    """Reads a TOML file; a missing or malformed file is one clear :class:`ConfigError`."""
    path = Path(path)
    try:
        # A byte-order mark (Windows editors write one) is not TOML, but it is no reason to refuse the file.
        return tomllib.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; --config takes a TOML file such as "
                          "simulations/configs/ml-100k/neumf.toml") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot be read (permission denied)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a TOML text file (byte {error.start} is not UTF-8)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected))


def _convert(value: Any, expected: Any, key: str, decoders: Decoders, finite: bool = False) -> Any:
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key, decoders, finite)
            except ConfigError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigKeyError(key, f"{value!r} has the wrong type")
    if origin is typing.Literal:
        allowed = typing.get_args(expected)
        if value not in allowed:
            raise ConfigKeyError(key, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigKeyError(key, f"expected a list, got {value!r}")
        item_type = typing.get_args(expected)[0]
        return tuple(_convert(item, item_type, f"{key}[{index}]", decoders, finite)
                     for index, item in enumerate(value))
    if origin is dict or expected is dict:
        if not isinstance(value, dict):
            raise ConfigKeyError(key, f"expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(expected):
        if not isinstance(value, dict):
            raise ConfigKeyError(key, f"expected a table, got {value!r}")
        return dataclass_from_dict(typing.cast(type, expected), value, prefix=f"{key}.", decoders=decoders,
                                   finite=finite)
    if expected in decoders:
        value = decoders[expected](value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is Any:
        return value
    if isinstance(expected, type):
        if isinstance(value, bool) and expected is not bool:
            raise ConfigKeyError(key, f"expected {_type_name(expected)}, got {value!r}")
        if not isinstance(value, expected):
            raise ConfigKeyError(key, f"expected {_type_name(expected)}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            # TOML integers are 64-bit; a longer one (--set accepts it) would run a round count forever.
            raise ConfigKeyError(key, f"{value} does not fit in 64 bits; give a smaller number")
        if isinstance(value, float) and math.isnan(value):
            # NaN passes no comparison, so a range check below would let it through; no setting means NaN.
            raise ConfigKeyError(key, "is NaN; give a number")
    return value


#: ``dataclasses.field`` metadata key of a float setting for which infinity means something (``inf``: no budget).
ALLOWS_INFINITY = "allows_infinity"


def dataclass_from_dict(cls: type[T], values: dict[str, Any], prefix: str = "", *,
                        decoders: Decoders | None = None, finite: bool = False) -> T:
    """Builds dataclass ``cls`` from ``values``, recursing into nested dataclasses and tuples of them.

    Missing keys keep their defaults; a missing key without a default, unknown keys and
    mistyped values raise :class:`ConfigKeyError` naming the full key. ``decoders`` maps a
    type to a function applied to each raw value of that type before it is checked.
    ``finite`` (settings, not records): an infinite float is refused too, except in a
    field whose metadata has :data:`ALLOWS_INFINITY`.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = [field for field in dataclasses.fields(cls) if field.init]
    known = {field.name for field in fields}
    unknown = sorted(set(values) - known)
    if unknown:
        names = ", ".join(prefix + name for name in unknown)
        known_keys = ", ".join(prefix + name for name in sorted(known))
        raise ConfigKeyError(prefix + unknown[0], f"unknown key; known keys here: {known_keys}",
                             f"unknown config key(s) {names}; known keys here: {known_keys}")
    for field in fields:
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and field.name not in values:
            raise ConfigKeyError(prefix + field.name, "missing")
    converted = {name: _convert(value, hints[name], prefix + name, decoders or {}, finite)
                 for name, value in values.items()}
    for field in fields if finite else ():
        value = converted.get(field.name)
        if isinstance(value, float) and math.isinf(value) and not field.metadata.get(ALLOWS_INFINITY):
            # An infinite rate, norm or fraction passes every "> 0" check and then poisons training.
            raise ConfigKeyError(prefix + field.name, f"is {value}; give a finite number")
    return cls(**converted)


def dataclass_to_dict(instance: Any, encode: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Plain dict (tuples as lists) of a dataclass, for JSON run records.

    ``encode`` rewrites each value that is not a list or dict, for formats that spell a value their own way.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value if encode is None else encode(value)

    return plain(dataclasses.asdict(instance))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``section.key=value`` (value in TOML syntax, bare words as strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``values`` with each ``section.key=value`` override set."""
    result: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value
                              for key, value in values.items()}
    for override in overrides:
        path, value = parse_override(override)
        table = result
        for part in path[:-1]:
            nested = table.get(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"override {override!r}: {part} is not a table")
            table[part] = dict(nested)
            table = table[part]
        table[path[-1]] = value
    return result
