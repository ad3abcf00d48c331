"""A timm checkpoint folder (config.json + model.safetensors / pytorch_model.bin, written by timm's save_for_hf) is a
model spec: same logits as the saved model, mean / std / input size from its config, clear errors for what it
lacks, and ``fgattr run --model FOLDER`` end to end."""
from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.config import DataConfig, ModelConfig
from captum_fgattr.bench.models.loading import load_model
from captum_fgattr.bench.config import RunConfig
from captum_fgattr.bench.resolve import (RandomWeightsWarning, input_digests, load_model as load_configured, model_shape,
                                         preprocessing)
from captum_fgattr.files import content_sha256
from captum_fgattr.sae import save_sae
from tests.test_bench_data_models import save_images
from tests.test_fg_transmm import make_sae

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.2, 0.25)


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                             depth=2, embed_dim=32, num_heads=2).eval()


def _saved(tmp_path: Path, safe: bool = True) -> tuple[torch.nn.Module, Path]:
    vit, folder = _tiny_vit(), tmp_path / "vit-folder"
    save_for_hf(vit, str(folder), safe_serialization=safe, data_config={"mean": MEAN, "std": STD})
    return vit, folder


@pytest.mark.parametrize("safe", [True, False])
def test_folder_loads_the_saved_model(tmp_path, safe):
    vit, folder = _saved(tmp_path, safe)
    assert (folder / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    loaded = load_model(str(folder))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), vit(x), rtol=0, atol=0)
    assert loaded.pretrained_cfg["mean"] == MEAN and loaded.pretrained_cfg["std"] == STD
    torch.testing.assert_close(load_model(f"timm:{folder}")(x), vit(x), rtol=0, atol=0)


def test_folder_gives_preprocessing_shape_and_no_random_weights_warning(tmp_path):
    _, folder = _saved(tmp_path)
    config = ModelConfig(name=str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        model = load_configured(config)
    prep = preprocessing(DataConfig(val=str(tmp_path), test=str(tmp_path)), model)
    assert tuple(prep.img_size) == (32, 32) and tuple(prep.mean) == MEAN and tuple(prep.std) == STD
    assert model_shape(config) == (2, 16)  # depth 2, (32 / 8)^2 patches
    what, digest = input_digests(RunConfig(model=config))["content.checkpoint"]  # resuming notices new weights
    assert str(folder) in what and digest == content_sha256(folder)


def _rewrite(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("break_it, error, message", [
    (lambda f: (f / "config.json").unlink(), FileNotFoundError, "has no config.json"),
    (lambda f: (f / "model.safetensors").unlink(), FileNotFoundError, "has no weights"),
    (lambda f: _rewrite(f, lambda c: c.pop("architecture")), ValueError, "names no timm 'architecture'"),
    (lambda f: _rewrite(f, lambda c: c["pretrained_cfg"].pop("std")), ValueError, r"pretrained_cfg lacks \['std'\]"),
    (lambda f: _rewrite(f, lambda c: c["pretrained_cfg"].update(input_size=[3, 32])), ValueError, "input_size"),
    (lambda f: (f / "config.json").write_text("{oops"), ValueError, "not valid JSON"),
])
def test_what_a_folder_lacks_is_named(tmp_path, break_it, error, message):
    _, folder = _saved(tmp_path)
    break_it(folder)
    with pytest.raises(error, match=message):
        load_model(str(folder))


def test_conflicting_arguments_are_refused(tmp_path):
    _, folder = _saved(tmp_path)
    with pytest.raises(ValueError, match="holds its weights"):
        load_model(str(folder), checkpoint=str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="num_classes=5 but .* says 3"):
        load_model(str(folder), num_classes=5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such-folder"))


def test_fgattr_run_with_a_model_folder(tmp_path, one_torch_thread):
    _, folder = _saved(tmp_path)
    for split, count in (("val", 3), ("test", 2)):
        for c, cls in enumerate(("a", "b", "c")):
            save_images(tmp_path / "data" / split / cls, count, mode="RGB", size=(40, 40), value=None)
    save_sae(make_sae(32, seed=1), tmp_path / "saes" / "layer_0")  # depth 2: the sized sweep gates block 0
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        code = main(["run", "--model", str(folder), "--val-data", str(tmp_path / "data" / "val"),
                     "--test-data", str(tmp_path / "data" / "test"), "--saes", str(tmp_path / "saes"),
                     "--run-dir", str(run), "--variants", "combined", "--multi-layers", "--baselines", "random",
                     "--controls", "--val-images", "4", "--test-images", "3", "--batch-size", "4",
                     "--saco-groups", "4", "--fc-runs", "4", "--gallery", "1", "--quiet"])
    assert code == 0 and (run / "report" / "test.md").is_file()
    with sqlite3.connect(run / "results.sqlite") as conn:
        test = conn.execute("SELECT DISTINCT method_key FROM results WHERE split = 'test'").fetchall()
        config = json.loads(conn.execute("SELECT config FROM invocations ORDER BY id DESC").fetchone()[0])
    assert {json.loads(key)["name"] for (key,) in test} == {"transmm", "fg", "random"}
    assert config["model"]["name"] == str(folder) and config["protocol"]["layers"] == [0]
