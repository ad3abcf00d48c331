"""TransMM against an explicit per-image computation of docs/method.md §1, model hygiene, Captum contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from torch import nn

from captum_fgattr import TransMM
from captum_fgattr.adapters import get_adapter
from tests.conftest import make_vit
from tests.reference import (
    assert_close_relative, attention_and_grads, cam_matrix, clip_forward, timm_forward, transmm_from_cams,
)


def reference_transmm(forward, model, images, targets, num_prefix):
    rows = []
    for image, t in zip(images, targets):
        attns, grads, _, _ = attention_and_grads(forward, model, image[None], int(t))
        rows.append(transmm_from_cams([cam_matrix(a, g) for a, g in zip(attns, grads)], num_prefix))
    return np.stack(rows)


@pytest.mark.parametrize("fixture", ["vit", "vit_registers"])
def test_timm_matches_explicit_formula_with_mixed_targets(fixture, request):
    vit = request.getfixturevalue(fixture)
    H, W = vit.patch_embed.img_size
    images = torch.randn(3, 3, H, W)
    targets = [0, 3, 1]
    with torch.no_grad():
        manual_logits = timm_forward(vit, images[:1])[0]
        torch.testing.assert_close(manual_logits, vit(images[:1]))  # the reference forward is the model's
    grid = TransMM(vit).attribute(images, target=targets, return_patches=True)
    gh, gw = H // 8, W // 8
    assert grid.shape == (3, gh, gw)
    expected = reference_transmm(timm_forward, vit, images, targets, vit.num_prefix_tokens)
    assert_close_relative(grid.reshape(3, -1), expected)
    assert np.abs(expected).max() > 0


def test_open_clip_zero_shot_matches_explicit_formula(clip_classifier):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clip_forward(clip_classifier, images[:1])[0], clip_classifier(images[:1]))
    grid = TransMM(clip_classifier).attribute(images, target=torch.tensor([2, 0]), return_patches=True)
    assert grid.shape == (2, 7, 7)
    expected = reference_transmm(clip_forward, clip_classifier, images, [2, 0], 1)
    assert_close_relative(grid.reshape(2, -1), expected)


def test_pixel_map_repeats_each_patch_value(vit):
    images = torch.randn(2, 3, 32, 32)
    method = TransMM(vit)
    grid = method.attribute(images, target=1, return_patches=True)
    pixels = method.attribute(images, target=1)
    assert pixels.shape == (2, 1, 32, 32)
    for i in range(4):
        for j in range(4):
            patch = pixels[:, 0, 8 * i:8 * i + 8, 8 * j:8 * j + 8]
            torch.testing.assert_close(patch, grid[:, i, j, None, None].expand(2, 8, 8))


def test_batch_equals_single_images_and_none_means_predicted(vit_registers):
    images = torch.randn(4, 3, 24, 40)
    method = TransMM(vit_registers)
    batched = method.attribute(images, return_patches=True)
    predicted = vit_registers(images).argmax(1)
    for i in range(4):
        single = method.attribute(images[i:i + 1], target=int(predicted[i]), return_patches=True)
        torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-5, atol=1e-7)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _no_hooks(model):
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_timm_model_left_exactly_as_it_was_also_after_failures(vit):
    images = torch.randn(2, 3, 32, 32)
    vit.blocks[1].attn.fused_attn = True
    vit.blocks[0].attn.fused_attn = False
    before_out, before_state = vit(images).detach(), _state(vit)
    method = TransMM(vit)
    method.attribute(images, target=0)
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images, target=7)  # fails after the forward pass, inside the hooks
    with pytest.raises(TypeError):
        method.attribute(images, additional_forward_args=(None, "too", "many"))  # fails inside the forward
    assert _no_hooks(vit)
    assert [b.attn.fused_attn for b in vit.blocks] == [False, True, vit.blocks[2].attn.fused_attn]
    assert not vit.training
    assert all(p.grad is None for p in vit.parameters())
    torch.testing.assert_close(vit(images), before_out)
    for k, v in _state(vit).items():
        assert torch.equal(v, before_state[k])


def test_open_clip_model_left_as_it_was(clip_classifier):
    images = torch.randn(1, 3, 224, 224)
    before = clip_classifier(images).detach()
    with pytest.raises(ValueError, match="out of range"):
        TransMM(clip_classifier).attribute(images, target=3)
    assert _no_hooks(clip_classifier)
    assert all("forward" not in blk.attn.__dict__ for blk in clip_classifier.visual.transformer.resblocks)
    torch.testing.assert_close(clip_classifier(images), before)


def test_training_mode_is_not_changed(vit):
    vit.train()
    TransMM(vit).attribute(torch.randn(1, 3, 32, 32), target=0)
    assert vit.training and all(m.training for m in vit.modules())


def test_noise_tunnel_runs_and_zero_noise_equals_plain(vit):
    images = torch.randn(2, 3, 32, 32)
    method = TransMM(vit)
    smooth = NoiseTunnel(method).attribute(images, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=[1, 2])
    assert smooth.shape == (2, 1, 32, 32) and torch.isfinite(smooth).all()
    noiseless = NoiseTunnel(method).attribute(images, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=[1, 2])
    torch.testing.assert_close(noiseless, method.attribute(images, target=[1, 2]))


def test_captum_flags(vit):
    method = TransMM(vit)
    assert method.multiplies_by_inputs is False
    assert method.has_convergence_delta() is False


@pytest.mark.parametrize(
    "target, error",
    [(5, "out of range"), ([0, -1], "out of range"), ([0, 1, 2], "one entry per sample"),
     (torch.zeros(2, 1, dtype=torch.long), "one entry per sample"), (1.5, "must be an int"),
     (torch.tensor([0.0, 1.0]), "integer")],
)
def test_bad_targets_are_named(vit, target, error):
    with pytest.raises((ValueError, TypeError), match=error):
        TransMM(vit).attribute(torch.randn(2, 3, 32, 32), target=target)


def test_bad_inputs_are_named(vit):
    method = TransMM(vit)
    with pytest.raises(ValueError, match=r"image size \(48, 48\)"):
        method.attribute(torch.randn(1, 3, 48, 48))
    bad = torch.randn(1, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        method.attribute(bad)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        method.attribute(torch.randn(3, 32, 32))


def test_unsupported_models_are_named():
    with pytest.raises(TypeError, match="supported ViTs"):
        TransMM(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    with pytest.raises(ValueError, match="global_pool='token'"):
        TransMM(make_vit(global_pool="avg"))
    with pytest.raises(ValueError, match="class token"):
        TransMM(make_vit(class_token=False, global_pool="avg"))


def test_vit_inside_a_wrapper_is_found(vit):
    wrapped = nn.Sequential(nn.Identity(), vit)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(TransMM(wrapped).attribute(images, target=1), TransMM(vit).attribute(images, target=1))
    assert get_adapter(wrapped).num_prefix_tokens == 1


def test_clip_zero_shot_logits_are_scaled_cosines(clip_classifier):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb = clip_classifier.visual(images)
        cos = torch.stack([torch.cosine_similarity(emb, c[None], dim=1) for c in clip_classifier.class_embeddings], 1)
        torch.testing.assert_close(clip_classifier(images), clip_classifier.logit_scale * cos)
    assert torch.allclose(clip_classifier.class_embeddings.norm(dim=1), torch.ones(3))
