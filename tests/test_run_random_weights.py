"""``fgattr run`` / ``load_model`` without a checkpoint says loudly that the weights are random."""
from __future__ import annotations

import warnings

import pytest

from captum_fgattr.bench.config import ModelConfig
from captum_fgattr.bench.resolve import RandomWeightsWarning, load_model


def test_no_checkpoint_warns_loudly_and_a_checkpoint_does_not(tmp_path):
    config = ModelConfig(name="timm:vit_tiny_patch16_224", num_classes=2, img_size=32, kwargs={"depth": 1})
    with pytest.warns(RandomWeightsWarning, match="NO checkpoint.*RANDOMLY INITIALISED"):
        model = load_model(config)
    import torch

    torch.save(model.state_dict(), tmp_path / "w.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        load_model(ModelConfig(name="timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.pt"), img_size=32,
                               kwargs={"depth": 1}))
