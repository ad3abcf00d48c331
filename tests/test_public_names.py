"""The public names of ``captum_fgattr.bench.data`` import from there (a user script's place), and the README lists
them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import captum_fgattr.bench.data as data
from captum_fgattr.bench.data import ImageFolderDataset, Preprocess, build_transform, layouts

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
#: what users import from captum_fgattr.bench.data (a script importing ImageFolderDataset broke when it moved)
PUBLIC = ("ImageFolderDataset", "ImageListDataset", "load_dataset", "check_same_classes", "Preprocess", "build_transform",
          "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "LAYOUTS", "Layout", "SplitSource")


def test_the_public_names_import_from_the_documented_place_as_the_objects_the_benchmark_uses():
    assert sorted(data.__all__) == sorted(PUBLIC)
    imported: dict[str, object] = {}
    exec(f"from captum_fgattr.bench.data import {', '.join(PUBLIC)}", imported)
    assert all(imported[name] is getattr(layouts, name) for name in PUBLIC)


def test_the_readme_lists_the_public_names_and_an_unknown_name_is_an_error_listing_them():
    listed = re.search(r"\*\*Datasets in Python\.\*\*(.*?)\n\n", README, re.S).group(1)
    assert "captum_fgattr.bench.data" in listed
    assert [name for name in PUBLIC if name not in listed and not name.endswith(("_MEAN", "_STD"))] == []
    with pytest.raises(AttributeError, match="no attribute 'ImageDataset'; its public names: .*ImageFolderDataset"):
        data.ImageDataset


def test_an_image_folder_reads_from_the_public_import(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("L", (20, 20), 100).save(tmp_path / name / "0.png")
    folder = ImageFolderDataset(tmp_path, build_transform(Preprocess(img_size=16, mean=0.5, std=0.25, channels=1)))
    assert folder.classes == ["a", "b"] and folder[1][0].shape == (1, 16, 16) and folder[1][1] == 1
