"""The embedded default's registrations, imported by each registry at the first lookup of an entry the package
declares (:data:`captum_fgattr.bench.default.PROVIDES`): the dataset layout, the project model and the SAE source.
(The demo presets' report header is registered by :mod:`.demo`.)"""
from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from captum_fgattr.bench.data.kinds import LAYOUTS
from captum_fgattr.bench.default import (
    LAYOUT_NAME, MODEL_NAME, PROVIDES, SHIPPED_SAE_SEEDS, br35h, shipped_seed_saes, vit,
)
from captum_fgattr.bench.default.assets import load_shipped_saes, shipped_info, shipped_sae_digests
from captum_fgattr.bench.models.project import PROJECT_MODELS, ProjectModel
from captum_fgattr.bench.sae_sources import SAE_SOURCES, SAESource
from captum_fgattr.sae import SparseAutoencoder

LAYOUTS.add(LAYOUT_NAME, br35h.LAYOUT)


def _shipped_model_digest(checkpoint: str | None) -> tuple[str, str] | None:
    """The recorded sha256 of the shipped weights (checkpoint none / "shipped"); none for retrained ones."""
    if checkpoint not in (None, "shipped"):
        return None
    return f"the shipped fgattr:{MODEL_NAME} weights", shipped_info()["model"]["weights_sha256"]


PROJECT_MODELS.add(MODEL_NAME, ProjectModel(
    num_classes=vit.DEFAULT_VIT.num_classes, img_size=vit.DEFAULT_VIT.img_size, depth=vit.DEFAULT_VIT.depth,
    num_patches=vit.DEFAULT_VIT.num_patches, load=vit.load_br35h_vit, digest=_shipped_model_digest,
))


def _shipped_saes(seed: int | None = None) -> Callable[[list[int], nn.Module | None], dict[int, SparseAutoencoder]]:
    """Loader of the shipped SAEs (``seed``: the replicate SAEs of that seed) of some layers, which first checks that
    the model has the weights they were trained on."""
    name = shipped_seed_saes(seed)

    def load(layers: list[int], model: nn.Module | None) -> dict[int, SparseAutoencoder]:
        if model is None:
            raise ValueError(f"saes={name!r} needs the model, to check they were trained on it")
        expected = shipped_info()["model"]["weights_sha256"]
        try:
            actual = vit.weights_sha256(model)
        except RuntimeError as err:  # e.g. tied weights: not a plain state dict, so not the default ViT
            actual = f"unhashable ({err})"
        if actual != expected:
            raise ValueError(f"the SAEs {name!r} were trained on the shipped fgattr:{MODEL_NAME} (weights sha256 "
                             f"{expected[:12]}...) but this model's weights differ (sha256 {actual[:12]}...); use "
                             f"--model fgattr:{MODEL_NAME} without a checkpoint, or SAEs trained on this model "
                             "(fgattr train-sae)")
        return load_shipped_saes(layers, seed=seed)

    return load


for _seed in (None, *SHIPPED_SAE_SEEDS):  # the main SAEs (seed 0), then the replicate seeds
    SAE_SOURCES.add(shipped_seed_saes(_seed), SAESource(
        what=PROVIDES["SAE source"][shipped_seed_saes(_seed)][0], load=_shipped_saes(_seed),
        digests=functools.partial(shipped_sae_digests, _seed)))
