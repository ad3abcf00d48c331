"""Packages that extend the benchmark's registries (dataset layouts, project models, SAE sources, report headers):
each registry imports them at its first lookup and reads the entries they declare in ``PROVIDES``, whose modules it
imports at each entry's first lookup (:class:`captum_fgattr.registry.Registry`)."""
from __future__ import annotations

#: the embedded default: its dataset, model, packaged SAEs and demo presets
BENCH_PLUGINS: tuple[str, ...] = ("captum_fgattr.bench.default",)
