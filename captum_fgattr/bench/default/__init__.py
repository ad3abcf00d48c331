"""The embedded default, in one place: the Br35H brain-MRI scans (:mod:`.br35h`), the small ViT trained on them
(:mod:`.vit`), the model and SAEs shipped as package data with the command that builds and checks them
(:mod:`.assets`, ``shipped/``), and the demo presets (:mod:`.demo`: ``fgattr demo``, full and quick, with their
report header).

Generic code reaches it only through registries, which import this package at their first lookup
(:data:`captum_fgattr.bench.plugins.BENCH_PLUGINS`) and read what it provides (:data:`PROVIDES`): the dataset layout
``"br35h"``, the project model ``"fgattr:br35h-vit"``, the SAE sources ``"shipped"`` (SAE seed 0) and
``"shipped-seed1"``, ``"shipped-seed2"`` (the replicate SAEs) and the report header of the presets. This module
imports nothing, so that listing them (``fgattr <command> --help``) stays instant; the modules
that register them (:mod:`.plugin`, :mod:`.demo`) are imported at an entry's first lookup.
"""
from __future__ import annotations

__all__ = ["LAYOUT_NAME", "MODEL_NAME", "SHIPPED_SAES", "SHIPPED_SAE_SEEDS", "REPORT_HEADER", "RUN_DIRS", "PROVIDES",
           "shipped_seed_saes"]

LAYOUT_NAME = "br35h"  # the dataset kind (data.kind)
MODEL_NAME = "br35h-vit"  # ``fgattr:<MODEL_NAME>`` names the default ViT in a run description (model.name)
SHIPPED_SAES = "shipped"  # the SAE source of the SAEs shipped with the package (saes)
SHIPPED_SAE_SEEDS = (1, 2)  # SAE seeds of the replicate SAEs shipped beside the main ones (seed 0)


def shipped_seed_saes(seed: int | None) -> str:
    """The SAE source of the shipped replicate SAEs of SAE seed ``seed``, e.g. "shipped-seed1" (None: the main
    SAEs, "shipped")."""
    return SHIPPED_SAES if seed is None else f"{SHIPPED_SAES}-seed{seed}"


REPORT_HEADER = "br35h-demo"  # the presets' report_header
#: run folders of the demo presets: ``fgattr demo`` and ``fgattr demo --quick``
RUN_DIRS: dict[str, str] = {"full": "fgattr-runs/demo", "quick": "fgattr-runs/demo-quick"}

_PLUGIN = "captum_fgattr.bench.default.plugin"
#: registry (its ``what``) -> {name: (one-line summary, the module whose import registers it)}
PROVIDES: dict[str, dict[str, tuple[str, str]]] = {
    "dataset layout": {LAYOUT_NAME: ("Br35H", _PLUGIN)},
    "project model (fgattr:<name>)": {MODEL_NAME: ("the small ViT trained on the Br35H scans", _PLUGIN)},
    "SAE source": {SHIPPED_SAES: ("the shipped SAE", _PLUGIN),
                   **{shipped_seed_saes(seed): (f"the shipped SAE of SAE seed {seed}", _PLUGIN)
                      for seed in SHIPPED_SAE_SEEDS}},
    "report header": {REPORT_HEADER: ("the demo presets' data, model and SAEs", "captum_fgattr.bench.default.demo")},
}
