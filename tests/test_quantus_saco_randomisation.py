"""Randomisation checks on patch maps (PatchMPRT, PatchRandomLogit, weight_dependence) against explicit
per-image loops; an input-only map is flagged and Saliency on a trained model passes."""

import copy

import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from quantus.helpers.enums import EvaluationCategory, ScoreDirection
from timm.models.vision_transformer import VisionTransformer

from quantus_saco import PatchMPRT, PatchRandomLogit, WeightDependence, weight_dependence

P_SIZE, GRID, N_CLASSES = 8, 4, 4  # 32x32 images -> 4x4 = 16 patches
KW = dict(patch_size=P_SIZE, disable_warnings=True)


def quadrant_data(n, seed):
    """Noise images; class c in 0..3 adds +2 to one random patch of quadrant c (2x2 patches) of the 4x4 grid."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    row = (y // 2) * 2 + torch.randint(0, 2, (n,), generator=g)
    col = (y % 2) * 2 + torch.randint(0, 2, (n,), generator=g)
    bright = torch.zeros(n, GRID, GRID)
    bright[torch.arange(n), row, col] = 2.0
    return x + bright.repeat_interleave(P_SIZE, 1).repeat_interleave(P_SIZE, 2)[:, None], y


class PatchMLP(torch.nn.Module):
    """Two-layer MLP over the 16 patch means of the channel-mean image."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(GRID * GRID, 32), torch.nn.ReLU(), torch.nn.Linear(32, N_CLASSES))

    def forward(self, x):
        return self.net(torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), P_SIZE).flatten(1))


@pytest.fixture(scope="module")
def trained():
    """A PatchMLP trained (about a second) until it decides the quadrant; returns (model, x, y) held out."""
    torch.manual_seed(0)
    model = PatchMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        x, y = quadrant_data(64, 100 + step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = quadrant_data(12, 1)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.9  # it learned the rule
    return model, x.numpy(), y.numpy()


# ---------------------------------------------------------------- explain functions and explicit references


def saliency_patches(model, inputs, targets, **kwargs):
    """(B, P): |∂ logit_t / ∂x| summed over channels, mean per patch."""
    x = torch.as_tensor(inputs).float().requires_grad_()
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, torch.as_tensor(targets).long()[:, None]).sum(), x)
    return torch.nn.functional.avg_pool2d(grad.abs().sum(1, keepdim=True), P_SIZE).flatten(1).numpy()


def edge_patches(model, inputs, targets, **kwargs):
    """(B, gh, gw): the image's own gradient magnitude per patch; ignores the model and the target."""
    g = np.asarray(inputs).mean(axis=1)
    magnitude = np.abs(np.diff(g, axis=1, append=g[:, -1:])) + np.abs(np.diff(g, axis=2, append=g[:, :, -1:]))
    return magnitude.reshape(len(g), GRID, P_SIZE, GRID, P_SIZE).mean(axis=(2, 4))


def ref_randomised_models(model, seed):
    """[(layer name, model copy)] after re-initialising the layers with ``reset_parameters`` one by one from the
    output, each after ``torch.manual_seed(seed + 1)`` (cascading: each copy keeps the earlier resets)."""
    current = copy.deepcopy(model)
    layers = [(name, m) for name, m in current.named_modules() if hasattr(m, "reset_parameters")][::-1]
    copies = []
    for name, module in layers:
        torch.manual_seed(seed + 1)
        module.reset_parameters()
        copies.append((name, copy.deepcopy(current)))
    return copies


def ref_spearman(map_a, map_b):
    return scipy.stats.spearmanr(np.ravel(map_a), np.ravel(map_b))[0]


def ref_mprt(model, x, y, explain, seed):
    """{layer: [ρ(map of the trained model, map after randomising up to that layer)] per image}."""
    maps = [explain(model, x[b:b + 1], y[b:b + 1])[0] for b in range(len(x))]
    return {name: [ref_spearman(maps[b], explain(random, x[b:b + 1], y[b:b + 1])[0]) for b in range(len(x))]
            for name, random in ref_randomised_models(model, seed)}


def ref_random_logit(model, x, y, explain, seed, batch_size):
    """ρ(map for the target, map for another class) per image; the other class as Quantus draws it: numpy seeded
    with ``seed`` at every batch, randint(0, K - 1) per image indexing the classes other than the target."""
    scores = []
    for start in range(0, len(x), batch_size):
        draws = np.random.RandomState(seed).randint(0, N_CLASSES - 1, len(x[start:start + batch_size]))
        for b, draw in zip(range(start, start + batch_size), draws):
            other = [c for c in range(N_CLASSES) if c != y[b]][draw]
            target_map = explain(model, x[b:b + 1], y[b:b + 1])[0]
            other_map = explain(model, x[b:b + 1], np.array([other]))[0]
            scores.append(ref_spearman(target_map, other_map))
    return scores


# ---------------------------------------------------------------- the checks against explicit loops


def test_mprt_equals_explicit_loop(trained):
    model, x, y = trained
    before = copy.deepcopy(model.state_dict())
    scores = PatchMPRT(seed=7, **KW)(model=model, x_batch=x, y_batch=y, explain_func=saliency_patches, batch_size=5)
    expected = ref_mprt(model, x, y, saliency_patches, seed=7)
    assert list(scores) == ["original", *expected]  # top-down: output layer first
    np.testing.assert_allclose(scores["original"], 1.0, atol=1e-12)
    for name, values in expected.items():
        np.testing.assert_allclose(scores[name], values, rtol=0, atol=1e-9, err_msg=name)
    last = PatchMPRT(seed=7, return_last_correlation=True, skip_layers=True, **KW)(
        model=model, x_batch=x, y_batch=y, explain_func=saliency_patches)
    np.testing.assert_allclose(last, list(expected.values())[-1], rtol=0, atol=1e-9)
    average = PatchMPRT(seed=7, return_average_correlation=True, **KW)(
        model=model, x_batch=x, y_batch=y, explain_func=saliency_patches)
    np.testing.assert_allclose(average, np.mean(list(expected.values()), axis=0), rtol=0, atol=1e-9)  # no "original"
    for name, value in model.state_dict().items():  # Quantus randomises a copy
        assert torch.equal(value, before[name]), name


def test_random_logit_equals_explicit_loop(trained):
    model, x, y = trained
    metric = PatchRandomLogit(seed=5, **KW)
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=saliency_patches, batch_size=5)
    np.testing.assert_allclose(scores, ref_random_logit(model, x, y, saliency_patches, 5, batch_size=5), rtol=0, atol=1e-9)
    assert metric.num_classes == N_CLASSES and metric.n_undefined == 0


@pytest.mark.parametrize("form", ["patches", "grid", "pixels"])
def test_patch_and_pixel_maps_give_the_same_scores(trained, form):
    """Spearman on a map repeated over its patches' pixels equals Spearman on the patch vector."""
    model, x, y = trained

    def explain(model, inputs, targets, **kwargs):
        a = saliency_patches(model, inputs, targets)
        grid = a.reshape(len(a), GRID, GRID)
        return {"patches": a, "grid": grid,
                "pixels": grid.repeat(P_SIZE, axis=1).repeat(P_SIZE, axis=2)[:, None]}[form]

    call = dict(model=model, x_batch=x, y_batch=y, explain_func=explain)
    np.testing.assert_allclose(PatchRandomLogit(**KW)(**call), ref_random_logit(model, x, y, saliency_patches, 42, 64),
                               rtol=0, atol=1e-9)
    last = PatchMPRT(return_last_correlation=True, skip_layers=True, **KW)(**call)
    np.testing.assert_allclose(last, list(ref_mprt(model, x, y, saliency_patches, 42).values())[-1], rtol=0, atol=1e-9)


# ---------------------------------------------------------------- does a map depend on the model's weights?


def test_input_only_map_is_flagged(trained):
    model, x, y = trained
    result = weight_dependence(model, x, y, edge_patches, P_SIZE)
    np.testing.assert_allclose(result.mprt, 1.0, atol=1e-12)  # the same map whatever the weights
    np.testing.assert_allclose(result.random_logit, 1.0, atol=1e-12)  # ... and whatever the class
    assert not result.mprt_passed and not result.random_logit_passed and not result.passed


def test_saliency_on_the_trained_model_passes(trained):
    model, x, y = trained
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    result = weight_dependence(model, x, y, saliency_patches, P_SIZE, threshold=0.5)
    assert np.array_equal(np.random.get_state()[1], np_state)  # RandomLogit reseeds numpy: restored
    assert torch.equal(torch.random.get_rng_state(), torch_state)  # MPRT reseeds torch: restored
    np.testing.assert_allclose(result.mprt, list(ref_mprt(model, x, y, saliency_patches, 42).values())[-1], atol=1e-9)
    assert result.mprt.mean() < 0.5 and result.random_logit.mean() < 0.5
    assert result.mprt_passed and result.random_logit_passed and result.passed
    # the verdict is the mean ρ against the threshold
    mean = float(result.mprt.mean())
    assert WeightDependence(result.mprt, result.random_logit, threshold=mean + 1e-6).mprt_passed
    assert not WeightDependence(result.mprt, result.random_logit, threshold=mean - 1e-6).mprt_passed


# ---------------------------------------------------------------- Quantus integration and errors


def test_the_default_similarity_is_spearman_per_row_and_undefined_for_a_constant_map():
    from quantus_saco.randomisation import spearman_rows

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 40)), rng.normal(size=(5, 40))
    b[1, :20] = b[1, 0]  # ties: average ranks
    a[3] = 2.0  # a constant map: ρ undefined
    rho = spearman_rows(a, b)
    for i in (0, 1, 2, 4):  # written out: Pearson of the average ranks, row by row
        ra, rb = scipy.stats.rankdata(a[i]), scipy.stats.rankdata(b[i])
        ra, rb = ra - ra.mean(), rb - rb.mean()
        assert rho[i] == pytest.approx((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)), abs=1e-12)
    assert np.isnan(rho[3]) and spearman_rows(a[0], b[0], batched=False) == pytest.approx(rho[0], abs=1e-12)


def test_registered_with_quantus_metadata():
    randomisation = quantus.AVAILABLE_METRICS["Randomisation"]
    assert randomisation["Patch Model Parameter Randomisation Test"] is PatchMPRT
    assert randomisation["Patch Random Logit"] is PatchRandomLogit
    assert issubclass(PatchMPRT, quantus.MPRT) and issubclass(PatchRandomLogit, quantus.RandomLogit)
    for cls in (PatchMPRT, PatchRandomLogit):
        assert cls.evaluation_category == EvaluationCategory.RANDOMISATION
        assert cls.score_direction == ScoreDirection.LOWER


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=P_SIZE, embed_dim=16, depth=1, num_heads=2, num_classes=3).eval()


@pytest.mark.parametrize(
    "make, call, match",
    [
        (lambda: PatchMPRT(layer_order="random", **KW), None, "layer_order='random'; expected one of"),
        (lambda: PatchMPRT(seed=-1, **KW), None, "seed=-1"),
        (lambda: PatchRandomLogit(num_classes=3, **KW), None, "num_classes is not a parameter"),
        (lambda: PatchMPRT(**KW), {"y_batch": None}, "y_batch=None"),
        (lambda: PatchRandomLogit(**KW), {"explain_func": None}, "explain_func=None"),
        (lambda: PatchRandomLogit(**KW), {"y_batch": np.array([0, 3])}, r"classes \[3\] but the model has 3 outputs"),
        (lambda: PatchMPRT(patch_size=5, disable_warnings=True), {}, "not divisible by patch_size=5"),
        (lambda: PatchMPRT(patch_size=16, disable_warnings=True), {}, "patch_size=16 but the model's patch embedding"),
        (lambda: PatchMPRT(**KW), {"explain_func": lambda model, inputs, targets, **kw: np.ones((2, 5))},
         r"attribution shape \(2, 5\)"),
        (lambda: weight_dependence(None, None, None, None, P_SIZE, threshold=1.5), None, "threshold=1.5"),
    ],
)
def test_clear_errors(vit, make, call, match):
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        metric = make()
        if call is not None:
            metric(**{"model": vit, "x_batch": x, "y_batch": np.array([0, 2]), "explain_func": saliency_patches, **call})


def test_vit_maps_are_checked_on_a_copy(vit):
    """A timm ViT: its layers are re-initialised on a copy; cls_token and pos_embed have no reset_parameters."""
    x = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2])
    before = {name: value.clone() for name, value in vit.state_dict().items()}
    scores = PatchMPRT(seed=3, **KW)(model=vit, x_batch=x, y_batch=y, explain_func=saliency_patches)
    expected = ref_mprt(vit, x, y, saliency_patches, seed=3)
    assert list(scores)[1:] == list(expected) and list(expected)[0] == "head"
    for name, values in expected.items():
        np.testing.assert_allclose(scores[name], values, rtol=0, atol=1e-9, err_msg=name)
    assert all(torch.equal(value, before[name]) for name, value in vit.state_dict().items())
