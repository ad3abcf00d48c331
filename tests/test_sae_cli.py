"""``fgattr train-sae`` end to end on a tiny image folder, and the bench data / model loaders it uses."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.data.layouts import ImageFolderDataset, Preprocess, build_transform
from captum_fgattr.bench.models.checkpoint import load_state_dict
from captum_fgattr.bench.models.loading import load_timm_model
from captum_fgattr.sae import load_sae


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_image_folder(root, per_class: int = 4, size: int = 40) -> None:
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["zebra", "apple"]):  # sorted: apple=0, zebra=1
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(size, size + 6, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"img_{i}.{'png' if i % 2 else 'jpg'}")
    (root / "apple" / "notes.txt").write_text("not an image")


def test_train_sae_cli_writes_one_folder_per_layer_and_metrics(tmp_path, capsys) -> None:
    make_image_folder(tmp_path / "images")
    out = tmp_path / "out"
    code = main([
        "train-sae", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--num-classes", "2",
        "--data", str(tmp_path / "images"), "--layers", "1", "3", "--expansion", "2", "--k", "8",
        "--lr", "1e-3", "3e-3", "--lr-extensions", "0", "--epochs", "2", "--batch-tokens", "16", "--warmup-steps", "2",
        "--output", str(out), "--seed", "0", "--device", "cpu", "--quiet", "--batch-size", "3",
    ])
    assert code == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [(r["layer"], float(r["lr"])) for r in rows] == [("1", 1e-3), ("1", 3e-3), ("3", 1e-3), ("3", 3e-3)]
    for layer in ("1", "3"):
        runs = [r for r in rows if r["layer"] == layer]
        assert sum(r["selected"] == "True" for r in runs) == 1
        # default --heldout-fraction 0.1: one of the 4 images per class held out (at least one per class)
        assert all(int(r["num_tokens"]) == 6 * 4 for r in runs)  # 6 training images x 2x2 patches, no CLS
        assert all(int(r["heldout_num_tokens"]) == 2 * 4 for r in runs)
        assert all(float(r["heldout_explained_variance"]) < 1 and 0 <= float(r["heldout_dead_fraction"]) <= 1
                   for r in runs)
        assert all(0 <= float(r["dead_fraction"]) <= 1 and float(r["mean_l0"]) <= 8 for r in runs)
        sae = load_sae(out / f"layer_{layer}")
        assert (sae.d_in, sae.n_features, sae.k, sae.config.hook_layer) == (192, 384, 8, int(layer))
        selected = next(r for r in runs if r["selected"] == "True")
        assert sae.config.extra["metrics"]["lr"] == float(selected["lr"])
        saved = sae.config.extra["metrics"]["heldout_explained_variance"]
        assert saved == pytest.approx(float(selected["heldout_explained_variance"]))
    assert not (out / "activation_cache").exists()  # cache removed after training
    run = json.loads((out / "run.json").read_text())
    assert run["classes"] == ["apple", "zebra"] and len(run["heldout_images"]) == 2
    assert {p.split("/")[0] for p in run["heldout_images"]} == {"apple", "zebra"}
    printed = capsys.readouterr().out
    assert "explained_variance" in printed and "selected" in printed


def test_heldout_split_is_per_class_seeded_and_disjoint() -> None:
    from captum_fgattr.bench.train_saes import heldout_split

    labels = [0] * 20 + [1] * 10 + [2]
    train, held = heldout_split(labels, 0.1, seed=0)
    assert sorted(train + held) == list(range(31)) and not set(train) & set(held)
    assert [sum(labels[i] == c for i in held) for c in (0, 1, 2)] == [2, 1, 0]  # a single image stays in training
    assert heldout_split(labels, 0.1, seed=0) == (train, held) and heldout_split(labels, 0.1, seed=1)[1] != held
    assert heldout_split(labels, 0.0, seed=0) == (list(range(31)), [])
    with pytest.raises(ValueError, match="heldout-fraction"):
        heldout_split(labels, 1.0, seed=0)


def test_train_sae_cli_without_heldout_leaves_the_columns_empty(tmp_path) -> None:
    make_image_folder(tmp_path / "images", per_class=2)
    out = tmp_path / "out"
    assert main(["train-sae", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--data", str(tmp_path / "images"),
                 "--layers", "0", "--expansion", "1", "--k", "4", "--epochs", "1", "--batch-tokens", "8",
                 "--warmup-steps", "1", "--lr", "1e-3", "--heldout-fraction", "0", "--output", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    (row,) = csv.DictReader(open(out / "metrics.csv"))
    assert int(row["num_tokens"]) == 4 * 4 and row["heldout_explained_variance"] == ""


def test_train_sae_cli_clear_errors(tmp_path, capsys) -> None:
    make_image_folder(tmp_path / "images", per_class=1)
    base = ["train-sae", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--data", str(tmp_path / "images"),
            "--output", str(tmp_path / "out"), "--quiet", "--device", "cpu"]
    assert main([*base, "--layers", "12"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([*base, "--layers", "0", "--expansion", "1", "--k", "500"]) == 2
    assert "k=500 > n_features=192" in capsys.readouterr().err
    assert main([*base[:6], str(tmp_path / "nowhere"), *base[7:], "--layers", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_image_folder_dataset(tmp_path) -> None:
    make_image_folder(tmp_path / "images", per_class=2)
    ds = ImageFolderDataset(tmp_path / "images", transform=build_transform(Preprocess(img_size=24, resize=28, mean=0.5, std=0.25)))
    assert ds.classes == ["apple", "zebra"] and ds.targets == [0, 0, 1, 1]
    image, label = ds[3]
    assert image.shape == (3, 24, 24) and label == 1
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "images" / "zebra" / "broken.png").write_bytes(b"not a png")
    ds = ImageFolderDataset(tmp_path / "images")
    broken = [p.name for p, _ in ds.samples].index("broken.png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        ds[broken]


def test_preprocess_matches_explicit_normalisation(tmp_path) -> None:
    pixels = (torch.arange(16 * 16 * 3) % 251).to(torch.uint8).reshape(16, 16, 3)
    img = Image.fromarray(pixels.numpy())
    out = build_transform(Preprocess(img_size=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125)))(img)
    expected = (pixels.permute(2, 0, 1).float() / 255 - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.5, 0.25, 0.125])[:, None, None]
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="mean"):
        Preprocess(mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="img_size"):
        Preprocess(img_size=0)


def test_load_timm_model_checkpoints(tmp_path) -> None:
    from safetensors.torch import save_file

    tiny = dict(img_size=32, depth=2)  # fewer blocks: fast to build
    src = load_timm_model("vit_tiny_patch16_224", num_classes=3, **tiny)
    state = src.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = src(x)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    torch.save({"model": state}, tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("wrapped.pth", "model.pt", "w.safetensors"):
        model = load_timm_model("vit_tiny_patch16_224", tmp_path / name, num_classes=3, **tiny)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref)
    renamed = {("lin_head." + k[5:] if k.startswith("head.") else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    assert set(load_state_dict(tmp_path / "renamed.pt", rename={"lin_head.": "head."})) == set(state)

    with pytest.raises(ValueError, match=r"missing keys \['head.bias', 'head.weight'\]"):
        load_timm_model("vit_tiny_patch16_224", tmp_path / "renamed.pt", num_classes=3, **tiny)
    with pytest.raises(ValueError, match=r"head.weight: \(3, 192\) vs model \(5, 192\)"):
        load_timm_model("vit_tiny_patch16_224", tmp_path / "model.pt", num_classes=5, **tiny)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_timm_model("vit_tiny_patch16_224", tmp_path / "bad.pt", num_classes=3, **tiny)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        load_state_dict(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent'"):
        load_timm_model("vit_nonexistent")


def test_train_sae_takes_the_run_model_spec_with_architecture_arguments(tmp_path) -> None:
    """An own small ViT (patch 8, width 64, 3 blocks): the same spec via flags or via fgattr run's config file."""
    from safetensors.torch import save_file

    from captum_fgattr.bench.config import ModelConfig
    from captum_fgattr.bench.resolve import load_model

    arch = {"patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 4}
    spec = ModelConfig(name="timm:vit_tiny_patch16_224", num_classes=2, img_size=32, kwargs=arch)
    with pytest.warns(UserWarning, match="NO checkpoint"):
        own = load_model(spec)
    save_file({k: v.contiguous() for k, v in own.state_dict().items()}, str(tmp_path / "own.safetensors"))
    make_image_folder(tmp_path / "images", per_class=2)
    common = ["--data", str(tmp_path / "images"), "--layers", "2", "--expansion", "1", "--k", "4", "--epochs", "1",
              "--batch-tokens", "16", "--warmup-steps", "1", "--lr", "1e-3", "--quiet", "--device", "cpu"]
    flags = ["train-sae", "--model", "timm:vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "own.safetensors"),
             "--img-size", "32", "--model-kwargs", json.dumps(arch), "--output", str(tmp_path / "a"), *common]
    assert main(flags) == 0
    config = {"model": {"name": "timm:vit_tiny_patch16_224", "checkpoint": str(tmp_path / "own.safetensors"),
                        "img_size": 32, "kwargs": arch}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert main(["train-sae", "--config", str(tmp_path / "run.json"), "--output", str(tmp_path / "b"), *common]) == 0
    a, b = load_sae(tmp_path / "a" / "layer_2"), load_sae(tmp_path / "b" / "layer_2")
    assert a.d_in == 64 and torch.equal(a.W_dec, b.W_dec)  # same model, same tokens, same SAE
    assert json.loads((tmp_path / "b" / "run.json").read_text())["model"]["kwargs"] == arch


def test_a_checkpoint_of_another_architecture_names_the_arguments_to_give(tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    own = load_timm_model("vit_tiny_patch16_224", num_classes=2, img_size=32, patch_size=8, embed_dim=64, depth=3,
                          num_heads=4)
    save_file({k: v.contiguous() for k, v in own.state_dict().items()}, str(tmp_path / "own.safetensors"))
    make_image_folder(tmp_path / "images", per_class=1)
    code = main(["train-sae", "--model", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "own.safetensors"),
                 "--img-size", "32", "--data", str(tmp_path / "images"), "--layers", "0", "--output",
                 str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "depth 3 (model: 12)" in err and "embed_dim 64 (model: 192)" in err
    assert '--model-kwargs \'{"depth": 3, "embed_dim": 64, "patch_size": 8}\'' in err


def test_train_sae_defaults_follow_the_model_and_are_printed(tmp_path, capsys) -> None:
    from captum_fgattr.bench.train_saes import sized_defaults

    make_image_folder(tmp_path / "images", per_class=3)
    out = tmp_path / "out"
    assert main(["train-sae", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--model-kwargs", '{"depth": 3}',
                 "--data", str(tmp_path / "images"), "--epochs", "1", "--lr", "1e-3", "--output", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    # 4 training images (one per class held out) x 2x2 patches = 16 tokens: the smallest batch, 64 tokens
    assert sized_defaults(3, 192, 4 * 4) == {"layers": [0, 1], "expansion": 16, "k": 32, "batch_tokens": 64}
    err = capsys.readouterr().err
    assert "layers [0, 1], expansion 16, k 32, batch 64 tokens" in err
    assert "sized from the model and data: layers, expansion, k, batch_tokens, warmup_steps" in err
    sae = load_sae(out / "layer_1")
    assert (sae.n_features, sae.k) == (16 * 192, 32)
    assert json.loads((out / "run.json").read_text())["resolved"]["layers"] == [0, 1]
