"""``fgattr evaluate --methods``: a JSON list of method specs, checked field by field against the
registered methods' typed parameters (:class:`~captum_fgattr.bench.methods.MethodParams`) before anything runs
(a missing ``layers`` is named, not a ``KeyError``)."""
from __future__ import annotations

import json

from captum_fgattr.bench.methods import METHODS, MethodSpec

__all__ = ["parse_methods"]

_FIELDS = ("name", "params", "label")


def parse_methods(text: str, source: str = "--methods") -> list[MethodSpec]:
    """Method specs from JSON ``[{"name": ..., "params": {...}, "label": ...}, ...]``; an entry without a label gets
    its method's short default (:meth:`~captum_fgattr.bench.methods.MethodParams.label`, e.g. ``FG L[3,4] combined
    κ=0.5 c=10``).

    Raises:
        ValueError: invalid JSON, or an entry with a wrong field, an unknown method name, an unknown or
            missing parameter, or a parameter of the wrong type (names the entry and the field); two entries with
            the same method and parameters or the same label (names both).
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
            spec = MethodSpec(name, params, label)
        except ValueError as err:
            raise ValueError(f"{where} ({name}): {err}") from None
        for j, other in enumerate(specs):
            if other.key == spec.key or other.label == spec.label:
                same = "method and parameters" if other.key == spec.key else f"label {spec.label!r}"
                raise ValueError(f"{where} ({name}): the same {same} as {source}[{j}]; every method needs its own "
                                 "(remove one, or give it a distinct \"label\")")
        specs.append(spec)
    return specs
