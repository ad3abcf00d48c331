"""Batched engine ``evaluate_patch_metrics`` gives the numbers of the Quantus-hosted metrics."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from quantus_saco import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo, evaluate_patch_metrics

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
QKW = dict(patch_size=8, disable_warnings=True)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    a = rng.normal(size=(5, 16))
    return model, x, y, a


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "groups, runs, size, corr, step, max_batch",
    [(4, 6, 3, "pearson", 1, 7), (5, 8, 5, "spearman", 3, 1000), (16, 6, 8, "pearson", 16, 1)],
)
def test_engine_equals_quantus_metrics(setup, device, groups, runs, size, corr, step, max_batch):
    model, x, y, a = setup
    model = model.to(device)
    out = evaluate_patch_metrics(
        model, torch.from_numpy(x).to(device), torch.from_numpy(a).to(device), torch.from_numpy(y).to(device), 8,
        saco_groups=groups, fc_subset_size=size, fc_runs=runs, fc_correlation=corr,
        pf_patches_per_step=step, seed=4, max_batch=max_batch,
    )
    call = dict(model=model, x_batch=x, y_batch=y, a_batch=a, device=device, batch_size=2)
    expected = {
        "saco": SaCo(n_groups=groups, **QKW)(**call),
        "fc": PatchFaithfulnessCorrelation(nr_runs=runs, subset_size=size, correlation=corr, seed=4, **QKW)(**call),
        "pf_auc": PatchPixelFlipping(patches_in_step=step, **QKW)(**call),
        "pf_curve": PatchPixelFlipping(patches_in_step=step, return_auc_per_sample=False, **QKW)(**call),
    }
    assert set(out) == set(expected)
    for name, value in expected.items():
        assert out[name].device.type == device and out[name].dtype == torch.float64
        np.testing.assert_allclose(out[name].cpu().numpy(), np.asarray(value), rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_batch", [5, 1000])
def test_engine_equals_quantus_metrics_with_the_thesis_code_options(setup, device, max_batch):
    """Every option of the thesis author's variants gives the same numbers on both paths (tied attributions, so
    the tie orders matter; a constant attribution row, so undefined scores occur)."""
    model, x, y, a = setup
    a = np.round(a)  # many ties
    a[4] = 0.0  # zero row: all group saliences 0, SaCo undefined
    model = model.to(device)
    out = evaluate_patch_metrics(
        model, torch.from_numpy(x).to(device), torch.from_numpy(a).to(device), torch.from_numpy(y).to(device), 8,
        saco_groups=5, fc_subset_size=3, fc_runs=6, fc_correlation="spearman", seed=42, max_batch=max_batch,
        saco_target="perturbed_top", saco_tie_order="numpy_reversed", saco_pairing="salience",
        fc_sampling="numpy_global", pf_tie_order="numpy_negated", pf_replacement="running_mean", undefined_score="zero",
    )
    call = dict(model=model, x_batch=x, y_batch=y, a_batch=a, device=device, batch_size=5)
    expected = {
        "saco": SaCo(n_groups=5, target="perturbed_top", tie_order="numpy_reversed", pairing="salience",
                     undefined="zero", **QKW)(**call),
        "fc": PatchFaithfulnessCorrelation(nr_runs=6, subset_size=3, correlation="spearman", seed=42,
                                           sampling="numpy_global", undefined="zero", **QKW)(**call),
        "pf_auc": PatchPixelFlipping(tie_order="numpy_negated", replacement="running_mean", **QKW)(**call),
    }
    assert out["saco"][4] == 0 and out["fc"][4] == 0
    for name, value in expected.items():
        np.testing.assert_allclose(out[name].cpu().numpy(), np.asarray(value), rtol=0, atol=1e-5, err_msg=name)


def test_given_logits_replace_the_unperturbed_forward(setup):
    model, x, y, a = setup
    x, a, y = torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y)
    kw = dict(saco_groups=4, fc_runs=4, fc_subset_size=2)
    computed = evaluate_patch_metrics(model, x, a, y, 8, **kw)
    with torch.no_grad():
        given = evaluate_patch_metrics(model, x, a, y, 8, logits=model(x), **kw)
    for name in computed:
        torch.testing.assert_close(given[name], computed[name], rtol=0, atol=1e-9)
    other = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    curve = evaluate_patch_metrics(model, x, a, y, 8, logits=other, metrics=("pf",), **kw)["pf_curve"]
    expected = other.softmax(dim=1).gather(1, y[:, None])[:, 0].double()  # the given logits are really used
    torch.testing.assert_close(curve[:, 0], expected)


def test_metric_selection_and_predicted_target(setup):
    model, x, _, a = setup
    x, a = torch.from_numpy(x), torch.from_numpy(a)
    pred = model(x).argmax(1)
    kw = dict(saco_groups=4, fc_runs=4, fc_subset_size=2)
    assert sorted(evaluate_patch_metrics(model, x, a, None, 8, metrics=("pf",), **kw)) == ["pf_auc", "pf_curve"]
    auto = evaluate_patch_metrics(model, x, a, None, 8, metrics=("saco", "fc"), **kw)
    explicit = evaluate_patch_metrics(model, x, a, pred, 8, **kw)
    assert sorted(auto) == ["fc", "saco"]
    for name in auto:
        torch.testing.assert_close(auto[name], explicit[name], rtol=0, atol=1e-9)


def test_autocast_close_to_fp32(setup):
    model, x, y, a = setup
    args = (model, torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(y), 8)
    full = evaluate_patch_metrics(*args, metrics=("pf",))
    low = evaluate_patch_metrics(*args, metrics=("pf",), autocast=True)
    assert torch.isfinite(low["pf_curve"]).all()
    torch.testing.assert_close(low["pf_auc"], full["pf_auc"], rtol=0, atol=0.02)


def test_engine_constant_attribution_nan(setup):
    model, x, y, _ = setup
    a = torch.ones(5, 16)
    with pytest.warns(RuntimeWarning, match="SaCo is undefined"):
        out = evaluate_patch_metrics(model, torch.from_numpy(x), a, torch.from_numpy(y), 8, metrics=("saco", "fc"), saco_groups=4, fc_runs=4, fc_subset_size=3)
    assert torch.isnan(out["saco"]).all() and torch.isnan(out["fc"]).all()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(patch_attr=torch.zeros(5, 15)), r"patch_attr has shape \(5, 15\)"),
        (dict(patch_size=5), "not divisible by patch_size=5"),
        (dict(x=torch.full((5, 3, 32, 32), float("nan"))), "x contains NaN"),
        (dict(patch_attr=torch.full((5, 16), float("inf"))), "patch_attr contains NaN or Inf"),
        (dict(saco_groups=17), "saco_groups=17"),
        (dict(saco_groups=0), "saco_groups=0"),
        (dict(fc_subset_size=16), "subset_size=16"),
        (dict(fc_runs=1), "fc_runs=1"),
        (dict(fc_correlation="kendall"), "fc_correlation='kendall'"),
        (dict(pf_patches_per_step=0), "pf_patches_per_step=0"),
        (dict(metrics=("saco", "iou")), "metrics=\\('saco', 'iou'\\)"),
        (dict(max_batch=0), "max_batch=0"),
        (dict(logits=torch.zeros(4, 3)), r"logits has shape \(4, 3\)"),
        (dict(saco_target="label"), "saco_target='label'"),
        (dict(saco_tie_order="random"), "saco_tie_order='random'"),
        (dict(saco_pairing="sorted"), "saco_pairing='sorted'"),
        (dict(fc_sampling="global"), "fc_sampling='global'"),
        (dict(pf_tie_order="numpy"), "pf_tie_order='numpy'"),
        (dict(pf_replacement="mean"), "pf_replacement='mean'"),
        (dict(undefined_score="none"), "undefined_score='none'"),
    ],
)
def test_engine_errors(setup, change, match):
    model, x, y, a = setup
    kwargs = dict(model=model, x=torch.from_numpy(x), patch_attr=torch.from_numpy(a), target=torch.from_numpy(y), patch_size=8, saco_groups=4, fc_runs=4, fc_subset_size=3)
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        evaluate_patch_metrics(**kwargs)


def test_engine_refuses_training_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(), torch.nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(ValueError, match="training mode"):
        evaluate_patch_metrics(model, torch.randn(2, 3, 16, 16), torch.randn(2, 4), None, 8, saco_groups=2, fc_subset_size=2, fc_runs=3)
    assert model.training  # left as the user set it


def test_fill_replaces_patches_by_the_fill_images_pixels(setup):
    """With ``fill`` (here a blurred copy), each removed patch takes the fill image's pixels: PF's curve equals a
    per-image loop that pastes those pixels and forwards one image at a time."""
    model, x, y, a = setup
    images = torch.from_numpy(x)
    fill = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)  # a blurred copy, not constant per patch
    out = evaluate_patch_metrics(model, images, torch.from_numpy(a), torch.from_numpy(y), 8, metrics=("saco", "pf"),
                                 saco_groups=4, pf_patches_per_step=4, fill=fill)
    with torch.no_grad():
        for i in range(len(x)):
            order = np.argsort(-a[i], kind="stable")
            probs = []
            for removed in (0, 4, 8, 12, 16):
                image = images[i].clone()
                for patch in order[:removed]:
                    r, c = divmod(int(patch), 4)
                    image[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = fill[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8]
                probs.append(float(model(image[None]).softmax(-1)[0, y[i]]))
            np.testing.assert_allclose(out["pf_curve"][i].numpy(), probs, atol=1e-5)
    without = evaluate_patch_metrics(model, images, torch.from_numpy(a), torch.from_numpy(y), 8, metrics=("pf",),
                                     pf_patches_per_step=4)
    assert not torch.allclose(without["pf_curve"], out["pf_curve"])  # the mean replacement scores otherwise


def test_fill_errors(setup):
    model, x, y, a = setup
    images = torch.from_numpy(x)
    with pytest.raises(ValueError, match="fill has shape"):
        evaluate_patch_metrics(model, images, torch.from_numpy(a), None, 8, fill=images[:2])
    with pytest.raises(ValueError, match="running_mean"):
        evaluate_patch_metrics(model, images, torch.from_numpy(a), None, 8, fill=images, pf_replacement="running_mean")
    from quantus_saco.forwards import PerturbedForwards
    with pytest.raises(ValueError, match="another fill"):
        evaluate_patch_metrics(model, images, torch.from_numpy(a), None, 8, fill=torch.zeros_like(images),
                               forwards=PerturbedForwards(model, images, 8))
