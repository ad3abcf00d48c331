"""FG-TransMM with SAEs that normalise their input (docs/method.md §2.1, "SAEs with input normalisation").

The decoder rows d_k, b_dec and norm(x_t) live in the SAE's normalised space, the gradient g_t = ∂y/∂x_t in the
residual stream's; the scores that pair them first take the gradient into the SAE's space, g̃_t = scale_t·g_t
(the token's statistics held fixed, as ``decode(f, stats=)`` does). The expected values are written out per
token in float64 from the formulas (own forward, own normalisation, own encoder), not with the library's helpers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_fgattr import FeatureGradientTransMM, SparseAutoencoder
from captum_fgattr.adapters import capture
from captum_fgattr.gates import SAE_VARIANTS, VARIANTS, decode_codes, sae_space_gradient
from captum_fgattr.sae import SAEConfig
from tests.reference import sae_encode_normalised as encode
from tests.reference import token_normalisation
from tests.test_fg_controls import perfect_sae

D, K, TOKENS = 32, 64, 16
NORMALISED = ("layer_norm", "constant_norm_rescale", "layer_norm_saelens")
IMAGES_SEED = 11
TARGETS = [1, 3]


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(IMAGES_SEED))


def make_sae(normalize: str, seed: int, activation: str = "topk") -> SparseAutoencoder:
    """Random SAE; b_dec of norm ~1.7 so that the bias terms weigh in the scores."""
    config = SAEConfig(d_in=D, n_features=K, activation=activation, k=8 if activation == "topk" else None,
                       normalize=normalize)
    sae = SparseAutoencoder(config, seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
        sae.b_dec.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed + 1))
    return sae


def resid_and_grad(vit, image: torch.Tensor, target: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Own forward through the timm blocks: patch tokens x_t of block ``layer``'s output and g_t = ∂y/∂x_t,
    (T, D) float64 each."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(image[None])))
    resid = None
    for i, block in enumerate(vit.blocks):
        x = block(x)
        if i == layer:
            resid = x
    logit = vit.forward_head(vit.norm(x))[0, target]
    (grad,) = torch.autograd.grad(logit, resid)
    return resid[0, 1:].detach().double().numpy(), grad[0, 1:].double().numpy()


def expected_score(variant: str, sae: SparseAutoencoder, x: np.ndarray,
                   g: np.ndarray) -> tuple[float, float]:
    """(s_t, its magnitude ‖·‖·‖·‖ for the tolerance) of one token, from the formulas of docs/method.md §2.1."""
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    _, scale, u = token_normalisation(sae.config.normalize, x)
    g_sae = scale * g  # g̃_t: the gradient in the SAE's normalised space
    f = encode(sae, u)
    rows = np.linalg.norm(g_sae) * np.linalg.norm(W_dec, axis=1).sum()
    if variant == "combined":
        direction = sum(f[k] * W_dec[k] for k in np.flatnonzero(f))
        value = sum(f[k] * float(g_sae @ W_dec[k]) for k in np.flatnonzero(f))
        return value, np.linalg.norm(g_sae) * np.linalg.norm(direction)
    if variant == "gradient":
        return sum(abs(float(g_sae @ W_dec[k])) for k in range(K)), rows
    if variant == "gradient_signed":
        return sum(float(g_sae @ W_dec[k]) for k in range(K)), rows
    if variant == "grad_input_centered":
        return float(g_sae @ (u - b_dec)), np.linalg.norm(g_sae) * np.linalg.norm(u - b_dec)
    if variant == "bias_projection":
        return -float(g_sae @ b_dec), np.linalg.norm(g_sae) * np.linalg.norm(b_dec)
    if variant == "activation":
        return float(f.sum()), float(f.sum())
    if variant == "grad_input":  # residual space: no SAE quantity
        return float(g @ x), np.linalg.norm(g) * np.linalg.norm(x)
    assert variant == "token_norm"
    return float(np.linalg.norm(x)), float(np.linalg.norm(x))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("normalize", ("none",) + NORMALISED)
def test_scores_match_explicit_per_token_computation(vit, normalize, variant):
    saes = {0: make_sae(normalize, seed=1), 1: make_sae(normalize, seed=2, activation="relu")}
    fg = FeatureGradientTransMM(vit, saes, kappa=1.0, variant=variant)
    fg.attribute(images(), target=TARGETS)
    for layer, sae in saes.items():
        scores = fg.last_gated_layers[layer].scores
        assert scores.shape == (2, TOKENS)
        for b, image in enumerate(images()):
            xs, gs = resid_and_grad(vit, image, TARGETS[b], layer)
            for t in range(TOKENS):
                expected, magnitude = expected_score(variant, sae, xs[t], gs[t])
                assert abs(float(scores[b, t]) - expected) <= 1e-5 * magnitude + 1e-12, (layer, b, t)


@pytest.mark.parametrize("normalize", NORMALISED)
def test_the_scale_changes_the_gates_of_a_normalising_sae(vit, normalize):
    """The SAE-space gradient is not a constant factor: the per-token scales differ, so g_t instead of g̃_t would
    give other scores and other gates."""
    sae = make_sae(normalize, seed=4)
    fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0)
    fg.attribute(images(), target=TARGETS)
    xs, gs = resid_and_grad(vit, images()[0], TARGETS[0], 1)
    scales = np.array([token_normalisation(normalize, x)[1] for x in xs])
    assert scales.max() / scales.min() > 1.05
    raw = [sum(f_k * float(g @ d) for f_k, d in zip(encode(sae, token_normalisation(normalize, x)[2]),
                                                    sae.W_dec.detach().double().numpy()) if f_k)
           for x, g in zip(xs, gs)]
    actual = fg.last_gated_layers[1].scores[0].double().numpy()
    np.testing.assert_allclose(actual, scales * np.array(raw), rtol=1e-4, atol=1e-6 * np.abs(actual).max())
    assert not np.allclose(actual, raw, rtol=1e-2)


@pytest.mark.parametrize("normalize", NORMALISED)
def test_sae_space_gradient_is_the_chain_rule_through_denorm(vit, normalize):
    """g̃_t = ∂y/∂û_t: rebuild block 1's patch tokens as x_t = û_t·scale_t + shift_t with the token's statistics
    held fixed (what ``decode(f, stats=)`` does) and differentiate the logit w.r.t. û; ``combined`` pairs that
    gradient with the decoder rows."""
    sae = make_sae(normalize, seed=3)
    fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, variant="combined")
    fg.attribute(images(), target=TARGETS)
    W_dec = sae.W_dec.detach().double().numpy()
    for b, image in enumerate(images()):
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(image[None])))
        x = vit.blocks[1](vit.blocks[0](x))
        patches = x[0, 1:].detach().double()
        stats = [token_normalisation(normalize, row.numpy()) for row in patches]
        shift = torch.tensor([[s[0]] for s in stats], dtype=torch.float64)
        scale = torch.tensor([[s[1]] for s in stats], dtype=torch.float64)
        u_hat = ((patches - shift) / scale).requires_grad_(True)  # the normalised-space reconstruction at x
        rebuilt = (u_hat * scale + shift).float()
        torch.testing.assert_close(rebuilt, x[0, 1:].detach(), rtol=1e-6, atol=1e-6)
        y = vit.forward_head(vit.norm(vit.blocks[2](torch.cat([x[:, :1].detach(), rebuilt[None]], dim=1))))
        (grad_u,) = torch.autograd.grad(y[0, TARGETS[b]], u_hat)
        for t in range(TOKENS):
            f = encode(sae, stats[t][2])
            expected = sum(f[k] * float(grad_u[t].numpy() @ W_dec[k]) for k in np.flatnonzero(f))
            magnitude = np.linalg.norm(grad_u[t].numpy()) * np.linalg.norm(f @ W_dec)
            assert abs(float(fg.last_gated_layers[1].scores[b, t]) - expected) <= 1e-5 * magnitude, (b, t)


@pytest.mark.parametrize("normalize", ("none",) + NORMALISED)
def test_perfect_sae_combined_equals_grad_input_centered(vit, normalize):
    """For an SAE that reproduces norm(x) in its normalised space, Σ_k f_tk d_k = norm(x_t) − b_dec, so
    ``combined`` = ``grad_input_centered`` = ⟨g̃_t, norm(x_t) − b_dec⟩, with or without normalisation."""
    sae = perfect_sae(D, normalize)
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    records = {}
    for variant in ("combined", "grad_input_centered", "bias_projection"):
        fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, variant=variant)
        fg.attribute(images(), target=TARGETS)
        records[variant] = fg.last_gated_layers[1].scores.double()
    combined, centered = records["combined"], records["grad_input_centered"]
    torch.testing.assert_close(combined, centered, rtol=0, atol=1e-6 * float(combined.abs().max()))
    for b, image in enumerate(images()):
        xs, gs = resid_and_grad(vit, image, TARGETS[b], 1)
        for t in range(TOKENS):
            _, scale, u = token_normalisation(normalize, xs[t])
            f = encode(sae, u)
            np.testing.assert_allclose(f @ W_dec + b_dec, u, atol=1e-12)  # the SAE is perfect on this token
            g_sae = scale * gs[t]
            tol = 1e-5 * np.linalg.norm(g_sae) * (np.linalg.norm(u) + np.linalg.norm(b_dec))
            assert abs(float(combined[b, t]) - float(g_sae @ (u - b_dec))) <= tol
            assert abs(float(records["bias_projection"][b, t]) + float(g_sae @ b_dec)) <= tol
            # centered = bias_projection + ⟨g̃_t, norm(x_t)⟩
            assert abs(float(centered[b, t] - records["bias_projection"][b, t]) - float(g_sae @ u)) <= tol


@pytest.mark.parametrize("normalize", NORMALISED)
def test_scores_in_the_residual_space_through_decode(vit, normalize):
    """The same scores read in the residual space with the SAE's own decode (the token's statistics):
    ``combined`` = ⟨g_t, decode(f_t) − decode(0)⟩ (the features' part of x̂_t), ``bias_projection`` =
    −⟨g_t, decode(0) − shift_t⟩ (b_dec denormalised, without the token's shift)."""
    sae = make_sae(normalize, seed=6)
    scores = {}
    for variant in ("combined", "bias_projection"):
        fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, variant=variant)
        fg.attribute(images(), target=TARGETS)
        scores[variant] = fg.last_gated_layers[1].scores
    for b, image in enumerate(images()):
        xs, gs = resid_and_grad(vit, image, TARGETS[b], 1)
        x = torch.from_numpy(xs).float()
        with torch.no_grad():
            f = sae.encode(x)
            _, stats = sae.normalize(x)
            decoded_zero = sae.decode(torch.zeros_like(f), stats=stats)
            features_part = (sae.decode(f, stats=stats) - decoded_zero).double().numpy()
            bias_part = (decoded_zero - sae.denormalize(torch.zeros_like(x), stats)).double().numpy()
        for t in range(TOKENS):
            tol = 1e-5 * np.linalg.norm(gs[t]) * (np.linalg.norm(features_part[t]) + np.linalg.norm(bias_part[t]))
            assert abs(float(scores["combined"][b, t]) - float(gs[t] @ features_part[t])) <= tol
            assert abs(float(scores["bias_projection"][b, t]) + float(gs[t] @ bias_part[t])) <= tol


@pytest.mark.parametrize("normalize", NORMALISED)
def test_top_contributions_are_in_the_units_of_the_combined_score(vit, normalize):
    """With every active feature recorded, the contributions f_tk⟨g̃_t, d_k⟩ sum to the ``combined`` score."""
    sae = make_sae(normalize, seed=7)
    fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, top_features=8)  # k = 8: all active features
    fg.attribute(images(), target=TARGETS)
    record = fg.last_gated_layers[1]
    torch.testing.assert_close(record.top_contributions.sum(dim=-1), record.scores, rtol=1e-5,
                               atol=1e-6 * float(record.scores.abs().max()))


def test_sae_space_gradient_without_normalisation_is_the_gradient_itself():
    grad = torch.randn(2, TOKENS, D)
    assert sae_space_gradient(grad, 1.0) is grad
    scale = torch.rand(2, TOKENS, 1) + 0.5
    assert torch.equal(sae_space_gradient(grad, scale), grad * scale)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sae_without_normalisation_scores_are_unchanged_bit_for_bit(vit, variant):
    """``normalize="none"``: the scores (and top contributions) are the formulas with the raw gradient g_t, computed
    exactly as before the SAE-space gradient existed, from the same captured tokens and gradients."""
    sae = make_sae("none", seed=5)
    top = 3 if variant in SAE_VARIANTS else 0
    fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, variant=variant, top_features=top)
    batch, targets = images(), torch.tensor(TARGETS)
    fg.attribute(batch, target=TARGETS)
    # the forward and backward that attribute ran, captured the same way
    with torch.enable_grad(), capture(fg.adapter, resid_layers=[1]) as captured:
        logits = vit(batch.clone().requires_grad_(True))
        captured.backward(logits.gather(1, targets[:, None]).sum())
        x, g = captured.resid[1][:, 1:].detach(), captured.resid_grad[1][:, 1:]
    with torch.no_grad():
        W, b = sae.W_dec.detach(), sae.b_dec.detach()
        values, indices = sae.encode_sparse(x)
        old = {
            "combined": lambda: (decode_codes(values, indices, W) * g).sum(dim=-1),
            "activation": lambda: values.sum(dim=-1),
            "gradient": lambda: (g @ W.T).abs().sum(dim=-1),
            "gradient_signed": lambda: g @ W.sum(dim=0),
            "grad_input": lambda: (g * x).sum(dim=-1),
            "grad_input_centered": lambda: (g * (x - b)).sum(dim=-1),
            "bias_projection": lambda: -(g @ b),
            "token_norm": lambda: x.norm(dim=-1),
        }
        record = fg.last_gated_layers[1]
        assert torch.equal(record.scores, old[variant]())
        if top:
            contributions = values * (g @ W.T).gather(-1, indices)
            order = contributions.abs().topk(top, dim=-1).indices
            assert torch.equal(record.top_features, indices.gather(-1, order))
            assert torch.equal(record.top_contributions, contributions.gather(-1, order))
