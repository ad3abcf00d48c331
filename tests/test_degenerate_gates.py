"""Scores that are constant up to rounding give neutral gates and say so (docs/method.md §2.2, "Degenerate scores").

The honest case: ``grad_input`` ⟨g_t, x_t⟩ at the input of the last block of a pre-LN ViT with a class-token head. A
patch token reaches the output only through that block's attention, i.e. through its LayerNorm, which is
scale-invariant up to its 1e-6 epsilon, so ⟨g_t, x_t⟩ = d/dα y(α·x_t) is 0 up to that epsilon and rounding for every
token: here 5e-8 – 1e-7 of ‖g_t‖·‖x_t‖, float32 and float64 alike, 70× below the rounding bound 4·eps·√D = 6.6e-6 of a
192-term float32 product. The robust normalisation would stretch it over the whole gate range.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from captum_fgattr import FeatureGradientTransMM, TransMM
from captum_fgattr.gates import (
    DEGENERATE_TOL_FACTOR, VARIANTS, degenerate_scores, exp_tanh_gates, feature_gradient_scores, residual_scores,
    robust_z, score_magnitudes,
)
from tests.conftest import make_vit
from tests.reference import lower_median
from tests.test_fg_transmm import make_sae
from tests.test_gates_normalised_sae import resid_and_grad

DEPTH, D = 6, 192
LAST_INPUT = DEPTH - 2  # block 4's output is the last block's input (the user's "block 4 of 6")
TARGETS = [0, 1, 2, 3]
TOL = DEGENERATE_TOL_FACTOR * float(np.finfo(np.float32).eps) * math.sqrt(D)  # 6.6e-6


@pytest.fixture(scope="module")
def vit():
    return make_vit(depth=DEPTH, embed_dim=D, num_heads=4)


def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def explicit_grad_input(vit, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, from an own float64 forward: (spread max_t |s_t − median s|, max_t ‖g_t‖‖x_t‖), s_t = ⟨g_t, x_t⟩."""
    vit64 = copy.deepcopy(vit).double()
    spreads, magnitudes = [], []
    for image, target in zip(images().double(), TARGETS):
        xs, gs = resid_and_grad(vit64, image, target, layer)
        s = [float(g @ x) for g, x in zip(gs, xs)]
        spreads.append(max(abs(v - lower_median(s)) for v in s))
        magnitudes.append(max(np.linalg.norm(g) * np.linalg.norm(x) for g, x in zip(gs, xs)))
    return np.array(spreads), np.array(magnitudes)


def recorded_flags(record, magnitudes: np.ndarray) -> np.ndarray:
    """The criterion written out on the recorded float32 scores: spread ≤ C·eps·√D·max_t M_t."""
    s = record.scores.double().numpy()
    spread = np.array([max(abs(v - lower_median(row)) for v in row) for row in s.tolist()])
    return spread <= TOL * magnitudes


def test_grad_input_at_the_last_blocks_input_is_rounding_noise_and_gives_transmm(vit):
    fg = FeatureGradientTransMM(vit, {LAST_INPUT: make_sae(D)}, kappa=1.0, c_max=10.0, variant="grad_input")
    fg_map = fg.attribute(images(), target=TARGETS)
    record = fg.last_gated_layers[LAST_INPUT]
    spread64, magnitude = explicit_grad_input(vit, LAST_INPUT)
    assert (spread64 < TOL * magnitude / 10).all()  # the exact scores are constant far below the rounding level
    assert (recorded_flags(record, magnitude) == record.degenerate.numpy()).all()
    assert record.degenerate.all() and torch.equal(record.gates, torch.ones(4, 16))
    assert torch.equal(fg_map, TransMM(vit).attribute(images(), target=TARGETS))
    # what the rule prevents: the robust z of that noise spans the gate range
    stretched = exp_tanh_gates(robust_z(record.scores), 1.0, 10.0)
    assert (stretched.amax(dim=1) > 5.0).all() and (stretched.amin(dim=1) < 0.2).all()


def test_the_last_block_itself_has_zero_scores_flagged_too(vit):
    """The last block's patch tokens reach no output (class-token head): g_t = 0, the scores are exactly 0."""
    fg = FeatureGradientTransMM(vit, {DEPTH - 1: make_sae(D)}, kappa=1.0, variant="grad_input")
    fg.attribute(images(), target=TARGETS)
    record = fg.last_gated_layers[DEPTH - 1]
    assert torch.equal(record.scores, torch.zeros(4, 16)) and record.degenerate.all()


def test_ordinary_scores_are_not_flagged_and_a_degenerate_layer_leaves_the_others_alone(vit):
    saes = {1: make_sae(D, seed=1), LAST_INPUT: make_sae(D)}
    both = FeatureGradientTransMM(vit, saes, kappa=1.0, c_max=10.0, variant="grad_input")
    both_map = both.attribute(images(), target=TARGETS)
    ordinary = both.last_gated_layers[1]
    spread64, magnitude = explicit_grad_input(vit, 1)
    assert (spread64 > 10 * TOL * magnitude).all()
    assert (recorded_flags(ordinary, magnitude) == ordinary.degenerate.numpy()).all()
    assert not ordinary.degenerate.any() and (ordinary.gates.amax(dim=1) > 2.0).all()
    assert both.last_gated_layers[LAST_INPUT].degenerate.all()
    only_ordinary = FeatureGradientTransMM(vit, {1: saes[1]}, kappa=1.0, c_max=10.0, variant="grad_input")
    assert torch.equal(both_map, only_ordinary.attribute(images(), target=TARGETS))
    assert not torch.allclose(both_map, TransMM(vit).attribute(images(), target=TARGETS))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "grad_input"])
def test_other_variants_at_the_last_blocks_input_are_not_flagged(vit, variant):
    """Only ⟨g, x⟩ is cancelled by the LayerNorm: the SAE scores and the other controls keep their spread there."""
    fg = FeatureGradientTransMM(vit, {LAST_INPUT: make_sae(D)}, kappa=1.0, variant=variant)
    fg.attribute(images(), target=TARGETS)
    assert not fg.last_gated_layers[LAST_INPUT].degenerate.any()


def test_degenerate_scores_formula():
    """spread = max |s − lower median| against C·eps(dtype)·√D·max M, per image; exact ties included."""
    tol16 = DEGENERATE_TOL_FACTOR * float(torch.finfo(torch.float32).eps) * 4.0  # D = 16
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0 + 0.5 * tol16],  # within rounding of M = 1
                           [1.0, 1.0, 1.0, 1.0 + 2.0 * tol16],  # beyond it
                           [3.5, 3.5, 3.5, 3.5],  # constant: MAD 0, neutral anyway
                           [1.0, 1.0, 1.0, 2.0]])  # MAD 0 but not constant: real outlier, not flagged
    magnitudes = torch.ones(4, 4)
    assert degenerate_scores(scores, magnitudes, 16).tolist() == [True, False, True, False]
    assert degenerate_scores(scores.double(), magnitudes.double(), 16).tolist() == [False, False, True, False]
    assert degenerate_scores(scores.double(), magnitudes.double(), 16, torch.float32).tolist() == [True, False, True,
                                                                                                     False]
    assert degenerate_scores(scores, 3 * magnitudes, 16).tolist() == [True, True, True, False]  # scale-aware


def test_score_magnitudes_are_the_size_of_each_scores_terms():
    """M_t written out per token in float64 (‖a‖·‖v‖ of each inner product, Σ_k ‖g̃‖‖d_k‖, or the non-negative score
    itself), and M_t ≥ |s_t|."""
    g = torch.Generator().manual_seed(0)
    B, T, K, m = 2, 5, 12, 3
    x, grad, scale = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g), torch.rand(B, T, 1) + 0.5
    sae_grad, centered = grad * scale, torch.randn(B, T, D, generator=g)
    decoder, b_dec = torch.randn(K, D, generator=g), torch.randn(D, generator=g)
    values, indices = torch.rand(B, T, m, generator=g), torch.randint(0, K, (B, T, m), generator=g)
    n = np.linalg.norm
    dec, gs = decoder.double().numpy(), sae_grad.double().numpy()
    for variant in VARIANTS:
        if variant in ("combined", "activation", "gradient", "gradient_signed"):
            scores = feature_gradient_scores(sae_grad, decoder, variant, (values, indices))
        else:
            scores = residual_scores(x, grad, sae_grad, centered, b_dec, variant)
        actual = score_magnitudes(variant, scores, x, grad, sae_grad, centered, b_dec, decoder, (values, indices))
        for b in range(B):
            for t in range(T):
                f = np.zeros(K)
                np.add.at(f, indices[b, t].numpy(), values[b, t].double().numpy())
                expected = {
                    "combined": n(gs[b, t]) * n(f @ dec),
                    "activation": f.sum(),
                    "gradient": sum(n(gs[b, t]) * n(d) for d in dec),
                    "gradient_signed": n(gs[b, t]) * n(dec.sum(axis=0)),
                    "grad_input": n(grad[b, t].double().numpy()) * n(x[b, t].double().numpy()),
                    "grad_input_centered": n(gs[b, t]) * n(centered[b, t].double().numpy()),
                    "bias_projection": n(gs[b, t]) * n(b_dec.double().numpy()),
                    "token_norm": n(x[b, t].double().numpy()),
                }[variant]
                assert float(actual[b, t]) == pytest.approx(expected, rel=1e-5), (variant, b, t)
                assert float(actual[b, t]) >= abs(float(scores[b, t])) * (1 - 1e-5), (variant, b, t)
