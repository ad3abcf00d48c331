"""Feature-Gradient TransMM against an explicit per-image, per-token computation of docs/method.md §2."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_fgattr import FeatureGradientTransMM, SparseAutoencoder, TransMM
from captum_fgattr.gates import exp_tanh_gates, robust_z
from captum_fgattr.sae import SAEConfig
from tests.reference import (
    assert_close_relative, attention_and_grads, cam_matrix, clip_forward, feature_gradient_gates, sae_encode,
    timm_forward, transmm_from_cams,
)


def make_sae(d_in, n_features=64, activation="topk", normalize="none", k=8, seed=0):
    cfg = SAEConfig(d_in=d_in, n_features=n_features, activation=activation,
                    k=k if activation == "topk" else None, normalize=normalize)
    sae = SparseAutoencoder(cfg, seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
        sae.b_dec.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
    return sae


def reference_fg(forward, model, images, targets, num_prefix, saes, kappa, c_max, variant, decoders=None):
    """Explicit per-image FG-TransMM: (patch relevance (B, T), {layer: gates (B, T)})."""
    rows, all_gates = [], {layer: [] for layer in saes}
    for image, t in zip(images, targets):
        attns, grads, resids, resid_grads = attention_and_grads(forward, model, image[None], int(t), layers=list(saes))
        cams = [cam_matrix(a, g) for a, g in zip(attns, grads)]
        for layer, sae in saes.items():
            decoder = sae.W_dec.detach().double().numpy() if decoders is None else decoders[layer]
            f_rows = [sae_encode(sae, x) for x in resids[layer][num_prefix:]]
            _, gates = feature_gradient_gates(f_rows, resid_grads[layer][num_prefix:], decoder, variant,
                                              kappa[layer], c_max[layer], resids[layer][num_prefix:], sae)
            all_gates[layer].append(gates)
            cam = cams[layer].copy()
            for row in range(cam.shape[0]):
                for col in range(num_prefix, cam.shape[1]):
                    cam[row, col] *= gates[col - num_prefix]
            cams[layer] = cam
        rows.append(transmm_from_cams(cams, num_prefix))
    return np.stack(rows), {layer: np.stack(g) for layer, g in all_gates.items()}


CASES = [  # (layers, sae kind, kappa, c_max)
    ([1], ("topk", "none"), 0.5, 10.0),
    ([0, 2], ("relu", "layer_norm"), 0.5, 10.0),
    ([1], ("topk", "layer_norm"), 1.0, 3.0),
    ([0, 1, 2], ("topk", "constant_norm_rescale"), 1.0, 3.0),
]


@pytest.mark.parametrize("variant", ["combined", "activation", "gradient", "gradient_signed", "grad_input_centered",
                                     "bias_projection", "token_norm"])
@pytest.mark.parametrize("layers, kind, kappa, c_max", CASES)
def test_matches_explicit_per_token_computation(vit, variant, layers, kind, kappa, c_max):
    saes = {layer: make_sae(32, activation=kind[0], normalize=kind[1], seed=layer) for layer in layers}
    images, targets = torch.randn(2, 3, 32, 32), [4, 1]
    method = FeatureGradientTransMM(vit, saes, kappa=kappa, c_max=c_max, variant=variant)
    grid = method.attribute(images, target=targets, return_patches=True)
    per_layer = lambda v: {layer: v for layer in layers}  # noqa: E731
    expected, gates = reference_fg(timm_forward, vit, images, targets, 1, saes, per_layer(kappa), per_layer(c_max), variant)
    assert_close_relative(grid.reshape(2, -1), expected)
    for layer in layers:
        assert_close_relative(method.last_gated_layers[layer].gates, gates[layer])
    assert any(np.abs(g - 1).max() > 1e-3 for g in gates.values())  # the gates do something


def test_per_layer_kappa_and_c_max_with_registers(vit_registers):
    saes = {0: make_sae(24, seed=3), 1: make_sae(24, activation="relu", seed=4)}
    kappa, c_max = {0: 0.3, 1: 2.0}, {0: 5.0, 1: 1.5}
    images, targets = torch.randn(2, 3, 24, 40), [3, 0]
    grid = FeatureGradientTransMM(vit_registers, saes, kappa=kappa, c_max=c_max).attribute(
        images, target=targets, return_patches=True)
    expected, _ = reference_fg(timm_forward, vit_registers, images, targets, 3, saes, kappa, c_max, "combined")
    assert_close_relative(grid.reshape(2, -1), expected)


def test_open_clip_block_gated_by_a_width_768_sae(clip_classifier):
    saes = {5: make_sae(768, n_features=1536, k=32, seed=5)}
    images, targets = torch.randn(1, 3, 224, 224), [1]
    grid = FeatureGradientTransMM(clip_classifier, saes).attribute(images, target=targets, return_patches=True)
    assert grid.shape == (1, 7, 7)
    expected, _ = reference_fg(clip_forward, clip_classifier, images, targets, 1, saes, {5: 0.5}, {5: 10.0}, "combined")
    assert_close_relative(grid.reshape(1, -1), expected)


@pytest.mark.parametrize("kappa, c_max", [(0.5, 1.0), (0.0, 10.0)])
def test_neutral_gates_give_exactly_transmm(vit, kappa, c_max):
    images = torch.randn(3, 3, 32, 32)
    fg = FeatureGradientTransMM(vit, {0: make_sae(32), 2: make_sae(32, seed=2)}, kappa=kappa, c_max=c_max)
    assert torch.equal(fg.attribute(images, target=[0, 1, 2]), TransMM(vit).attribute(images, target=[0, 1, 2]))


def test_gates_range_and_median_patch(vit):
    c_max = 4.0
    fg = FeatureGradientTransMM(vit, {1: make_sae(32)}, kappa=0.3, c_max=c_max)
    fg.attribute(torch.randn(4, 3, 32, 32), target=2)
    record = fg.last_gated_layers[1]
    assert ((record.gates > 1 / c_max) & (record.gates < c_max)).all()
    median_patch = record.scores.median(dim=1).indices
    assert torch.equal(record.gates.gather(1, median_patch[:, None]), torch.ones(4, 1))
    assert record.gates.shape == record.scores.shape == (4, 16)


def test_shuffled_decoder_control(vit):
    sae = make_sae(32)
    images, targets = torch.randn(2, 3, 32, 32), [0, 3]
    real = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0)
    shuffled = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, shuffle_decoder_seed=7)
    perm = shuffled.decoder_permutations[1]
    assert sorted(perm.tolist()) == list(range(64)) and not torch.equal(perm, torch.arange(64))
    real_map = real.attribute(images, target=targets, return_patches=True)
    shuffled_map = shuffled.attribute(images, target=targets, return_patches=True)
    assert not torch.allclose(real_map, shuffled_map)
    # decoder rows permuted (same multiset of directions), encoder and so the activations untouched
    torch.testing.assert_close(shuffled.decoder(1), sae.W_dec.detach()[perm])
    assert torch.equal(shuffled.decoder(1).sum(0), shuffled.decoder(1).sum(0))
    torch.testing.assert_close(torch.sort(shuffled.decoder(1), dim=0).values, torch.sort(sae.W_dec.detach(), dim=0).values)
    decoders = {1: sae.W_dec.detach().double().numpy()[perm.numpy()]}
    expected, _ = reference_fg(timm_forward, vit, images, targets, 1, {1: sae}, {1: 1.0}, {1: 10.0}, "combined", decoders)
    assert_close_relative(shuffled_map.reshape(2, -1), expected)
    again = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0, shuffle_decoder_seed=7)
    assert torch.equal(again.attribute(images, target=targets, return_patches=True), shuffled_map)


def test_top_features_are_the_largest_contributions(vit):
    sae = make_sae(32, n_features=64, k=8)
    fg = FeatureGradientTransMM(vit, {1: sae}, top_features=3)
    image = torch.randn(1, 3, 32, 32)
    fg.attribute(image, target=1)
    record = fg.last_gated_layers[1]
    assert record.top_features.shape == record.top_contributions.shape == (1, 16, 3)
    _, _, resids, resid_grads = attention_and_grads(timm_forward, vit, image, 1, layers=[1])
    decoder = sae.W_dec.detach().double().numpy()
    for t in range(16):
        f = sae_encode(sae, resids[1][1 + t])
        contributions = np.array([f[k] * float(resid_grads[1][1 + t] @ decoder[k]) for k in range(64)])
        order = np.argsort(-np.abs(contributions))[:3]
        assert set(record.top_features[0, t].tolist()) == set(order.tolist())
        assert_close_relative(sorted(record.top_contributions[0, t].tolist()), sorted(contributions[order]))
        assert_close_relative(record.scores[0, t], contributions.sum())


def test_constant_scores_give_neutral_finite_gates():
    z = robust_z(torch.full((2, 9), 3.5))
    assert torch.equal(exp_tanh_gates(z, 0.5, 10.0), torch.ones(2, 9))
    half_constant = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.0]])  # MAD = 0, not all equal
    gates = exp_tanh_gates(robust_z(half_constant), 0.5, 10.0)
    assert torch.isfinite(gates).all() and gates[0, 0] == 1.0
    assert ((gates >= 0.1 * (1 - 1e-6)) & (gates <= 10.0 * (1 + 1e-6))).all()  # saturates at the bounds


def test_constant_activation_scores_through_the_method(vit):
    sae = make_sae(32, activation="relu")
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(0.5)  # every token has the same codes -> activation scores constant
    fg = FeatureGradientTransMM(vit, {1: sae}, variant="activation")
    images = torch.randn(2, 3, 32, 32)
    out = fg.attribute(images, target=0)
    assert torch.equal(fg.last_gated_layers[1].gates, torch.ones(2, 16))
    torch.testing.assert_close(out, TransMM(vit).attribute(images, target=0))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(saes={3: None}), "out of range"),
        (dict(saes={-1: None}), "out of range"),
        (dict(saes={}), "empty"),
        (dict(saes={0: "wide"}), "width"),
        (dict(kappa=-0.1), "kappa"),
        (dict(c_max=0.5), "c_max"),
        (dict(kappa=float("nan")), "kappa"),
        (dict(variant="mixed"), "variant"),
        (dict(kappa={0: 0.5, 1: 0.5}), "gated layers"),
    ],
)
def test_bad_configuration_is_named(vit, kwargs, error):
    saes = kwargs.pop("saes", {0: make_sae(32)})
    saes = {layer: make_sae(48) if sae == "wide" else (sae or make_sae(32)) for layer, sae in saes.items()}
    with pytest.raises(ValueError, match=error):
        FeatureGradientTransMM(vit, saes, **kwargs)


def test_one_forward_per_batch(vit):
    calls = []
    handle = vit.register_forward_hook(lambda *_: calls.append(1))
    try:
        FeatureGradientTransMM(vit, {0: make_sae(32), 1: make_sae(32)}).attribute(torch.randn(4, 3, 32, 32))
    finally:
        handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_sparse_codes_scatter_back_to_the_dense_codes(activation):
    sae = make_sae(16, n_features=40, activation=activation, normalize="layer_norm", k=5)
    x = torch.randn(3, 7, 16)
    values, indices = sae.encode_sparse(x)
    dense = torch.zeros(3, 7, 40).scatter_add(-1, indices, values)
    torch.testing.assert_close(dense, sae.encode(x))
    assert values.shape[-1] == (5 if activation == "topk" else int((sae.encode(x) > 0).sum(-1).max()))


@pytest.mark.parametrize("saes, error", [
    ({"1": "sae"}, r"saes key '1' \(str\) is not a block index.*did you mean 1\?"),
    ({1.0: "sae"}, r"saes key 1.0 \(float\).*did you mean 1\?"),
    ({1: torch.nn.Linear(32, 32)}, r"saes\[1\] is a Linear, not a SparseAutoencoder"),
])
def test_bad_sae_mapping_is_named(vit, saes, error):
    saes = {key: make_sae(32) if value == "sae" else value for key, value in saes.items()}
    with pytest.raises(TypeError, match=error):
        FeatureGradientTransMM(vit, saes)
