"""Perturbed-image outputs shared between methods (quantus_saco.forwards): the same scores, fewer forwards."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from captum_fgattr.bench.config import EvalConfig, MetricConfig
from captum_fgattr.bench.evaluate import evaluate_methods
from captum_fgattr.bench.experiments import fg_spec, transmm_spec
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.store import ResultStore
from quantus_saco import evaluate_patch_metrics
from quantus_saco.forwards import PerturbedForwards
from tests.test_bench_evaluate import tiny_setup

SETTINGS = dict(saco_groups=4, fc_subset_size=3, fc_runs=6, pf_patches_per_step=2, seed=3)
B, P, CLASSES = 5, 16, 3
# variants per image: K = 4 SaCo groups + 8 PF steps (16 patches, 2 per step), FC's 6 runs. Distinct perturbed
# images per image and method: SaCo's first group (the 4 top patches) is PF's second step (4 patches replaced by the
# same mean), so 11; PF's last step (every patch replaced) is the same for every method.
SACO_PF, FC, DISTINCT = 4 + 16 // 2, 6, 4 + 16 // 2 - 1


class RowCounter(nn.Module):
    """``model`` counting the images of every forward (a check independent of PerturbedForwards' own counts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rows = model, 0
        self.patch_embed = model.patch_embed  # the engine's patch-size check reads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


class BatchSizeDependent(RowCounter):
    """``model`` whose class-0 logit moves with the batch size, as a backend that picks its kernels by batch size
    moves the last bits (here by 1e-3 per image, so that every score shows it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits + torch.tensor([1e-3 * x.shape[0]] + [0.0] * (logits.shape[1] - 1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=CLASSES)
    x = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attrs = torch.randn(3, B, P, generator=torch.Generator().manual_seed(2))  # three "methods"
    return vit.eval(), x, attrs


def scores(model, x, attr, **kwargs) -> dict[str, torch.Tensor]:
    return evaluate_patch_metrics(model, x, attr, torch.tensor([0, 1, 2, 1, 0]), 8, **SETTINGS, **kwargs)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit for bit, not within a tolerance


def test_a_cache_hit_and_a_miss_give_identical_scores(setup, one_torch_thread):
    vit, x, attrs = setup
    alone = [scores(vit, x, attr) for attr in attrs]  # each call its own outputs: every variant a miss
    shared = PerturbedForwards(vit, x, 8)
    first = [scores(vit, x, attr, forwards=shared) for attr in attrs]
    again = [scores(vit, x, attr, forwards=shared) for attr in attrs]  # every variant a hit now
    for a, b, c in zip(alone, first, again):
        assert_identical(a, b)
        assert_identical(a, c)
    assert shared.requested == 2 * 3 * B * (SACO_PF + FC)
    # FC's subsets and PF's last step once for the three methods
    assert shared.forwarded == 3 * B * (DISTINCT - 1) + B + B * FC


def test_two_methods_with_identical_maps_share_every_forward(setup, one_torch_thread):
    vit, x, attrs = setup
    model = RowCounter(vit).eval()
    shared = PerturbedForwards(model, x, 8)
    logits = vit(x).detach()
    scores(model, x, attrs[0], forwards=shared, logits=logits, max_batch=7)
    distinct = B * (DISTINCT + FC)
    assert shared.forwarded == distinct and model.rows == distinct + (-distinct % 7)  # chunks of 7, last filled up
    rows = model.rows
    scores(model, x, attrs[0].clone() * 2, forwards=shared, logits=logits, max_batch=7)  # same ranking
    assert model.rows == rows and shared.forwarded == distinct and shared.requested == 2 * B * (SACO_PF + FC)


def test_every_forward_has_max_batch_images(setup, one_torch_thread):
    """The same scores whatever other images share a forward, on a model whose outputs depend on the batch size: a
    shared PerturbedForwards whose second call forwards only that method's images (fewer, so a shorter last chunk)
    equals the method alone. Every forward of perturbed images has max_batch rows."""
    vit, x, attrs = setup
    model = BatchSizeDependent(vit).eval()
    logits = model(x).detach()
    for max_batch in (1, 7, 40, 300):
        shared = PerturbedForwards(model, x, 8)
        scores(model, x, attrs[0], forwards=shared, max_batch=max_batch, logits=logits)
        model.rows = 0
        together = scores(model, x, attrs[1], forwards=shared, max_batch=max_batch, logits=logits)
        assert model.rows % max_batch == 0 and model.rows > 0
        assert_identical(together, scores(model, x, attrs[1], max_batch=max_batch, logits=logits))


def test_outputs_of_other_images_or_models_are_refused(setup):
    vit, x, attrs = setup
    shared = PerturbedForwards(vit, x, 8)
    with pytest.raises(ValueError, match="outputs of other images"):
        scores(vit, x + 1, attrs[0], forwards=shared)
    other = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=CLASSES)
    with pytest.raises(ValueError, match="another model's"):
        scores(other.eval(), x, attrs[0], forwards=shared)
    scores(vit, x.clone(), attrs[0], forwards=shared)  # equal images in another tensor are the same images


def test_a_multi_method_run_equals_each_method_evaluated_alone(tmp_path, one_torch_thread):
    """evaluate_methods shares one PerturbedForwards between the methods of a batch; each method evaluated in a run
    of its own (nothing to share with) stores bit-identical scores. Two batches (10 images, batch 4 + remainder)."""
    model, data, saes = tiny_setup()
    config = EvalConfig(batch_size=4, progress=False, gallery=0, metrics=MetricConfig(**SETTINGS))
    specs = [transmm_spec(), fg_spec([1], "combined", 0.5, 10.0), MethodSpec("rollout", {}),
             MethodSpec("random", {"seed": 1})]
    with ResultStore(tmp_path / "together") as store:
        evaluate_methods(model, data, specs, store, experiment="e", split="val", saes=saes, config=config)
        together = {spec.key: store.scores("val", spec.key) for spec in specs}
    for spec in specs:
        with ResultStore(tmp_path / spec.name) as store:
            evaluate_methods(model, data, [spec], store, experiment="e", split="val", saes=saes, config=config)
            alone = store.scores("val", spec.key)
        assert alone.keys() == together[spec.key].keys() and len(alone["image_id"]) == 10
        for column, values in alone.items():  # NaN where undefined: equal_nan, still bit for bit otherwise
            np.testing.assert_array_equal(values, together[spec.key][column], err_msg=f"{spec.label}: {column}")
