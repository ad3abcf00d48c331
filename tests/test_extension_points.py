"""The extension points CONTRIBUTING.md describes, each used from a test module only: a dataset layout (one
entry in LAYOUTS) and a baseline (one Captum class plus one registry entry) run through the benchmark."""
from __future__ import annotations

import pytest
import torch

from captum_fgattr.bench.config import DataConfig, Protocol
from captum_fgattr.bench.data.layouts import LAYOUTS, Layout, Preprocess
from captum_fgattr.bench.methods import METHODS, MethodSpec, build_method, register_method
from captum_fgattr.bench.resolve import load_split
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import run_study
from captum_fgattr.patch_attribution import PatchAttribution
from tests.test_bench_data_models import save_images
from tests.test_bench_evaluate import CFG, tiny_setup


def test_a_dataset_layout_is_one_entry(tmp_path, monkeypatch):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for c, cls in enumerate(("normal", "pneumonia")):
            save_images(tmp_path / "chestx" / split / cls, count + c, value=60 + 80 * c)
    monkeypatch.setitem(LAYOUTS, "chestx-folders", Layout(
        name="ChestX folders", class_dirs=("{split}/{cls}",), classes=("normal", "pneumonia"), image_dirs=("",),
        split_dirs={"train": "train", "val": "val", "test": "test"},
        preprocess=Preprocess(img_size=8, resize=8, mean=0.5, std=0.25), example="test/normal/img_00.png"))
    val = load_split(DataConfig(kind="chestx-folders", root=str(tmp_path)), "val")
    assert len(val) == 2 + 3 and val.classes == ["normal", "pneumonia"]
    image, label = val[4]
    assert image.shape == (3, 8, 8) and label == 1
    torch.testing.assert_close(image, torch.full((3, 8, 8), (140 / 255 - 0.5) / 0.25), atol=1e-5, rtol=0)


class CenterPrior(PatchAttribution):
    """A baseline for the test: relevance = minus the patch's distance to the grid centre."""

    def _patch_relevance(self, images, target, extra):
        gh, gw = self.adapter.grid_size(images)
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        distance = ((rows - (gh - 1) / 2) ** 2 + (cols - (gw - 1) / 2) ** 2).flatten().float()
        return (-distance).expand(images.shape[0], -1).to(images.device)


@pytest.fixture
def center_prior_registered():
    register_method("center_prior")(lambda model, adapter, saes: (
        lambda images, targets, ids: CenterPrior(model).attribute(images, return_patches=True).flatten(1)))
    yield
    METHODS.pop("center_prior")


def test_a_baseline_is_one_class_and_one_registry_entry(tmp_path, center_prior_registered):
    model, data, saes = tiny_setup(6)
    maps = build_method(MethodSpec("center_prior"), model)(torch.randn(2, 3, 32, 32), torch.zeros(2), torch.arange(2))
    assert maps.shape == (2, 16) and maps[0].argmax() in (5, 6, 9, 10)  # a centre patch of the 4×4 grid
    protocol = Protocol(layers=(1,), variants=("combined",), multi_layers=(), controls=(), baselines=("center_prior",),
                        val_images=None, test_images=4)
    run_dir = run_study(model, data, data, saes, tmp_path / "run", protocol, CFG)
    with ResultStore(run_dir) as store:
        assert [s.name for s in store.experiment_methods("test", "test")] == ["transmm", "fg", "center_prior"]
    assert "| center_prior |" in (run_dir / "report" / "test.md").read_text()
