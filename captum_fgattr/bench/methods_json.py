"""``fgattr evaluate --methods``: a JSON list of method specs, checked field by field against the
registered methods' typed parameters (:class:`~captum_fgattr.bench.methods.MethodParams`) before anything runs
(a missing ``layers`` is named, not a ``KeyError``)."""
from __future__ import annotations

import json

from captum_fgattr.bench.methods import METHODS, MethodSpec

__all__ = ["parse_methods"]

_FIELDS = ("name", "params", "label")


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
        if not isinstance(name, str) or name not in METHODS:
            raise ValueError(f"{where}: name={name!r}; expected one of {sorted(METHODS)}")
        if not isinstance(params, dict):
            raise ValueError(f"{where} ({name}): params must be an object; got {params!r}")
        if not isinstance(label, str):
            raise ValueError(f"{where} ({name}): label must be a string; got {label!r}")
        try:
            specs.append(MethodSpec(name, params, label))
        except ValueError as err:
            raise ValueError(f"{where} ({name}): {err}") from None
    return specs
