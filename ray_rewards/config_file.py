"""The config-file loader: a YAML (or JSON) mapping -> a dataclass, type-checked.

Every settings file goes through here (the cluster jobs' files and
``TrainConfig.from_file``, i.e. ``ray-rewards train CONFIG``), so one set of rules
applies: unknown and missing keys are errors naming them; every value must fit its
field's type hint (YAML lists become tuples where the field is a tuple, ints become
floats where it is a float); fields marked ``field(metadata=PATH_FIELD)`` are paths, and a
relative local path is resolved against the config file's folder (``~`` expanded,
URIs kept as they are).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ray_rewards import storage

PATH_FIELD: Mapping[str, bool] = types.MappingProxyType({"path": True})
"""Field metadata marking a settings field as a path: ``field(metadata=PATH_FIELD)``."""


def read_file(path: storage.PathLike) -> Any:
    """The parsed content of a YAML (or JSON) file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid YAML (the message names the file).
    """
    import yaml

    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{os.fspath(path)}: not valid YAML/JSON: {err}") from None


def require_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else ValueError naming ``where`` and what came."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(value).__name__}")
    return value


def resolve_path(path: str, base_dir: str) -> str:
    """URIs as they are; ``~`` expanded; relative paths joined to ``base_dir``."""
    if storage.is_uri(path):
        return path
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def path_fields(cls: type) -> tuple[str, ...]:
    """The fields of dataclass ``cls`` marked as paths (``field(metadata=PATH_FIELD)``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("path"))


def build_settings(
    cls: type,
    values: Any,
    *,
    prefix: str = "",
    source: str | None = None,
    base_dir: str | None = None,
    exclude: Sequence[str] = (),
) -> Any:
    """``cls(**values)`` for a dataclass, after checking names and types of the values.

    Args:
        cls: the settings dataclass.
        values: its fields by name (a mapping).
        prefix: the section the values come from; errors name keys ``prefix.key``.
        source: the file the values come from; errors start with it.
        base_dir: relative paths in path fields are joined to it (None: kept as given).
        exclude: fields the caller sets itself; the values may not hold them.

    Raises:
        ValueError: not a mapping, unknown or missing keys, or ``cls`` refused a value.
        TypeError: a value that does not fit its field's type.
    """
    where = ": ".join(p for p in (source, prefix) if p) or cls.__name__
    values = require_mapping(values, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown config fields {unknown}; known: {sorted(fields)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{where}: missing required keys {missing}")
    hints = typing.get_type_hints(cls)
    key = f"{source}: " if source else ""
    kwargs = {
        name: _check_type(v, hints[name], key + (f"{prefix}.{name}" if prefix else name))
        for name, v in values.items()
    }
    if base_dir is not None:
        for name in set(path_fields(cls)) & set(kwargs):
            if isinstance(kwargs[name], str):
                kwargs[name] = resolve_path(kwargs[name], base_dir)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None


def load_settings(cls: type, path: storage.PathLike) -> Any:
    """Read a file holding a mapping of ``cls``'s fields (see :func:`build_settings`);
    relative paths are resolved against the file's folder.
    """
    path = os.path.abspath(os.fspath(path))
    return build_settings(cls, read_file(path), source=path, base_dir=os.path.dirname(path))


def _check_type(value: Any, hint: Any, name: str) -> Any:
    """``value`` (converted list -> tuple where needed) if it fits ``hint``, else TypeError."""
    converted = _convert(value, hint)
    if converted is _MISMATCH:
        raise TypeError(f"{name}: expected {_type_name(hint)}, got {value!r}")
    return converted


_MISMATCH = object()


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            out = _convert(value, member)
            if out is not _MISMATCH:
                return out
        return _MISMATCH
    if hint is type(None):
        return None if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        args = typing.get_args(hint)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        items = [_convert(v, item) for v in value]
        return _MISMATCH if any(v is _MISMATCH for v in items) else tuple(items)
    if origin is list or hint is list:
        return list(value) if isinstance(value, (list, tuple)) else _MISMATCH
    if origin is dict or hint is dict:
        return dict(value) if isinstance(value, Mapping) else _MISMATCH
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return value if callable(value) else _MISMATCH
    return value if isinstance(hint, type) and isinstance(value, hint) else _MISMATCH


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is collections.abc.Callable:
        return "a callable"
    return getattr(hint, "__name__", str(hint)) if typing.get_origin(hint) is None else str(hint)
