"""Exact fast encode (bf16 candidates + fp32 rescoring + margin check + fallback) against the plain fp32 codes.

The reference is always the plain computation: ``(norm(x) - b_dec) @ W_enc + b_enc`` in fp32, then
``torch.topk`` over all features (TopK) or ReLU.
"""
from __future__ import annotations

import pytest
import torch

from captum_fgattr import FeatureGradientTransMM
from captum_fgattr.sae import SAEConfig, SparseAutoencoder
from conftest import make_vit

NORMS = ("none", "layer_norm", "constant_norm_rescale")


def make(d: int, n: int, activation: str = "topk", k: int = 8, normalize: str = "none", seed: int = 0) -> SparseAutoencoder:
    """An SAE with non-zero biases (the bias terms of the bound are exercised) and the fast path forced on."""
    config = SAEConfig(d, n, activation=activation, k=k if activation == "topk" else None, normalize=normalize)
    sae = SparseAutoencoder(config, seed=seed, fast_encode=True)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(n, generator=gen) - (2.0 if activation == "relu" else 0.0))
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=gen))
    return sae


def reference(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense codes (..., n), active mask (..., n)) of the plain fp32 product."""
    x_norm, _ = sae.normalize(x)
    pre = (x_norm - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.activation == "relu":
        return torch.relu(pre), pre > 0
    values, indices = pre.topk(sae.k, dim=-1)
    selected = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, indices, True)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values)), selected


def assert_identical(sae: SparseAutoencoder, x: torch.Tensor) -> dict[str, int]:
    """Same indices as the reference, values to fp32 round-off, distinct indices in every row; -> fast-path stats."""
    sae.last_fast_encode = None
    with torch.no_grad():
        values, indices = sae.encode_sparse(x)
        dense_ref, selected_ref = reference(sae, x)
    assert sae.last_fast_encode is not None, "the fast path was not taken"
    if sae.activation == "topk":
        assert indices.shape[-1] == sae.k
        selected = torch.zeros_like(selected_ref).scatter(-1, indices, True)
    else:
        assert indices.shape[-1] == max(1, int(selected_ref.sum(-1).max()))
        selected = torch.zeros_like(selected_ref).scatter(-1, indices, values > 0)
    assert torch.equal(selected, selected_ref), "selected features differ from the plain fp32 TopK / ReLU"
    dense = torch.zeros_like(dense_ref).scatter_add(-1, indices, values)
    torch.testing.assert_close(dense, dense_ref, rtol=2e-6, atol=2e-6)
    rows = indices.reshape(-1, indices.shape[-1]).sort(-1).values
    assert bool((rows[:, 1:] != rows[:, :-1]).all()), "an index repeats within a row"
    return dict(sae.last_fast_encode)


@pytest.mark.parametrize("normalize", NORMS)
@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_random_tokens(one_torch_thread, activation, normalize):
    sae = make(48, 1536, activation, k=12, normalize=normalize)
    x = 3 * torch.randn(4, 50, 48, generator=torch.Generator().manual_seed(2)) + 1
    stats = assert_identical(sae, x)
    assert stats["fallback"] < stats["tokens"] // 4  # the candidates decided most tokens
    if activation == "topk":
        assert stats["candidates"] < stats["tokens"] * 1536 // 20


def test_clustered_features_below_bf16_resolution(one_torch_thread):
    """Groups of 16 encoder columns that differ by ~1e-4 relative: bf16 cannot order them, the rescoring must."""
    d, groups, size = 32, 48, 16
    gen = torch.Generator().manual_seed(3)
    sae = make(d, groups * size, k=20)
    base = torch.randn(d, groups, 1, generator=gen)
    with torch.no_grad():
        sae.W_enc.copy_((base * (1 + 1e-4 * torch.randn(d, groups, size, generator=gen))).reshape(d, -1))
    x = torch.randn(200, d, generator=gen)
    stats = assert_identical(sae, x)
    assert stats["fallback"] < stats["tokens"]


def test_exact_ties_fall_back_and_match_torch_topk(one_torch_thread):
    """Integer data: every product is exact, duplicated columns tie exactly across the k-th place."""
    d, n, k = 16, 256, 8
    gen = torch.Generator().manual_seed(4)
    sae = make(d, n, k=k)
    with torch.no_grad():
        w = torch.randint(-3, 4, (d, n // 2), generator=gen).float()
        sae.W_enc.copy_(torch.cat([w, w], 1))  # feature j and j + n/2 always tie
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.randint(-3, 4, (64, d), generator=gen).float()
    stats = assert_identical(sae, x)
    assert stats["fallback"] > 0


def test_near_ties_within_fp32_round_off_fall_back(one_torch_thread):
    """Pairs of columns one ulp apart: which wins depends on the product's rounding, so every token falls back."""
    d, n, k = 64, 512, 9  # k odd: every token's k-th place splits a pair
    gen = torch.Generator().manual_seed(5)
    sae = make(d, n, k=k)
    with torch.no_grad():
        w = torch.randn(d, n // 2, generator=gen)
        sae.W_enc.copy_(torch.cat([w, torch.nextafter(w, torch.full_like(w, torch.inf))], 1))
        sae.b_enc.zero_()
    x = torch.randn(32, d, generator=gen).abs()  # positive inputs: the ulp nudge raises every twin
    stats = assert_identical(sae, x)
    assert stats["fallback"] == stats["tokens"]


def test_relu_pre_activations_near_zero(one_torch_thread):
    """ReLU with biases that put some pre-activations within round-off of 0: signs uncertain -> fallback rows."""
    sae = make(32, 512, "relu")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(40, 32, generator=gen)
    with torch.no_grad():
        pre = (x[:10] - sae.b_dec) @ sae.W_enc
        sae.b_enc[:10] = -pre[torch.arange(10), torch.arange(10)]  # token i, feature i: pre-activation ~ 0
    stats = assert_identical(sae, x)
    assert 0 < stats["fallback"] <= 10


def test_weights_changed_in_place_rebuild_the_cache(one_torch_thread):
    sae = make(32, 640, k=10)
    x = torch.randn(30, 32, generator=torch.Generator().manual_seed(7))
    assert_identical(sae, x)
    with torch.no_grad():
        sae.W_enc.mul_(-1.5)
    assert_identical(sae, x)


def test_fast_path_is_skipped_where_it_cannot_be_exact():
    sae = make(16, 128, k=4)
    x = torch.randn(5, 16)
    sae.fast_encode = False
    sae.encode_sparse(x)
    assert sae.last_fast_encode is None
    sae.fast_encode = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sae.encode_sparse(x)
    assert sae.last_fast_encode is None
    sae.encode_sparse(x.requires_grad_())  # a gradient is needed: plain path
    assert sae.last_fast_encode is None


@pytest.mark.parametrize("variant", ["combined", "activation"])  # the scores that read the SAE codes
def test_fg_maps_identical_with_and_without_the_fast_path(one_torch_thread, variant):
    vit = make_vit()
    saes = {layer: make(32, 256, k=8, normalize=norm, seed=layer) for layer, norm in zip((0, 1, 2), NORMS)}
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    maps, gates = {}, {}
    for fast in (True, False):
        for sae in saes.values():
            sae.fast_encode = fast
            sae.last_fast_encode = None
        fg = FeatureGradientTransMM(vit, saes, kappa=0.5, c_max=10.0, variant=variant)
        maps[fast] = fg.attribute(x, target=[0, 1, 2], return_patches=True)
        gates[fast] = torch.stack([g.gates for g in fg.last_gated_layers.values()])
        assert all((sae.last_fast_encode is not None) == fast for sae in saes.values())
    torch.testing.assert_close(gates[True], gates[False], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[True], maps[False], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["gradient", "gradient_signed"])
def test_gradient_only_scores_do_not_encode(one_torch_thread, variant, monkeypatch):
    """They sum over every decoder row: no SAE encode runs (unless top features are asked for)."""
    vit = make_vit()
    saes = {1: make(32, 256, k=8, normalize="none", seed=1)}
    calls = []
    monkeypatch.setattr(saes[1], "encode_sparse", lambda x: calls.append(x) or (_ for _ in ()).throw(AssertionError))
    FeatureGradientTransMM(vit, saes, variant=variant).attribute(torch.randn(2, 3, 32, 32), target=0)
    assert calls == []
