"""``fgattr run``: layers, multi-layer configurations and FC subset size follow the model unless set."""
from __future__ import annotations

import json

import pytest

from captum_fgattr.bench.cli.main import build_parser
from captum_fgattr.bench.cli.run import resolve_config
from captum_fgattr.bench.config import ModelConfig
from captum_fgattr.bench.resolve import model_shape, sized_settings, thesis_layers

SMALL = ["--model", "timm:vit_tiny_patch16_224", "--img-size", "32", "--model-kwargs",
         '{"patch_size": 8, "embed_dim": 64, "depth": 6, "num_heads": 4}']


def test_thesis_positions_scale_with_depth_and_patches():
    assert thesis_layers(12) == list(range(2, 11)) and thesis_layers(6) == [1, 2, 3, 4] and thesis_layers(2) == [0]
    vit_b = sized_settings(12, 196)
    assert vit_b["protocol.multi_layers"] == [[2, 3, 4], [4, 6, 7], [6, 9, 10]]
    assert vit_b["evaluation.metrics.fc_subset_size"] == 20
    assert all(max(c) <= 4 for c in sized_settings(6, 64)["protocol.multi_layers"])
    assert model_shape(ModelConfig(name="clip:ViT-B-32")) == (12, 49)
    with pytest.raises(ValueError, match="^unknown timm model 'no_such_model'"):  # refused before anything is read
        model_shape(ModelConfig(name="timm:no_such_model"))


def test_unset_keys_are_sized_by_the_model_and_printed(capsys):
    config = resolve_config(build_parser(["run"]).parse_args(["run", *SMALL]))
    assert config.protocol.layers == (1, 2, 3, 4)
    # the thesis's (2,3,4), (4,6,7), (6,9,10) of 12 blocks × 6/12, rounded half to even, capped at block 4
    assert config.protocol.multi_layers == ((1, 2), (2, 3, 4), (3, 4))
    assert config.evaluation.metrics.fc_subset_size == 2  # 16 patches: 20 / 196 of them
    assert "sized by the model: protocol.layers = [1, 2, 3, 4]" in capsys.readouterr().err


def test_flags_and_file_values_win(tmp_path):
    flags = resolve_config(build_parser(["run"]).parse_args(["run", *SMALL, "--layers", "2", "--fc-subset-size", "5"]))
    assert flags.protocol.layers == (2,) and flags.evaluation.metrics.fc_subset_size == 5
    (tmp_path / "c.json").write_text(json.dumps({"protocol": {"multi_layers": [[1, 3]]}}))
    filed = resolve_config(build_parser(["run"]).parse_args(["run", *SMALL, "--config", str(tmp_path / "c.json")]))
    assert filed.protocol.multi_layers == ((1, 3),) and filed.protocol.layers == (1, 2, 3, 4)
    unsized = resolve_config(build_parser(["run"]).parse_args(["run"]))  # no model: the protocol's defaults
    assert unsized.protocol.layers == tuple(range(2, 11))
