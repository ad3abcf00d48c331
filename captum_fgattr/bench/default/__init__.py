"""The embedded default, in one place: the Br35H brain-MRI scans (:mod:`.br35h`), the small ViT trained on them
(:mod:`.vit`), the model and SAEs shipped as package data with the command that builds and checks them
(:mod:`.assets`, ``shipped/``), and the demo presets (:mod:`.demo`: ``fgattr demo``, full and quick, with their
report header).

Generic code reaches it only through registries, which import this package at their first lookup
(:data:`captum_fgattr.bench.plugins.BENCH_PLUGINS`) and read what it provides (:data:`PROVIDES`): the dataset layout
``"br35h"``, the project model ``"fgattr:br35h-vit"``, the SAE sources ``"shipped"`` (SAE seed 0) and
``"shipped-seed1"``, ``"shipped-seed2"`` (the replicate SAEs), the replicate models of :data:`REPLICATE_MODELS`
(``fgattr:br35h-vit-seed1`` ..., each with its SAE source ``"shipped-<name>"``) and the report header of the
presets. This module imports nothing, so that listing them (``fgattr <command> --help``) stays instant; the modules
that register them (:mod:`.plugin`, :mod:`.demo`) are imported at an entry's first lookup.
"""
from __future__ import annotations

__all__ = ["LAYOUT_NAME", "MODEL_NAME", "SHIPPED_SAES", "SHIPPED_SAE_SEEDS", "REPLICATE_MODELS", "REPORT_HEADER",
           "RUN_DIRS", "PROVIDES", "shipped_seed_saes", "shipped_model_saes"]

LAYOUT_NAME = "br35h"  # the dataset kind (data.kind)
MODEL_NAME = "br35h-vit"  # ``fgattr:<MODEL_NAME>`` names the default ViT in a run description (model.name)
SHIPPED_SAES = "shipped"  # the SAE source of the SAEs shipped with the package (saes)
SHIPPED_SAE_SEEDS = (1, 2)  # SAE seeds of the replicate SAEs shipped beside the main ones (seed 0)


def shipped_seed_saes(seed: int | None) -> str:
    """The SAE source of the shipped replicate SAEs of SAE seed ``seed``, e.g. "shipped-seed1" (None: the main
    SAEs, "shipped")."""
    return SHIPPED_SAES if seed is None else f"{SHIPPED_SAES}-seed{seed}"


#: the replicate models shipped beside the default one (``shipped/models/<name>/``, each with its SAEs of the same
#: blocks): project model name -> (replicate name in the ``replication`` preset, one-line summary)
REPLICATE_MODELS: dict[str, tuple[str, str]] = {
    f"{MODEL_NAME}-seed1": ("model-seed-1", "the default ViT recipe trained from model seed 1"),
    f"{MODEL_NAME}-seed2": ("model-seed-2", "the default ViT recipe trained from model seed 2"),
    f"{MODEL_NAME}-196": ("196-patches", "the default ViT recipe at 112 px: 196 patch tokens, as ViT-B/16 at 224 px"),
}


def shipped_model_saes(model: str) -> str:
    """The SAE source of the SAEs shipped for the project model ``model`` (:data:`MODEL_NAME`: "shipped"; a
    replicate model: "shipped-<model>", e.g. "shipped-br35h-vit-seed1")."""
    return SHIPPED_SAES if model == MODEL_NAME else f"{SHIPPED_SAES}-{model}"


REPORT_HEADER = "br35h-demo"  # the presets' report_header
#: run folders of the demo presets: ``fgattr demo``, ``fgattr demo --quick`` and ``fgattr demo --preset replication``
RUN_DIRS: dict[str, str] = {"full": "fgattr-runs/demo", "quick": "fgattr-runs/demo-quick",
                            "replication": "fgattr-runs/demo-replication"}

_PLUGIN = "captum_fgattr.bench.default.plugin"
#: registry (its ``what``) -> {name: (one-line summary, the module whose import registers it)}
PROVIDES: dict[str, dict[str, tuple[str, str]]] = {
    "dataset layout": {LAYOUT_NAME: ("Br35H", _PLUGIN)},
    "project model (fgattr:<name>)": {MODEL_NAME: ("the small ViT trained on the Br35H scans", _PLUGIN),
                                      **{name: (summary, _PLUGIN) for name, (_, summary) in REPLICATE_MODELS.items()}},
    "SAE source": {SHIPPED_SAES: ("the shipped SAE", _PLUGIN),
                   **{shipped_seed_saes(seed): (f"the shipped SAE of SAE seed {seed}", _PLUGIN)
                      for seed in SHIPPED_SAE_SEEDS},
                   **{shipped_model_saes(name): (f"the shipped SAE of fgattr:{name}", _PLUGIN)
                      for name in REPLICATE_MODELS}},
    "report header": {REPORT_HEADER: ("the demo presets' data, model and SAEs", "captum_fgattr.bench.default.demo")},
}
