"""A generic typed-YAML loader: a config file read as plain data (`read_config_file`), then built into
frozen dataclasses (`build_section`), checked once, with one line naming the key on any mistake
(`select.clip_seconds: must be > 0, got -1`).

Pipeline configs (`pvtbuild.config.sections`) and training configs (`pvtbuild.train.config`) are both
built this way. The types a field may have: bool, int (within +-2^63: numpy seeds, torch), float
(finite unless its default is infinite), str, Literal, Optional, tuple, dict and nested dataclasses;
a dataclass with a `from_name(name, key)` classmethod also takes a string, which it looks up (an
instrument by its name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Union

from pvtbuild.config.yaml_file import load_config_yaml
from pvtbuild.errors import ConfigError, brief

MAX_INT = 2**63  # every integer of a config fits int64 (numpy seeds, torch), or is refused at load


@contextlib.contextmanager
def naming_file(path: Path, overridden: Iterable[str] = ()) -> Iterator[None]:
    """Prefix a `ConfigError` raised in the block with the config file it is about (`FILE: key: reason`),
    unless it is about a key in `overridden` (a command-line option: the file is not to blame)."""
    try:
        yield
    except ConfigError as e:
        if str(e).startswith(tuple(f"{key}:" for key in overridden)):
            raise
        raise ConfigError(f"{path}: {e}") from None


def read_config_file(p: Path, what: str) -> dict[str, Any]:
    """A YAML config file as a mapping of sections (`name` defaults to the file's stem); one line on any mistake."""
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    data = load_config_yaml(p) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", p.stem)
    return data


def config_hash(section: Any) -> str:
    """A short stable hash of a config section: part of every manifest row, so a changed config is noticed."""
    blob = json.dumps(to_plain(section), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require(ok: bool, key: str, msg: str) -> None:
    """Raise `ConfigError("KEY: MSG")` unless `ok`: every range check of a section, one line naming its key."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def to_plain(obj: Any) -> Any:
    """A config (dataclasses, tuples, dicts) as plain JSON data: what manifests hash and datasets record."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def build_section(cls: type, data: Any, key: str) -> Any:
    """The dataclass `cls` built from the mapping `data` (a section of a config file at `key`, "" for the
    whole file), every value coerced to its field's type; a `ConfigError` naming the key on an unknown key
    or a value of the wrong type. Range checks are the section's own (`check`)."""
    where = key or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ConfigError(f"{_join(key, unknown[0])}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, _join(key, name)) for name, value in data.items()}
    for f in dataclasses.fields(cls):
        value = kwargs.get(f.name)
        if isinstance(value, float) and math.isinf(value) and not _infinite_default(f):
            raise ConfigError(f"{_join(key, f.name)}: must be a finite number, got {value}")
    return cls(**kwargs)


def _infinite_default(f: dataclasses.Field) -> bool:
    """Whether a float field may be infinite: only where its default is (EDM's S_max), never elsewhere
    (`clip_seconds: .inf` or `lr: .inf` once passed the range checks and failed late or trained NaN)."""
    return isinstance(f.default, float) and math.isinf(f.default)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp`, or a `ConfigError` naming `key`; messages are formatted only when raised
    (a value may be huge: formatting it on every call once made a YAML bomb hang)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        _expect(isinstance(value, (str, int, float, bool, type(None))) and value in args, key,
                f"one of {', '.join(map(str, args))}", value)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "from_name"):  # a section that may be named (an instrument)
            return tp.from_name(value, key)
        return build_section(tp, value, key)
    if origin is tuple:
        _expect(isinstance(value, (list, tuple)), key, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        _expect(len(value) == len(args), key, f"a list of {len(args)} items", value)
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _expect(isinstance(value, dict), key, "a mapping", value)
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        _expect(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        _expect(-MAX_INT <= value < MAX_INT, key, "an integer within +-2^63", value)
        return value
    if tp is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        _expect(not math.isnan(value), key, "a number", value)
        return float(value)
    if tp is str:
        _expect(isinstance(value, str), key, "a string", value)
        return value
    raise TypeError(f"config type {tp!r} at {key} is not supported")  # a bug, not a user mistake


def _expect(ok: bool, key: str, what: str, value: Any) -> None:
    """Raise `key: must be WHAT, got VALUE` (VALUE cut short) unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: must be {what}, got {brief(value)}")
