"""``fgattr evaluate --methods``: a JSON list of method specs, checked field by field against the
registered builders' signatures before anything runs (a missing ``layers`` is named, not a ``KeyError``)."""
from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin, get_type_hints

from captum_fgattr.bench.methods import METHODS, MethodSpec

__all__ = ["parse_methods"]

_FIELDS = ("name", "params", "label")
_FIXED = 3  # every builder takes (model, adapter, saes) before its parameters


def _matches(value: Any, hint: Any) -> bool:
    """Whether the JSON ``value`` fits the annotation ``hint`` (int, float, str, bool, list[...], X | None)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    return True  # other annotations: the builder checks the value


def _hint_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _check_params(where: str, builder: Callable[..., Any], params: dict[str, Any]) -> None:
    signature = inspect.signature(builder)
    accepted = list(signature.parameters)[_FIXED:]
    hints = get_type_hints(builder)
    shown = ", ".join(f"{p}: {_hint_name(hints.get(p, Any))}" for p in accepted) or "none"
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown}; accepted: {shown}")
    for p in accepted:
        hint = hints.get(p, Any)
        if p not in params:
            if signature.parameters[p].default is inspect.Parameter.empty:
                raise ValueError(f"{where}: missing required parameter {p!r} ({_hint_name(hint)}); accepted: {shown}")
        elif not _matches(params[p], hint):
            raise ValueError(f"{where}: {p}={params[p]!r} is not {_hint_name(hint)}")


def parse_methods(text: str, source: str = "--methods") -> list[MethodSpec]:
    """Method specs from JSON ``[{"name": ..., "params": {...}, "label": ...}, ...]``.

    Raises:
        ValueError: invalid JSON, or an entry with a wrong field, an unknown method name, an unknown or
            missing parameter, or a parameter of the wrong type (names the entry and the field).
    """
    example = '[{"name": "fg", "params": {"layers": [6], "variant": "combined"}}]'
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err}); expected a list such as {example}") from err
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: expected a non-empty JSON list of methods such as {example}; got {text[:80]!r}")
    specs = []
    for i, entry in enumerate(data):
        where = f"{source}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with fields {list(_FIELDS)}; got {entry!r}")
        unknown = sorted(set(entry) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; expected {list(_FIELDS)}")
        name, params, label = entry.get("name"), entry.get("params", {}), entry.get("label", "")
        if name not in METHODS:
            raise ValueError(f"{where}: name={name!r}; expected one of {sorted(METHODS)}")
        if not isinstance(params, dict):
            raise ValueError(f"{where} ({name}): params must be an object; got {params!r}")
        if not isinstance(label, str):
            raise ValueError(f"{where} ({name}): label must be a string; got {label!r}")
        _check_params(f"{where} ({name})", METHODS[name], params)
        specs.append(MethodSpec(name, params, label))
    return specs
