"""Silent wrong answers refused or flagged: a model that does not read the class token, an SAE used at
another block than it was trained on, train mode, low precision, bad targets of the class-agnostic
baselines, the permuted-gates control under Captum's NoiseTunnel / sensitivity_max, and the gated-layer
record after a failed call."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import sensitivity_max
from torch import nn

from captum_fgattr import AttentionRollout, FeatureGradientTransMM, RawAttention, TransMM
from captum_fgattr.bench.methods import MethodSpec, build_method
from captum_fgattr.bench.resolve import load_saes
from captum_fgattr.sae import SAEConfig, SparseAutoencoder, TrainConfig, sae_config_for
from captum_fgattr.sae.layers import train_layer_saes
from tests.conftest import make_vit
from tests.reference import assert_close_relative, attention_and_grads, sae_encode, timm_forward, token_score
from tests.test_fg_transmm import make_sae

SHIPPED_SAES = Path(__file__).resolve().parents[1] / "captum_fgattr" / "bench" / "default" / "shipped" / "saes"


def _no_forward_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class PatchMeanHead(nn.Module):
    """A classifier that pools the patch tokens (the class token is computed but never read)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.head(self.vit.forward_features(x)[:, 1:].mean(1))


class ClassTokenHead(PatchMeanHead):
    """The same wrapper reading the class token, i.e. exactly what the timm ViT computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.head(self.vit.forward_features(x)[:, 0])


# -- 3. a model that pools the patch tokens --------------------------------------------------------------
def test_patch_token_pooling_wrapper_is_refused(vit):
    images = torch.randn(3, 3, 32, 32)
    pooled = PatchMeanHead(vit).eval()
    # the premise, written out: the class token's last-block attention row gets exactly no gradient
    image = images[:1].clone().requires_grad_(True)
    probs = []
    handle = vit.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, i, out: probs.append(out))
    vit.blocks[-1].attn.fused_attn = False
    try:
        (grad,) = torch.autograd.grad(pooled(image)[0, 2], probs[0])
    finally:
        handle.remove()
        vit.blocks[-1].attn.fused_attn = True
    assert torch.count_nonzero(grad[:, :, 0]) == 0 and torch.count_nonzero(grad[:, :, 1:]) > 0
    saes = {1: make_sae(32)}
    for method in (TransMM(pooled), FeatureGradientTransMM(pooled, saes)):
        with pytest.raises(ValueError, match=r"does not read its output from the class token \(3 of 3 images.*"
                                             r"explain the class token's row"):
            method.attribute(images, target=2)
        assert _no_forward_hooks(pooled) and all(blk.attn.fused_attn for blk in vit.blocks)


def test_class_token_wrapper_and_zero_head_are_not_refused(vit):
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(TransMM(ClassTokenHead(vit).eval()).attribute(images, target=[1, 3]),
                               TransMM(vit).attribute(images, target=[1, 3]), rtol=0, atol=0)
    with torch.no_grad():
        vit.head.weight.zero_()
    grid = TransMM(vit).attribute(images, target=1, return_patches=True)  # no gradient anywhere: a zero map
    assert torch.equal(grid, torch.zeros(2, 4, 4))


# -- 4. the block an SAE records ----------------------------------------------------------------------------
def _sae_of_block(layer: int | None, seed: int = 0) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=32, n_features=64, activation="topk", k=8, hook_layer=layer)
    return SparseAutoencoder(cfg, seed=seed)


def test_sae_recorded_layer_mismatch_is_refused_in_the_api(vit):
    with pytest.raises(ValueError, match=r"saes\[1\]: the SAE records that it was trained on block 2 .* used at block 1"):
        FeatureGradientTransMM(vit, {1: _sae_of_block(2)})
    with pytest.raises(ValueError, match=r"saes\[2\].*trained on block 0 .* used at block 2"):
        FeatureGradientTransMM(vit, {1: _sae_of_block(1), 2: _sae_of_block(0)})
    fg = FeatureGradientTransMM(vit, {1: _sae_of_block(1), 2: _sae_of_block(None)})  # no record: accepted
    assert sorted(fg.saes) == [1, 2]


def test_sae_recorded_layer_mismatch_is_refused_from_a_layer_folder(vit, tmp_path):
    _sae_of_block(2).save(tmp_path / "layer_1")
    assert json.loads((tmp_path / "layer_1" / "config.json").read_text())["hook_point_layer"] == 2
    saes = load_saes(str(tmp_path), [1])
    with pytest.raises(ValueError, match=r"trained on block 2 .* used at block 1.*layer_<L>/ folder"):
        build_method(MethodSpec("fg", {"layers": [1]}), vit, saes)
    # resuming fgattr train-sae into that folder does not reuse it as block 1's SAE
    with pytest.raises(ValueError, match=r"layer_1 holds an SAE with different \['hook_layer'\] \(\[2\] instead of \[1\]\)"):
        train_layer_saes(vit, [], {1: sae_config_for(32, expansion=2, k=8, hook_layer=1)}, TrainConfig(), tmp_path)


def test_shipped_saes_record_the_block_of_their_folder():
    folders = sorted(SHIPPED_SAES.glob("layer_*"))
    assert [f.name for f in folders] == ["layer_1", "layer_2", "layer_3", "layer_4"]
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert config["hook_point_layer"] == int(folder.name[6:])


# -- 5a. train mode ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rates", [{"drop_rate": 0.3}, {"attn_drop_rate": 0.2}, {"proj_drop_rate": 0.1},
                                   {"drop_path_rate": 0.2}])
def test_train_mode_with_stochastic_modules_is_refused(rates):
    vit = make_vit(**rates).train()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the premise: two calls of the model differ
        assert not torch.equal(vit(images), vit(images))
    for method in (TransMM(vit), FeatureGradientTransMM(vit, {1: make_sae(32)}), AttentionRollout(vit)):
        with pytest.raises(ValueError, match=r"train mode with modules that change its output .*call model.eval\(\)"):
            method.attribute(images, target=1)
    assert all(m.training for m in vit.modules())  # the mode is the caller's: unchanged


def test_train_mode_with_batch_norm_is_refused(vit):
    model = nn.Sequential(nn.BatchNorm2d(3), vit).train()
    with pytest.raises(ValueError, match=r"0 \(batch statistics\)"):
        TransMM(model).attribute(torch.randn(2, 3, 32, 32), target=1)


def test_train_mode_without_stochastic_modules_warns_and_gives_the_eval_map(vit):
    images = torch.randn(2, 3, 32, 32)
    expected = TransMM(vit).attribute(images, target=[0, 4])
    vit.train()
    with pytest.warns(UserWarning, match=r"the model is in train mode .*call model.eval\(\)"):
        got = TransMM(vit).attribute(images, target=[0, 4])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TransMM(vit.eval()).attribute(images, target=[0, 4])


# -- 5b. low precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sae_dtype", [torch.float32, torch.bfloat16])
def test_bf16_model_scores_are_float32_and_a_warning_is_given(sae_dtype):
    """The scores (SAE encode, ⟨g, d_k⟩, normalisation) are float32 whatever the model's and the SAE's dtype:
    they equal the explicit float64 computation from the model's bf16 residual stream and gradient. The map
    is still several % (relative L2) off the float32 model's, because those inputs are rounded: a warning."""
    vit = make_vit().to(torch.bfloat16)
    sae = make_sae(32).to(sae_dtype)
    images, target = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16), 2
    fg = FeatureGradientTransMM(vit, {1: sae}, kappa=1.0)
    with pytest.warns(UserWarning, match=r"reduced precision \(torch.bfloat16 weights\).*run the model in float32"):
        fg.attribute(images, target=target)
    scores = fg.last_gated_layers[1].scores
    assert scores.dtype == torch.float32 and fg.last_gated_layers[1].gates.dtype == torch.float32
    decoder = sae.W_dec.detach().double().numpy()
    for b in range(2):
        _, _, resids, grads = attention_and_grads(timm_forward, vit, images[b:b + 1], target, layers=[1])
        explicit = [token_score("combined", sae_encode(sae, x), g, x, decoder, sae)
                    for x, g in zip(resids[1][1:], grads[1][1:])]
        assert_close_relative(scores[b], explicit, tol=1e-4)


def test_autocast_warns_for_fg_and_float32_models_do_not(vit):
    images = torch.randn(2, 3, 32, 32)
    fg = FeatureGradientTransMM(vit, {1: make_sae(32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fg.attribute(images, target=1)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(UserWarning, match=r"autocast to torch.bfloat16"):
        fg.attribute(images, target=1)
    assert fg.last_gated_layers[1].scores.dtype == torch.float32


# -- class-agnostic baselines check the target ------------------------------------------------------------
@pytest.mark.parametrize("method", [AttentionRollout, RawAttention])
def test_rollout_and_raw_attention_refuse_bad_targets(vit, method):
    images = torch.randn(2, 3, 32, 32)
    for target in (-1, 5, [0, 9]):  # 5 classes
        with pytest.raises(ValueError, match="out of range for 5 classes"):
            method(vit).attribute(images, target=target)
    with pytest.raises(ValueError, match="one entry per sample"):
        method(vit).attribute(images, target=[0, 1, 2])
    assert torch.equal(method(vit).attribute(images, target=[4, 0]), method(vit).attribute(images))


# -- the permuted-gates control -----------------------------------------------------------------------------
def _permutation(real_gates: torch.Tensor, applied: torch.Tensor) -> list[int]:
    """The patch permutation p with applied = real[p], recovered from distinct gate values."""
    assert len(set(real_gates.tolist())) == real_gates.numel()
    return [int((real_gates == v).nonzero()) for v in applied]


def test_permuted_gates_are_fixed_by_the_seed_across_calls_and_batch_positions(vit):
    saes = {1: make_sae(32)}
    images = torch.randn(3, 3, 32, 32)
    real = FeatureGradientTransMM(vit, saes, kappa=1.0)
    fg = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=4)
    first = fg.attribute(images, target=1, return_patches=True)
    gates = fg.last_gated_layers[1].gates.clone()
    real.attribute(images, target=1)
    perms = [_permutation(real.last_gated_layers[1].gates[b], gates[b]) for b in range(3)]
    assert perms[0] == perms[1] == perms[2] and perms[0] != list(range(16))
    for _ in range(2):  # repeated calls, a new instance, other batch positions: the same permutation
        torch.testing.assert_close(fg.attribute(images, target=1, return_patches=True), first, rtol=0, atol=0)
    again = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=4)
    reordered = again.attribute(images[[2, 0, 1]], target=1, return_patches=True)
    torch.testing.assert_close(reordered, first[[2, 0, 1]], rtol=0, atol=0)
    other = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=5)
    other.attribute(images, target=1)
    assert _permutation(real.last_gated_layers[1].gates[0], other.last_gated_layers[1].gates[0]) != perms[0]


def test_permuted_gates_do_not_change_between_noisy_copies(vit):
    """Noise-free NoiseTunnel averages identical copies, and sensitivity_max with an identity perturbation
    compares identical maps: both must equal the plain map / 0 exactly if every copy gets the same gates."""
    saes = {1: make_sae(32)}
    images = torch.randn(2, 3, 32, 32)
    fg = FeatureGradientTransMM(vit, saes, kappa=1.0, permute_gates_seed=3)
    plain = fg.attribute(images, target=[1, 2])
    smooth = NoiseTunnel(fg).attribute(images, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=[1, 2])
    torch.testing.assert_close(smooth, plain)
    sensitivity = sensitivity_max(fg.attribute, images, perturb_func=lambda x: x, target=[1, 2], n_perturb_samples=3)
    assert torch.equal(sensitivity, torch.zeros(2))
    with pytest.raises(ValueError, match="leave sample_ids out"):
        NoiseTunnel(fg).attribute(images, nt_type="smoothgrad", nt_samples=2, target=[1, 2], sample_ids=[5, 6])


# -- last_gated_layers after a failed call -------------------------------------------------------------------
def test_last_gated_layers_is_emptied_by_a_failed_call(vit):
    fg = FeatureGradientTransMM(vit, {0: make_sae(32), 1: make_sae(32, seed=1)}, permute_gates_seed=0)
    images = torch.randn(2, 3, 32, 32)
    fg.attribute(images, target=1)
    assert sorted(fg.last_gated_layers) == [0, 1]
    with pytest.raises(ValueError, match="out of range"):
        fg.attribute(images, target=7)
    assert fg.last_gated_layers == {}
    fg.attribute(images, target=1)
    with pytest.raises(ValueError, match="sample_ids has 3 entries"):  # fails inside the gating
        fg.attribute(images, target=1, sample_ids=[0, 1, 2])
    assert fg.last_gated_layers == {}
    assert np.isfinite(fg.attribute(images, target=1).numpy()).all() and sorted(fg.last_gated_layers) == [0, 1]
