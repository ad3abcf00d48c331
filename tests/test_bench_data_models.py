"""Dataset layouts (COVID-QU-Ex, HyperKvasir, ImageNet, plain folders) and model loading (timm, CLIP) of the
benchmark, on tiny generated folders and checkpoints: nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captum_fgattr.bench.data.layouts import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, load_dataset
from captum_fgattr.bench.models.loading import load_model
from captum_fgattr.clip import CLIPZeroShotClassifier

COVID = ("COVID-19", "Non-COVID", "Normal")
KVASIR = {"lower-gi-tract": ("cecum", "ileum", "retroflex-rectum"),
          "upper-gi-tract": ("pylorus", "retroflex-stomach", "z-line")}
KVASIR_SORTED = ["cecum", "ileum", "pylorus", "retroflex-rectum", "retroflex-stomach", "z-line"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_images(folder: Path, count: int, ext: str = "png", mode: str = "L", value: int | None = None, size=(8, 8)) -> None:
    """``count`` small images ``img_{i}.{ext}``; random pixels unless ``value`` (a constant) is given."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(count)
    channels = 1 if mode == "L" else 3
    for i in range(count):
        if value is None:
            pixels = (torch.rand(size[1], size[0], channels, generator=g) * 255).to(torch.uint8)
        else:
            pixels = torch.full((size[1], size[0], channels), value, dtype=torch.uint8)
        Image.fromarray(pixels.squeeze(-1).numpy(), mode=mode).save(folder / f"img_{i:02d}.{ext}")


def make_covid(root: Path, counts=None, images_dir: str = "images", splits=("Train", "Val", "Test")) -> None:
    """{Train,Val,Test}/{class}/[images/]*.png under ``root``, with lung masks beside the images."""
    counts = counts or {"train": 3, "val": 2, "test": 1}
    for split in splits:
        for c, cls in enumerate(COVID):
            folder = root / split / cls
            save_images(folder / images_dir, counts[split.lower()] + c, value=40 * c + 60)
            if images_dir:
                save_images(folder / "lung masks", 1, value=255)


def make_kvasir(root: Path, counts=(20, 10, 11, 30, 9, 40), published: bool = True) -> dict[str, int]:
    """The six landmark classes (published tree or flat) plus a pathological-findings distractor."""
    sizes = {}
    classes = [(tract, cls) for tract, names in KVASIR.items() for cls in names]
    for (tract, cls), n in zip(classes, counts):
        folder = root / "labeled-images" / tract / "anatomical-landmarks" / cls if published else root / cls
        save_images(folder, n, ext="jpg", mode="RGB", size=(10, 8))
        sizes[cls] = n
    if published:
        save_images(root / "labeled-images" / "lower-gi-tract" / "pathological-findings" / "polyps", 2, ext="jpg", mode="RGB")
    return sizes


# --- data ------------------------------------------------------------------------------------------------


def test_covid_published_archive_prefers_lung_set_and_preprocesses(tmp_path) -> None:
    make_covid(tmp_path / "Lung Segmentation Data" / "Lung Segmentation Data")
    infection = tmp_path / "Infection Segmentation Data" / "Infection Segmentation Data"
    make_covid(infection, counts={"train": 1, "val": 1, "test": 1})
    sizes = {"train": 3 * 3 + 3, "val": 3 * 2 + 3, "test": 3 * 1 + 3}
    for split, size in sizes.items():
        ds = load_dataset("covid-qu-ex", tmp_path, split)
        assert len(ds) == size and ds.classes == ds.class_names == list(COVID)
    ds = load_dataset("covid-qu-ex", tmp_path, "test")
    assert ds.targets == [0, 1, 1, 2, 2, 2]
    assert ds.ids[0] == "Lung Segmentation Data/Lung Segmentation Data/Test/COVID-19/images/img_00.png"
    assert not any("masks" in i for i in ds.ids)
    image, label = ds[5]  # constant gray 140 -> 3 equal channels, (140/255 - 0.56) / 0.21
    assert image.shape == (3, 224, 224) and label == 2
    torch.testing.assert_close(image, torch.full((3, 224, 224), (140 / 255 - 0.56) / 0.21), atol=1e-5, rtol=0)


@pytest.mark.parametrize("images_dir", ["images", ""])
def test_covid_flat_layouts_case_insensitive(tmp_path, images_dir) -> None:
    make_covid(tmp_path / "covid", images_dir=images_dir, splits=("train", "Val", "TEST"))
    ds = load_dataset("covid-qu-ex", tmp_path / "covid", "val")
    assert len(ds) == 9 and ds.targets == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert ds.ids[0] == (f"Val/COVID-19/{images_dir}/img_00.png" if images_dir else "Val/COVID-19/img_00.png")
    assert len(load_dataset("covid-qu-ex", tmp_path, "validation")) == 9  # found one level down; split alias


def test_covid_clear_errors(tmp_path) -> None:
    make_covid(tmp_path / "covid")
    (tmp_path / "covid" / "Test" / "Normal" / "images").rename(tmp_path / "covid" / "Test" / "Normal" / "imgs")
    for path in (tmp_path / "covid" / "Test" / "Normal" / "imgs").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"no images .* in "
                       r"\['Normal'\].*Test/\{COVID-19,Non-COVID,Normal\}/\[images/\]<image>"):
        load_dataset("covid-qu-ex", tmp_path / "covid", "test")
    (tmp_path / "covid" / "Val" / "Non-COVID").rename(tmp_path / "covid" / "Val" / "Other")
    with pytest.raises(ValueError, match=r"closest match .*covid.* lacks class folders \['Non-COVID'\]; found sub-folders "
                       r"\['Test/', .*'Val/Other/'\]"):
        load_dataset("covid-qu-ex", tmp_path / "covid", "val")
    with pytest.raises(ValueError, match=r"COVID-QU-Ex .*: no matching class folders; expected Train/"):
        load_dataset("covid-qu-ex", tmp_path / "covid" / "Val", "train")
    make_covid(tmp_path / "two" / "a")
    make_covid(tmp_path / "two" / "b")
    with pytest.raises(ValueError, match=r"several COVID-QU-Ex folders under .*two': \['a', 'b'\]; pass one of them as root"
):
        load_dataset("covid-qu-ex", tmp_path / "two", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty': no matching class folders; .* found sub-folders none"):
        load_dataset("covid-qu-ex", tmp_path / "empty", "test")
    with pytest.raises(FileNotFoundError, match="nowhere.* does not exist"):
        load_dataset("covid-qu-ex", tmp_path / "nowhere", "test")
    with pytest.raises(ValueError, match=r"split='dev' for COVID-QU-Ex; expected one of \['train', 'val', 'test'\]"):
        load_dataset("covid-qu-ex", tmp_path / "covid", "dev")
    with pytest.raises(ValueError, match="unknown dataset kind 'mnist'"):
        load_dataset("mnist", tmp_path, "test")


def test_hyperkvasir_seeded_stratified_split(tmp_path) -> None:
    sizes = make_kvasir(tmp_path / "hyper-kvasir")
    splits = {s: load_dataset("hyperkvasir", tmp_path / "hyper-kvasir", s) for s in ("train", "val", "test")}
    assert splits["val"].classes == KVASIR_SORTED
    for label, cls in enumerate(KVASIR_SORTED):  # per class 80/10/10, rounding remainder to train
        n = sizes[cls]
        counts = [ds.targets.count(label) for ds in splits.values()]
        assert counts == [n - 2 * round(n / 10), round(n / 10), round(n / 10)]
    ids = [set(ds.ids) for ds in splits.values()]
    assert sum(map(len, ids)) == len(set.union(*ids)) == sum(sizes.values())  # disjoint, complete
    assert not any("polyps" in i for i in set.union(*ids))
    assert load_dataset("hyperkvasir", tmp_path / "hyper-kvasir", "test").ids == splits["test"].ids  # stable
    assert load_dataset("hyperkvasir", tmp_path, "test", seed=7).ids != splits["test"].ids
    flat_sizes = make_kvasir(tmp_path / "flat", published=False)
    flat = load_dataset("hyperkvasir", tmp_path / "flat", "test")
    assert flat_sizes == sizes and [i.split("/")[-2:] for i in flat.ids] == [i.split("/")[-2:] for i in splits["test"].ids]

    image, _ = splits["test"][0]  # 10 x 8 -> squashed to 224 x 224, no crop
    assert image.shape == (3, 224, 224)
    pixels = torch.from_numpy(np.array(Image.open(splits["test"].samples[0][0]))).float() / 255
    means = (image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]).mean((1, 2))
    torch.testing.assert_close(means, pixels.mean((0, 1)), atol=0.02, rtol=0)  # whole image kept
    (tmp_path / "flat" / "z-line").rename(tmp_path / "flat" / "zline")
    with pytest.raises(ValueError, match=r"lacks class folders \['z-line'\]"):
        load_dataset("hyperkvasir", tmp_path / "flat", "train")


def make_imagenet(root: Path, synsets=("n01440764", "n01443537", "n02102040"), per_class: int = 6) -> None:
    for split in ("train", "val"):
        for c, synset in enumerate(synsets):
            save_images(root / split / synset, per_class + c, ext="JPEG", mode="RGB", size=(12, 9))


def test_imagenet_classes_subset_and_class_names(tmp_path) -> None:
    make_imagenet(tmp_path / "imagenet")
    full = load_dataset("imagenet", tmp_path / "imagenet", "val")
    assert full.classes == full.class_names == ["n01440764", "n01443537", "n02102040"] and len(full) == 21
    assert full.targets == [0] * 6 + [1] * 7 + [2] * 8 and full.ids[0] == "val/n01440764/img_00.JPEG"
    sub = load_dataset("imagenet", tmp_path / "imagenet", "val", subset=10)
    assert len(sub) == 10 and sub.ids == sorted(sub.ids, key=full.ids.index) and set(sub.ids) <= set(full.ids)
    assert load_dataset("imagenet", tmp_path / "imagenet", "val", subset=10, seed=42).ids == sub.ids
    assert load_dataset("imagenet", tmp_path / "imagenet", "val", subset=10, seed=1).ids != sub.ids
    with pytest.raises(ValueError, match=r"subset=22; expected an int in 1..21"):
        load_dataset("imagenet", tmp_path / "imagenet", "val", subset=22)

    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish\nn02102040 English springer\n")
    keras = {"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"], "2": ["n02102040", "springer"]}
    (tmp_path / "index.json").write_text(json.dumps(keras))
    (tmp_path / "names.txt").write_text("tench\ngoldfish\nspringer\n")
    for name in ("LOC_synset_mapping.txt", "index.json", "names.txt"):
        named = load_dataset("imagenet", tmp_path / "imagenet", "val", class_names=tmp_path / name)
        assert named.class_names[:2] == ["tench", "goldfish"] and named.classes == full.classes
    (tmp_path / "short.json").write_text(json.dumps({"n01440764": "tench"}))
    with pytest.raises(ValueError, match=r"no name for classes \['n01443537', 'n02102040'\]"):
        load_dataset("imagenet", tmp_path / "imagenet", "val", class_names=tmp_path / "short.json")


def test_imagenet_clip_preprocessing_matches_open_clip_and_flat_val_error(tmp_path) -> None:
    import open_clip

    make_imagenet(tmp_path / "imagenet", per_class=1)
    ds = load_dataset("imagenet", tmp_path / "imagenet", "train")
    image, label = ds[2]
    reference = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    with Image.open(ds.samples[2][0]) as img:
        torch.testing.assert_close(image, reference(img))
    assert label == 1
    save_images(tmp_path / "kaggle" / "val", 3, ext="JPEG", mode="RGB")  # flat val folder: not class folders
    (tmp_path / "kaggle" / "train").mkdir()
    with pytest.raises(ValueError, match=r"ImageNet .*kaggle': no class sub-folders; expected val/<class>/<image>.*found "
                       r"sub-folders \['train/', 'val/'\]"):
        load_dataset("imagenet", tmp_path / "kaggle", "val")


def test_folder_kind_with_and_without_split(tmp_path) -> None:
    for split in ("val", "test"):
        for cls, n in (("zebra", 2), ("apple", 3)):
            save_images(tmp_path / "data" / split / cls / "nested", n, mode="RGB")
    ds = load_dataset("folder", tmp_path / "data", "test")
    assert ds.classes == ["apple", "zebra"] and ds.targets == [0, 0, 0, 1, 1]
    assert ds.ids[-1] == "test/zebra/nested/img_01.png" and ds[0][0].shape == (3, 224, 224)
    assert load_dataset("folder", tmp_path / "data" / "val").ids[0] == "apple/nested/img_00.png"
    with pytest.raises(ValueError, match=r"image folder .*data': no class sub-folders; expected train/<class>/\*\*/<image>"
):
        load_dataset("folder", tmp_path / "data", "train")
    assert LAYOUTS["folder"].max_depth == 0  # a plain folder is never searched below root


# --- models ----------------------------------------------------------------------------------------------

TINY = dict(img_size=32, depth=2)


def test_load_model_timm_wrappers_renames_and_inferred_classes(tmp_path) -> None:
    from safetensors.torch import save_file

    src = load_model("timm:vit_tiny_patch16_224", num_classes=4, **TINY)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = src(x)
    state = src.state_dict()
    thesis = {("lin_head." + k[5:] if k.startswith("head.") else "vit." + k): v for k, v in state.items()}
    torch.save({"epoch": 9, "model_state_dict": {f"module.{k}": v for k, v in thesis.items()}}, tmp_path / "thesis.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "plain.safetensors"))
    for name in ("thesis.pth", "plain.safetensors"):
        model = load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / name, **TINY)  # num_classes from head
        assert model.head.out_features == 4 and not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref)
    with pytest.raises(ValueError, match=r"missing keys \['head.bias', 'head.weight'\], unexpected keys \['lin_head.bias', "
                       r"'lin_head.weight'\]"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "thesis.pth", rename={}, num_classes=4, **TINY)
    with pytest.raises(ValueError, match=r"head.weight: \(4, 192\) vs model \(7, 192\)"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "plain.safetensors", num_classes=7, **TINY)
    with pytest.raises(ValueError, match=r"missing keys \['blocks.2"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "plain.safetensors", img_size=32, depth=3)
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint .*corrupt.pth"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "corrupt.pth", **TINY)
    for spec in ("vit_tiny_patch16_224", "onnx:model", "timm:"):
        with pytest.raises(ValueError, match=r"expected 'timm:<model>' .* or 'clip:<open_clip model>'"):
            load_model(spec)
    with pytest.raises(ValueError, match="unknown timm model 'vit_nope'"):
        load_model("timm:vit_nope")


def test_load_model_clip_local_checkpoint_and_offline_tag(tmp_path, monkeypatch) -> None:
    import open_clip

    torch.manual_seed(0)
    src = open_clip.create_model("ViT-B-32", pretrained=None).half().float().eval()  # fp16-exact weights
    torch.save({k: v.half() for k, v in src.state_dict().items()}, tmp_path / "clip.pt")  # half the bytes
    names = ["covid", "normal lung", "pneumonia"]
    model = load_model("clip:ViT-B-32", checkpoint=tmp_path / "clip.pt", class_names=names)
    assert isinstance(model, CLIPZeroShotClassifier) and model.class_names == names and not model.training
    reference = CLIPZeroShotClassifier(src, names, open_clip.get_tokenizer("ViT-B-32"), templates=("a photo of a {}",))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    del model, reference, src

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(ConnectionError, match=r"cannot download open_clip weights 'ViT-B-32' / 'openai' \(offline\?\).*Network "
                       r"is unreachable.*checkpoint=<local file>"):
        load_model("clip:ViT-B-32", checkpoint="openai", class_names=names)
    with pytest.raises(FileNotFoundError, match=r"'no_such_tag' is neither a file nor an open_clip pretrained tag of 'ViT-B-32' "
                       r"\(tags: \[.*'openai'"):
        load_model("clip:ViT-B-32", checkpoint="no_such_tag", class_names=names)
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"cannot load checkpoint .*other.pt into open_clip model 'ViT-B-32'.*Missing key"
):
        load_model("clip:ViT-B-32", checkpoint=tmp_path / "other.pt", class_names=names)
    with pytest.raises(ValueError, match="CLIP zero-shot needs class_names"):
        load_model("clip:ViT-B-32")
    with pytest.raises(ValueError, match=r"num_classes=2 but 3 class_names"):
        load_model("clip:ViT-B-32", num_classes=2, class_names=names)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        load_model("clip:ViT-Q-99", class_names=names)
