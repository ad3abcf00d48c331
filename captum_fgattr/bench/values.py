"""Plain values (as JSON / YAML give them) checked against type annotations: the one check the run description's
fields (:mod:`captum_fgattr.bench.config`) and the methods' typed parameters (:mod:`captum_fgattr.bench.methods`)
share, and the types in words for their errors."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import UnionType
from typing import Any, Union, get_args, get_origin

__all__ = ["Mismatch", "typed", "words"]


class Mismatch(Exception):
    """A value that does not match its field's type (the caller's error names the field)."""


def typed(hint: Any, value: Any) -> Any:
    """``value`` checked against the type ``hint`` of a field: lists become tuples where a tuple is due, ints
    floats where a float is due; bools are not ints here, strings are not numbers.

    Raises:
        Mismatch: ``value`` does not match ``hint``.
        TypeError: ``hint`` is a type this layer does not know (a field added with a new kind of type).
    """
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, UnionType):
        for arm in args:
            try:
                return typed(arm, value)
            except Mismatch:
                pass
        raise Mismatch
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise Mismatch
        return tuple(typed(args[0], item) for item in value)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise Mismatch
        return {typed(args[0], key): typed(args[1], item) for key, item in value.items()}
    if hint is type(None):
        matches = value is None
    elif hint is bool or hint is str:
        matches = isinstance(value, hint)
    elif hint is int or hint is float:
        matches = isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
        value = hint(value) if matches else value
    else:
        raise TypeError(f"configuration fields of type {hint!r} are not supported by bench.values.typed")
    if not matches:
        raise Mismatch
    return value


_NOUNS: dict[Any, tuple[str, str]] = {bool: ("true or false", "booleans"), int: ("an int", "ints"),
                                      float: ("a number", "numbers"), str: ("a string", "strings"),
                                      type(None): ("null", "nulls"), Any: ("any value", "values")}


def words(hint: Any, plural: bool = False) -> str:
    """The type ``hint`` in words, as errors name what was expected (``tuple[int, ...]`` -> "a list of ints")."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        arms = [words(arm, plural) for arm in args if arm is not type(None)]
        arms += ["null"] if type(None) in args else []
        return ", ".join(arms[:-1]) + f" or {arms[-1]}"
    if origin is tuple:
        return f"{'lists' if plural else 'a list'} of {words(args[0], plural=True)}"
    if origin is Mapping:
        return f"{'mappings' if plural else 'a mapping'} of {words(args[0], True)} to {words(args[1], True)}"
    if dataclasses.is_dataclass(hint):
        return "mappings of settings" if plural else "a mapping of settings"
    return _NOUNS[hint][plural]
