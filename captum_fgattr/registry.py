"""One registration mechanism for every extension point (methods, metrics, dataset layouts, ViT adapters).

A :class:`Registry` is a read-only mapping name -> entry, in registration order, that refuses a second entry under
the same name (no silent overwrite) and names the registered ones when a name is missing. ``plugins`` names modules
that register entries when imported: they are imported at the registry's first lookup, so a package can extend a
registry below it without the registry importing it eagerly (and without an import circle)::

    LAYOUTS = Registry[Layout]("dataset layout")
    LAYOUTS.add("folder", Layout(...))

    HEADERS = Registry[Callable[[], str]]("report header")

    @HEADERS.register("plain")
    def _plain() -> str: ...
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (``what``, used in errors), in registration order."""

    def __init__(self, what: str, plugins: Sequence[str] = ()) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        self._plugins = tuple(plugins)  # modules imported (once) before the first lookup

    def _load_plugins(self) -> None:
        plugins, self._plugins = self._plugins, ()  # cleared first: a plugin looks its registry up while importing
        try:
            for module in plugins:
                importlib.import_module(module)
        except BaseException:
            self._plugins = plugins  # a failed import is raised again at the next lookup, not hidden behind it
            raise

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; returns it.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (an extension registered for a while, e.g. in a test).

        Raises:
            KeyError: ``name`` is not registered.
        """
        if name not in self._entries:
            raise KeyError(f"no {self.what} {name!r} is registered; registered: {sorted(self._entries)}")
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; expected one of {sorted(self._entries)}") from None

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {list(self._entries)})"
