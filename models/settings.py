"""Turn a config's plain mapping into a model's frozen settings dataclass, or say exactly what is wrong.

Configs come from YAML, so lists stand for tuples and ints for floats; everything else
must have the annotated type. Unknown keys are refused (a typo must not silently
fall back to a default). Errors name the model and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from meteovision.models.errors import ModelSettingsError

T = TypeVar("T")


class _MismatchError(Exception):
    """Internal: a value does not fit a type (turned into ModelSettingsError by the caller)."""


def describe_type(tp: Any) -> str:
    """A short human spelling of an annotation, for error messages."""
    origin = get_origin(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {describe_type(args[0])}"
        return f"list of {len(args)} ({', '.join(describe_type(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any) -> Any:
    """``value`` converted to annotation ``tp`` (lists to tuples, int to float), else ``_MismatchError``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _MismatchError
    if origin is Literal:
        for allowed in get_args(tp):
            if type(value) is type(allowed) and value == allowed:
                return value
        raise _MismatchError
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return coerce(option, value)
            except _MismatchError:
                continue
        raise _MismatchError
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _MismatchError
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v) for v in value)
        if len(args) != len(value):
            raise _MismatchError
        return tuple(coerce(a, v) for a, v in zip(args, value, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _MismatchError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _MismatchError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _MismatchError
    if tp is str:
        if isinstance(value, str):
            return value
        raise _MismatchError
    raise TypeError(f"settings annotation {tp!r} is not supported by the settings parser")


def parse_settings(model: str, settings_cls: type[T], raw: Mapping[str, Any]) -> T:
    """Validated ``settings_cls`` instance from ``raw``; errors name ``model`` and the key."""
    hints = typing.get_type_hints(settings_cls)
    fields = {f.name for f in dataclasses.fields(settings_cls) if f.init}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            raise ModelSettingsError(
                model, str(key), f"unknown setting; valid settings are: {', '.join(sorted(fields))}"
            )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = coerce(hints[key], value)
        except _MismatchError:
            raise ModelSettingsError(
                model, key, f"expected {describe_type(hints[key])}, got {type(value).__name__} {value!r}"
            ) from None
    try:
        return settings_cls(**values)
    except ModelSettingsError as err:
        raise err.for_model(model) from None


def settings_to_dict(settings: Any) -> dict[str, Any]:
    """Plain mapping of a settings dataclass (tuples as lists), ready for YAML or a checkpoint."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
