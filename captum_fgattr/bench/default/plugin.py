"""The embedded default's registrations, imported by each registry at the first lookup of an entry the package
declares (:data:`captum_fgattr.bench.default.PROVIDES`): the dataset layout, the project models (the default ViT and
the replicate models) and their shipped SAE sources.
(The demo presets' report header is registered by :mod:`.demo`.)"""
from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from captum_fgattr.bench.data.kinds import LAYOUTS
from captum_fgattr.bench.default import (
    LAYOUT_NAME, MODEL_NAME, PROVIDES, REPLICATE_MODELS, SHIPPED_SAE_SEEDS, br35h, shipped_model_saes,
    shipped_seed_saes, vit,
)
from captum_fgattr.bench.default.assets import load_shipped_saes, shipped_info, shipped_sae_digests
from captum_fgattr.bench.models.project import PROJECT_MODELS, ProjectModel
from captum_fgattr.bench.sae_sources import SAE_SOURCES, SAESource
from captum_fgattr.sae import SparseAutoencoder

LAYOUTS.add(LAYOUT_NAME, br35h.LAYOUT)


def _shipped_model_digest(name: str, checkpoint: str | None) -> tuple[str, str] | None:
    """The recorded sha256 of the shipped weights of ``fgattr:<name>`` (checkpoint none / "shipped"); none for
    retrained ones."""
    if checkpoint not in (None, "shipped"):
        return None
    return f"the shipped fgattr:{name} weights", shipped_info(vit.shipped_folder(name))["model"]["weights_sha256"]


for _name, (_vit, _) in vit.RECIPES.items():
    PROJECT_MODELS.add(_name, ProjectModel(
        num_classes=_vit.num_classes, img_size=_vit.img_size, depth=_vit.depth, num_patches=_vit.num_patches,
        load=functools.partial(vit.load_br35h_vit, name=_name), digest=functools.partial(_shipped_model_digest, _name),
    ))


def _shipped_saes(seed: int | None = None, model_name: str = MODEL_NAME
                  ) -> Callable[[list[int], nn.Module | None], dict[int, SparseAutoencoder]]:
    """Loader of the shipped SAEs of ``fgattr:<model_name>`` (``seed``: the default ViT's replicate SAEs of that seed)
    of some layers, which first checks that the model has the weights they were trained on."""
    name = shipped_seed_saes(seed) if model_name == MODEL_NAME else shipped_model_saes(model_name)
    folder = vit.shipped_folder(model_name)

    def load(layers: list[int], model: nn.Module | None) -> dict[int, SparseAutoencoder]:
        if model is None:
            raise ValueError(f"saes={name!r} needs the model, to check they were trained on it")
        expected = shipped_info(folder)["model"]["weights_sha256"]
        try:
            actual = vit.weights_sha256(model)
        except RuntimeError as err:  # e.g. tied weights: not a plain state dict, so not the default ViT
            actual = f"unhashable ({err})"
        if actual != expected:
            raise ValueError(f"the SAEs {name!r} were trained on the shipped fgattr:{model_name} (weights sha256 "
                             f"{expected[:12]}...) but this model's weights differ (sha256 {actual[:12]}...); use "
                             f"--model fgattr:{model_name} without a checkpoint, or SAEs trained on this model "
                             "(fgattr train-sae)")
        return load_shipped_saes(layers, folder=folder, seed=seed)

    return load


_SOURCES = [(shipped_seed_saes(seed), seed, MODEL_NAME) for seed in (None, *SHIPPED_SAE_SEEDS)]  # seed 0 first
_SOURCES += [(shipped_model_saes(name), None, name) for name in REPLICATE_MODELS]
for _source, _seed, _model in _SOURCES:
    SAE_SOURCES.add(_source, SAESource(
        what=PROVIDES["SAE source"][_source][0], load=_shipped_saes(_seed, _model),
        digests=functools.partial(shipped_sae_digests, _seed, vit.shipped_folder(_model))))
