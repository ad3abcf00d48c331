"""Benchmark method registry: every method gives (B, P) patch maps; baselines match their formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from captum_fgattr.adapters.tokens import pixels_to_patches
from captum_fgattr.baselines import TokenGradCAM
from captum_fgattr.bench.methods import METHODS, MethodSpec, build_method, register_method, unavailable_methods
from tests.reference import assert_close_relative, timm_forward
from tests.test_fg_transmm import make_sae

IDS = torch.arange(3)
MISSING = unavailable_methods(METHODS)  # optional methods whose extra is not installed (attnlrp: lrp)


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.skipif(name in MISSING, reason=MISSING.get(name, "")))
                                  for name in sorted(METHODS)])
def test_every_method_gives_finite_patch_maps(vit, name):
    params = {"layers": [1]} if name == "fg" else {}
    method = build_method(MethodSpec(name, params), vit, saes={1: make_sae(32)})
    maps = method(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]), IDS)
    assert maps.shape == (3, 16) and torch.isfinite(maps).all()
    delta = getattr(method, "convergence_delta", None)
    assert (delta is None) == (name != "integrated_gradients") and (delta is None or delta.shape == (3,))


def norm1_output_and_grad(vit, image, target):
    """Explicit forward with a hook on the last block's norm1: its (N, D) output and ∂y_target/∂output."""
    saved = []
    handle = vit.blocks[-1].norm1.register_forward_hook(lambda m, i, o: saved.append(o))
    try:
        logits = vit(image)
        (grad,) = torch.autograd.grad(logits[0, target], saved[0])
    finally:
        handle.remove()
    return saved[0][0].detach().double().numpy(), grad[0].double().numpy()


def test_gradcam_matches_formula_on_the_last_norm1_output(vit):
    images, targets = torch.randn(2, 3, 32, 32), [3, 1]
    maps = build_method(MethodSpec("gradcam"), vit)(images, torch.tensor(targets), IDS[:2])
    for i, t in enumerate(targets):
        acts, grads = norm1_output_and_grad(vit, images[i:i + 1], t)
        a, g = acts[1:], grads[1:]  # patch tokens
        weights = g.mean(axis=0)
        expected = [max(float(sum(weights[d] * a[p, d] for d in range(a.shape[1]))), 0.0) for p in range(16)]
        assert_close_relative(maps[i], expected)


def test_gradcam_agrees_with_the_pytorch_grad_cam_package(vit):
    """pytorch-grad-cam's ViT recipe (target layer blocks[-1].norm1, tokens reshaped to the grid) equals
    TokenGradCAM up to the package's min-max normalisation and bilinear resize."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def to_grid(tokens):  # (B, 1 + 16, D) -> (B, D, 4, 4)
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)

    images, targets = torch.randn(3, 3, 32, 32), [0, 2, 4]
    with GradCAM(model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=to_grid) as cam:
        package = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    ours = TokenGradCAM(vit).attribute(images, target=targets, return_patches=True).double().numpy()
    for i in range(3):
        grid = ours[i] - ours[i].min()
        grid = grid / (1e-7 + grid.max())
        resized = cv2.resize(np.float32(grid), (32, 32))
        resized = resized - resized.min()
        resized = resized / (1e-7 + resized.max())
        assert np.abs(resized - package[i]).max() < 1e-4
        assert package[i].max() > 0.99  # not a degenerate all-zero map


def test_integrated_gradients_from_an_explicit_baseline_with_its_convergence_delta(vit):
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    black = [-0.5, -1.0, -2.0]  # (0 − mean) / std per channel
    method = build_method(MethodSpec("integrated_gradients", {"baseline": black, "n_steps": 50}), vit)
    maps = method(images, targets, IDS[:2])
    delta = method.convergence_delta
    reference = torch.tensor(black).reshape(1, 3, 1, 1).expand_as(images)
    pixel = IntegratedGradients(vit).attribute(images, baselines=reference, target=targets, n_steps=50).detach()
    for i in range(2):
        expected = [pixel[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].sum() for r in range(4) for c in range(4)]
        assert_close_relative(maps[i], expected)
        with torch.no_grad():  # completeness gap: Σ attributions − (y(x) − y(baseline)), written out
            gap = pixel[i].sum() - (vit(images[i:i + 1])[0, targets[i]] - vit(reference[i:i + 1])[0, targets[i]])
        assert float(delta[i]) == pytest.approx(float(gap), rel=1e-4, abs=1e-5)


def test_rollout_and_raw_attention_match_formula(vit):
    images = torch.randn(2, 3, 32, 32)
    rollout = build_method(MethodSpec("rollout"), vit)(images, torch.tensor([0, 0]), IDS[:2])
    raw = build_method(MethodSpec("raw_attention"), vit)(images, torch.tensor([0, 0]), IDS[:2])
    for i in range(2):
        with torch.no_grad():
            _, attns, _ = timm_forward(vit, images[i:i + 1])
        R = np.eye(17)
        for A in attns:
            mean = A[0].double().numpy().mean(axis=0)
            step = 0.5 * mean + 0.5 * np.eye(17)
            R = (step / step.sum(axis=1, keepdims=True)) @ R
        assert_close_relative(rollout[i], R[0, 1:])
        assert_close_relative(raw[i], attns[-1][0].double().numpy().mean(axis=0)[0, 1:])


def test_pixel_methods_sum_over_channels_and_patch_pixels(vit):
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([2, 4])
    maps = build_method(MethodSpec("saliency"), vit)(images, targets, IDS[:2])
    pixel = Saliency(vit).attribute(images, target=targets).numpy()
    for i in range(2):
        expected = [pixel[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].sum() for r in range(4) for c in range(4)]
        assert_close_relative(maps[i], expected)
    ramp = torch.arange(2 * 3 * 32 * 32, dtype=torch.float64).reshape(2, 3, 32, 32)
    assert pixels_to_patches(ramp, (8, 8))[1, 5] == ramp[1, :, 8:16, 8:16].sum()


def test_random_is_reproducible_per_sample_whatever_the_batch(vit):
    method = build_method(MethodSpec("random", {"seed": 3}), vit)
    images = torch.randn(3, 3, 32, 32)
    together = method(images, torch.zeros(3, dtype=torch.long), torch.tensor([10, 11, 12]))
    alone = method(images[1:2], torch.zeros(1, dtype=torch.long), torch.tensor([11]))
    assert torch.equal(together[1:2], alone) and not torch.equal(together[0], together[1])


def test_spec_identity_and_errors(vit):
    a = MethodSpec("fg", {"variant": "combined", "layers": [2, 3]})
    b = MethodSpec("fg", {"layers": [2, 3], "variant": "combined"})
    assert a.key == b.key and hash(a) == hash(b) and a.label == "FG L[2,3] combined κ=0.5 c=10"
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        MethodSpec("lime")
    with pytest.raises(ValueError, match="already registered"):
        register_method("transmm")(lambda *a: None)
    with pytest.raises(ValueError, match=r"no SAE for gated layers \[2\]"):
        build_method(MethodSpec("fg", {"layers": [1, 2]}), vit, saes={1: make_sae(32)})


@pytest.mark.parametrize("cls", ["TokenGradCAM", "AttentionRollout", "RawAttention", "PatchIntegratedGradients",
                                 "PatchSaliency", "RandomPatches"])
def test_baseline_classes_follow_the_captum_contract(vit, cls):
    from captum.attr import NoiseTunnel

    import captum_fgattr

    assert cls in captum_fgattr.__all__
    method = getattr(captum_fgattr, cls)(vit)
    images = torch.randn(2, 3, 32, 32)
    pixels = method.attribute(images, target=1)
    patches = method.attribute(images, target=1, return_patches=True)
    assert pixels.shape == (2, 1, 32, 32) and patches.shape == (2, 4, 4)
    assert torch.equal(pixels[:, 0, ::8, ::8], patches)  # each patch's value repeated over its pixels
    (as_tuple,) = method.attribute((images,), target=1)
    assert torch.equal(as_tuple, pixels)
    smooth = NoiseTunnel(method).attribute(images, nt_type="smoothgrad", nt_samples=2, target=1, stdevs=0.1)
    assert smooth.shape == (2, 1, 32, 32) and torch.isfinite(smooth).all()


def test_fg_params_are_typed_and_keep_the_stored_keys():
    from captum_fgattr.bench.experiments import fg_spec
    from captum_fgattr.bench.methods import FGParams

    spec = fg_spec([3, 1], "combined", 0.5, 10, shuffle_seed=2)
    # the stored identity of runs written before the typed parameters, pinned
    assert spec.key == ('{"name": "fg", "params": {"c_max": 10.0, "kappa": 0.5, "layers": [1, 3], "shuffle_seed": 2, '
                        '"variant": "combined"}}')
    assert spec.fg == FGParams((1, 3), "combined", 0.5, 10.0, shuffle_seed=2)
    assert spec.fg.configuration == ((1, 3), 0.5, 10.0)
    assert FGParams.from_params(spec.fg.to_params()) == spec.fg
    with pytest.raises(ValueError, match="not an FG-TransMM spec"):
        MethodSpec("random").fg
