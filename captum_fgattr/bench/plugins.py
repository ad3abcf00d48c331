"""Packages that extend the benchmark's registries (dataset layouts, project models, SAE sources, report headers)
when imported; each registry imports them at its first lookup (:class:`captum_fgattr.registry.Registry`)."""
from __future__ import annotations

#: the embedded default: its dataset, model, packaged SAEs and demo presets
BENCH_PLUGINS: tuple[str, ...] = ("captum_fgattr.bench.default",)
