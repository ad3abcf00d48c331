"""Class folders must agree between the splits of a dataset: labels are indices into them (issue 15 item 5)."""
from __future__ import annotations

import pytest
from PIL import Image

from captum_fgattr.bench.data.layouts import load_dataset


def make_split(root, split, classes, per_class=2):
    for cls in classes:
        folder = root / split / cls
        folder.mkdir(parents=True)
        for i in range(per_class if cls != "empty" else 0):
            Image.new("RGB", (8, 8), (10 * i, 20, 30)).save(folder / f"{cls}_{i}.png")


def test_extra_empty_class_folder_in_one_split_is_refused(tmp_path):
    make_split(tmp_path, "val", ["cat", "dog", "zebra"])
    make_split(tmp_path, "test", ["cat", "dog", "empty", "zebra"])  # "zebra" would get label 3 instead of 2
    for split in ("test", "val"):
        with pytest.raises(ValueError, match=r"class folders differ between splits .*only in the (first|second) \['empty'\]"):
            load_dataset("folder", tmp_path, split)


def test_missing_class_folder_in_a_sibling_split_is_refused(tmp_path):
    make_split(tmp_path, "train", ["cat", "dog", "zebra"])
    make_split(tmp_path, "val", ["cat", "zebra"])
    with pytest.raises(ValueError, match=r"only in the first \[\], only in the second \['dog'\]"):
        load_dataset("folder", tmp_path, "val")


def test_identical_class_folders_give_the_same_labels(tmp_path):
    make_split(tmp_path, "val", ["cat", "dog", "zebra"])
    make_split(tmp_path, "test", ["cat", "dog", "zebra"], per_class=1)
    val, test = load_dataset("folder", tmp_path, "val"), load_dataset("folder", tmp_path, "test")
    assert val.classes == test.classes == ["cat", "dog", "zebra"]
    assert [label for _, label in test.samples] == [0, 1, 2]


def test_imagenet_train_and_val_are_compared(tmp_path):
    make_split(tmp_path, "train", ["n00000001", "n00000002"])
    make_split(tmp_path, "val", ["n00000001", "n00000002", "n00000003"])
    with pytest.raises(ValueError, match=r"only in the first \['n00000003'\]"):
        load_dataset("imagenet", tmp_path, "val")
