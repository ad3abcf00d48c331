"""train_layer_saes: one SAE per layer, resumable, refuses a folder trained with other settings."""
from __future__ import annotations

import csv
import shutil

import pytest
import torch

from captum_fgattr.sae.layers import train_layer_saes
from captum_fgattr.sae.train import TrainConfig, sae_config_for
from tests.conftest import make_vit


def _run(output, layers, expansion=2):
    vit = make_vit()
    loader = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    configs = {layer: sae_config_for(32, expansion=expansion, k=4, hook_layer=layer) for layer in layers}
    cfg = TrainConfig(epochs=1, batch_tokens=32, warmup_steps=1, shuffle_buffer_tokens=64, progress=False)
    return train_layer_saes(vit, loader, configs, cfg, output)


def test_trains_every_layer_then_resumes_only_missing_ones(tmp_path):
    rows = _run(tmp_path, [0, 2])
    assert sorted(r["layer"] for r in rows) == [0, 2]
    kept = (tmp_path / "layer_0" / "sae.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "layer_2")
    rows = _run(tmp_path, [0, 2])
    assert (tmp_path / "layer_0" / "sae.safetensors").read_bytes() == kept  # not retrained
    assert (tmp_path / "layer_2" / "config.json").is_file()
    with open(tmp_path / "metrics.csv", newline="") as fh:
        assert sorted(int(r["layer"]) for r in csv.DictReader(fh)) == [0, 2]  # one row per layer, no duplicates
    assert not (tmp_path / "activation_cache").exists()


def test_folder_with_other_architecture_is_refused(tmp_path):
    _run(tmp_path, [1])
    with pytest.raises(ValueError, match=r"different \['n_features'\]"):
        _run(tmp_path, [1], expansion=4)
