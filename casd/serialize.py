"""Dataclasses <-> JSON values, exactly: ``from_dict(C, json.loads(json.dumps(to_dict(c)))) == c``.

``to_dict`` writes tuples as lists and paths as strings; ``from_dict`` reads them back by the
dataclass's type hints (nested dataclasses, ``X | None``, tuples, ``Path``, int, float, str,
bool), so a config file needs no type tags. Missing fields keep their defaults; unknown fields
and values of the wrong type or range are a ConfigError that names the field.
"""
from __future__ import annotations

import json
import os
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from casd.errors import ConfigError

__all__ = ["to_dict", "from_dict", "flatten"]


def to_dict(obj: Any) -> Any:
    """A dataclass (recursively) as JSON values: tuples become lists, paths strings."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


T = TypeVar("T")


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` (a JSON value) as the type ``hint`` says, or a ConfigError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """A ``cls`` dataclass from JSON values: missing fields keep their defaults, unknown ones
    and values of the wrong type or range are a ConfigError that names the field by its dotted
    path below ``where`` (e.g. ``train.epochs``)."""
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected an object of {cls.__name__} fields, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in known.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], f"{where}.{name}" if where else name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{label}: {name} is required")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from exc


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested JSON values by dotted name: {"train": {"lr": 1}} -> {"train.lr": 1}; tuples -> lists."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.loads(json.dumps(to_dict(value)))
    return flat
