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

A plugin may instead *declare* entries in a ``PROVIDES`` mapping (registry ``what`` -> {name: (summary, module)}):
the registry then knows their names and one-line summaries from importing the plugin alone, and imports ``module``
(which registers the entry with :meth:`Registry.add`) at that entry's first lookup. A light plugin package (no
torch) so lets ``fgattr <command> --help`` list its entries without loading them (:meth:`Registry.summaries`).
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
        self._declared: dict[str, tuple[str, str]] = {}  # name -> (summary, module registering it) from PROVIDES

    def _load_plugins(self) -> None:
        plugins, self._plugins = self._plugins, ()  # cleared first: a plugin looks its registry up while importing
        try:
            for module in plugins:
                provides = getattr(importlib.import_module(module), "PROVIDES", {})
                self._declared.update(provides.get(self.what, {}))
        except BaseException:
            self._plugins = plugins  # a failed import is raised again at the next lookup, not hidden behind it
            raise

    def _load_declared(self, name: str) -> None:
        """Import the module a plugin declared ``name`` in, which registers it.

        Raises:
            RuntimeError: that module registers no entry ``name`` (a plugin's declaration out of date).
        """
        if name in self._entries or name not in self._declared:
            return
        module = self._declared[name][1]
        importlib.import_module(module)
        if name not in self._entries:
            raise RuntimeError(f"{module} is declared to register {self.what} {name!r} but does not")

    def summaries(self) -> dict[str, str]:
        """Name -> one-line summary of the entries plugins declare (``PROVIDES``), read without importing the
        modules that register them."""
        self._load_plugins()
        return {name: summary for name, (summary, _) in self._declared.items()}

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
        if name not in self._entries and name not in self._declared:
            raise KeyError(f"no {self.what} {name!r} is registered; registered: {sorted(self._names())}")
        self._entries.pop(name, None)
        self._declared.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load_plugins()
        self._load_declared(name)
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; expected one of {sorted(self)}") from None

    def _names(self) -> list[str]:
        """Registered names, then the declared ones not registered yet (plugins loaded first)."""
        self._load_plugins()
        return [*self._entries, *(name for name in self._declared if name not in self._entries)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries or name in self._declared

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {list(self._entries)})"
