"""The controls of Feature-Gradient TransMM: no-SAE scores, permuted gates, the shuffled-decoder refusal."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_fgattr import FeatureGradientTransMM, SparseAutoencoder
from captum_fgattr.gates import DECODER_PAIRED_VARIANTS, VARIANTS
from captum_fgattr.sae import SAEConfig
from tests.reference import (
    assert_close_relative, attention_and_grads, cam_matrix, gates_from_scores, timm_forward, transmm_from_cams,
)
from tests.test_fg_transmm import make_sae, reference_fg


def test_grad_input_scores_against_explicit_dot_products(vit):
    """⟨g, x⟩ cancels: compared with a tolerance relative to ‖g‖·‖x‖, not to |⟨g, x⟩|."""
    sae = make_sae(32)
    images, targets = torch.randn(2, 3, 32, 32), [1, 4]
    fg = FeatureGradientTransMM(vit, {0: sae}, variant="grad_input")
    fg.attribute(images, target=targets)
    scores = fg.last_gated_layers[0].scores
    for b in range(2):
        _, _, resids, grads = attention_and_grads(timm_forward, vit, images[b:b + 1], targets[b], layers=[0])
        for t in range(16):
            x, g = resids[0][1 + t], grads[0][1 + t]
            explicit = sum(g[i] * x[i] for i in range(32))
            assert abs(float(scores[b, t]) - explicit) <= 1e-5 * np.linalg.norm(g) * np.linalg.norm(x)


def test_grad_input_map_at_a_layer_without_cancellation(vit):
    """At block 0 of the 3-block model ⟨g, x⟩ is far from 0 (no scale-invariant path only), so the map is
    well conditioned and must match the explicit computation."""
    saes = {0: make_sae(32)}
    images, targets = torch.randn(2, 3, 32, 32), [0, 2]
    grid = FeatureGradientTransMM(vit, saes, kappa=0.5, c_max=10.0, variant="grad_input").attribute(
        images, target=targets, return_patches=True)
    expected, _ = reference_fg(timm_forward, vit, images, targets, 1, saes, {0: 0.5}, {0: 10.0}, "grad_input")
    assert_close_relative(grid.reshape(2, -1), expected, tol=1e-4)


def perfect_sae(d: int, normalize: str, seed: int = 0) -> SparseAutoencoder:
    """ReLU SAE with W_enc = [I, −I], W_dec = [I; −I]: f @ W_dec + b_dec = norm(x) exactly (2d features)."""
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=2 * d, activation="relu", k=None, normalize=normalize))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_dec.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed))
    return sae


@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale"])
def test_grad_input_centered_equals_combined_of_a_perfect_sae(vit, normalize):
    sae = perfect_sae(32, normalize)
    x = torch.randn(5, 32)
    torch.testing.assert_close(sae(x), x, atol=1e-5, rtol=1e-5)  # it does reconstruct perfectly
    images, targets = torch.randn(3, 3, 32, 32), [0, 1, 2]
    records = {}
    for variant in ("combined", "grad_input_centered"):
        fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, variant=variant)
        fg.attribute(images, target=targets)
        records[variant] = fg.last_gated_layers[1]
    scale = records["combined"].scores.abs().max()
    torch.testing.assert_close(records["grad_input_centered"].scores / scale, records["combined"].scores / scale,
                               atol=1e-5, rtol=0)


def test_bias_projection_is_one_direction_for_every_token(vit):
    sae = make_sae(32)
    images = torch.randn(2, 3, 32, 32)
    fg = FeatureGradientTransMM(vit, {1: sae}, variant="bias_projection")
    fg.attribute(images, target=3)
    _, _, _, grads = attention_and_grads(timm_forward, vit, images[:1], 3, layers=[1])
    b_dec = sae.b_dec.detach().double().numpy()
    explicit = [-float(grads[1][1 + t] @ b_dec) for t in range(16)]
    assert_close_relative(fg.last_gated_layers[1].scores[0], explicit)


def test_permuted_gates_are_a_per_image_permutation_of_the_real_gates(vit):
    saes = {0: make_sae(32, seed=0), 1: make_sae(32, seed=1)}
    images, targets = torch.randn(3, 3, 32, 32), [0, 1, 2]
    real = FeatureGradientTransMM(vit, saes, kappa=1.0)
    permuted = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=5)
    real_map = real.attribute(images, target=targets, return_patches=True)
    permuted_map = permuted.attribute(images, target=targets, return_patches=True, sample_ids=[10, 11, 12])
    assert not torch.allclose(real_map, permuted_map)
    for layer in saes:
        g_real, g_perm = real.last_gated_layers[layer].gates, permuted.last_gated_layers[layer].gates
        torch.testing.assert_close(g_perm.sort(dim=1).values, g_real.sort(dim=1).values, rtol=0, atol=0)
        torch.testing.assert_close(permuted.last_gated_layers[layer].scores, real.last_gated_layers[layer].scores)
    # the same permutation at both layers: recover it from the real gates of layer 0 (no ties) and apply it
    for b in range(3):
        g0_real, g0_perm = real.last_gated_layers[0].gates[b], permuted.last_gated_layers[0].gates[b]
        assert len(set(g0_real.tolist())) == 16
        perm = [int((g0_real == v).nonzero()) for v in g0_perm]
        assert sorted(perm) == list(range(16)) and perm != list(range(16))
        torch.testing.assert_close(permuted.last_gated_layers[1].gates[b], real.last_gated_layers[1].gates[b][perm])
    # the map is TransMM with those applied gates, written out per image
    for b in range(3):
        attns, grads, _, _ = attention_and_grads(timm_forward, vit, images[b:b + 1], targets[b])
        cams = [cam_matrix(a, g) for a, g in zip(attns, grads)]
        for layer in saes:
            gates = permuted.last_gated_layers[layer].gates[b].double().numpy()
            cams[layer] = cams[layer] * np.concatenate([[1.0], gates])[None, :]
        assert_close_relative(permuted_map[b].reshape(-1), transmm_from_cams(cams, 1))


def test_permuted_gates_do_not_depend_on_the_batching(vit):
    saes = {1: make_sae(32)}
    images = torch.randn(4, 3, 32, 32)
    fg = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=0)
    whole = fg.attribute(images, target=1, return_patches=True, sample_ids=[7, 8, 9, 10])
    halves = torch.cat([fg.attribute(images[:2], target=1, return_patches=True, sample_ids=[7, 8]),
                        fg.attribute(images[2:], target=1, return_patches=True, sample_ids=[9, 10])])
    torch.testing.assert_close(whole, halves)
    other_seed = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=1)
    assert not torch.allclose(whole, other_seed.attribute(images, target=1, return_patches=True, sample_ids=[7, 8, 9, 10]))
    with pytest.raises(ValueError, match="sample_ids"):
        fg.attribute(images, target=1, sample_ids=[1, 2])


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in DECODER_PAIRED_VARIANTS])
def test_shuffled_decoder_is_refused_where_it_cannot_differ(vit, variant):
    assert variant in ("activation", "gradient", "gradient_signed", "token_norm", "grad_input", "grad_input_centered",
                       "bias_projection")
    with pytest.raises(ValueError, match="shuffled-decoder control is refused"):
        FeatureGradientTransMM(vit, {1: make_sae(32)}, variant=variant, shuffle_decoder_seed=0)


def test_token_norm_gates_from_explicit_norms(vit):
    sae = make_sae(32)
    image = torch.randn(1, 3, 32, 32)
    fg = FeatureGradientTransMM(vit, {1: sae}, kappa=0.7, c_max=5.0, variant="token_norm")
    fg.attribute(image, target=2)
    _, _, resids, _ = attention_and_grads(timm_forward, vit, image, 2, layers=[1])
    norms = [float(np.sqrt(sum(v * v for v in resids[1][1 + t]))) for t in range(16)]
    assert_close_relative(fg.last_gated_layers[1].gates[0], gates_from_scores(norms, 0.7, 5.0), tol=1e-4)


def test_top_features_refused_without_sae_codes(vit):
    with pytest.raises(ValueError, match="top_features"):
        FeatureGradientTransMM(vit, {1: make_sae(32)}, variant="grad_input", top_features=3)


def test_noise_tunnel_runs_feature_gradient_transmm_and_its_controls(vit):
    from captum.attr import NoiseTunnel

    images = torch.randn(2, 3, 32, 32)
    for kwargs in ({}, {"variant": "grad_input"}, {"permute_gates_seed": 0}):
        fg = FeatureGradientTransMM(vit, {1: make_sae(32)}, **kwargs)
        smooth = NoiseTunnel(fg).attribute(images, nt_type="smoothgrad", nt_samples=2, stdevs=0.1, target=1)
        assert smooth.shape == (2, 1, 32, 32) and torch.isfinite(smooth).all()
    torch.manual_seed(0)
    noisy = NoiseTunnel(fg).attribute(images, nt_type="smoothgrad", nt_samples=1, stdevs=0.0, target=1)
    torch.testing.assert_close(noisy, fg.attribute(images, target=1))  # zero noise: the plain map
