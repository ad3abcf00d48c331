"""Issue 15: model coverage without silent wrong answers, and the Captum contract (Captum's own
``sensitivity_max``, ``infidelity`` and ``NoiseTunnel``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import ParallelScalingBlock, ParallelThingsBlock, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from captum_fgattr import TransMM
from tests.conftest import make_vit
from tests.reference import assert_close_relative, attention_and_grads, cam_matrix, timm_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_rows(forward, model, images, targets, num_prefix, rows=(0,)):
    """Explicit TransMM per image: R = I; R <- R + cam R; mean of the readout ``rows`` over patch columns."""
    out = []
    for image, t in zip(images, targets):
        attns, grads, _, _ = attention_and_grads(forward, model, image[None], int(t))
        cams = [cam_matrix(a, g) for a, g in zip(attns, grads)]
        R = np.eye(cams[0].shape[0])
        for cam in cams:
            R = R + cam @ R
        out.append(R[list(rows), num_prefix:].mean(axis=0))
    return np.stack(out)


# -- 1. compiled models, graphs the capture is not on, non-finite values --------------------------------
def test_compiled_model_gives_the_uncompiled_attribution(vit):
    images = torch.randn(2, 3, 32, 32)
    expected = TransMM(vit).attribute(images, target=[1, 3])
    actual = TransMM(torch.compile(vit)).attribute(images, target=[1, 3])
    torch.testing.assert_close(actual, expected)
    assert expected.abs().max() > 0


def test_compiled_submodule_is_refused(vit):
    with pytest.raises(TypeError, match="compiled with torch.compile"):
        TransMM(nn.Sequential(nn.Identity(), torch.compile(vit)))


class _NoGradBackbone(nn.Module):
    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vit(x)


class _ReentrantCheckpoint(nn.Module):
    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.vit, x, use_reentrant=True)


@pytest.mark.parametrize("wrapper, what", [(_NoGradBackbone, "output does not require grad"),
                                           (_ReentrantCheckpoint, "attention of block 0")])
def test_capture_off_the_gradient_path_is_named(vit, wrapper, what):
    with pytest.raises(RuntimeError, match=what) as info:
        TransMM(wrapper(vit)).attribute(torch.randn(1, 3, 32, 32), target=0)
    assert "no_grad" in str(info.value) and "checkpointing" in str(info.value)


def test_timm_non_reentrant_checkpointing_gives_the_same_attribution(vit):
    images = torch.randn(2, 3, 32, 32)
    expected = TransMM(vit).attribute(images, target=[0, 2])
    vit.set_grad_checkpointing(True)  # recomputes the blocks (and re-fires the hooks) during backward
    torch.testing.assert_close(TransMM(vit).attribute(images, target=[0, 2]), expected)


def test_non_finite_logits_or_relevance_raise(vit):
    with pytest.raises(ValueError, match="NaN or Inf.*inputs range"):
        TransMM(vit).attribute(torch.full((1, 3, 32, 32), 1e30), target=0)


# -- 2. DeiT distilled: both token rows, averaged as the heads are -------------------------------------
def distilled_forward(vit, image):
    """Manual forward of a timm VisionTransformerDistilled in eval mode: (head(x_cls) + head_dist(x_dist)) / 2."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(image)))
    attns = []
    for blk in vit.blocks:
        a = blk.attn
        h = blk.norm1(x)
        B, N, _ = h.shape
        q, k, v = a.qkv(h).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        A = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attns.append(A)
        x = x + a.proj((A @ v).transpose(1, 2).reshape(B, N, -1))
        x = x + blk.mlp(blk.norm2(x))
    x = vit.norm(x)
    return (vit.head(x[:, 0]) + vit.head_dist(x[:, 1])) / 2, attns, []


def test_deit_distilled_reads_class_and_distillation_rows():
    torch.manual_seed(0)
    vit = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=4).eval()
    with torch.no_grad():
        for blk in vit.blocks:
            blk.attn.qkv.weight.mul_(8.0)
        vit.head_dist.weight.copy_(torch.randn_like(vit.head_dist.weight))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(distilled_forward(vit, images)[0], vit(images))
    grid = TransMM(vit).attribute(images, target=[2, 0], return_patches=True)
    expected = reference_rows(distilled_forward, vit, images, [2, 0], 2, rows=(0, 1))
    assert_close_relative(grid.reshape(2, -1), expected)
    class_row_only = reference_rows(distilled_forward, vit, images, [2, 0], 2, rows=(0,))
    assert np.abs(class_row_only - expected).max() > 1e-3 * np.abs(expected).max()  # the old readout differed


def test_deit_distilled_training_heads_are_refused():
    vit = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=4)
    vit.set_distilled_training(True)
    with pytest.raises(TypeError, match="got tuple .*call model.eval"):
        TransMM(vit.train()).attribute(torch.randn(1, 3, 32, 32), target=0)


# -- 3. / 9. image sizes: partial patches and dynamic_img_size ---------------------------------------------
def test_partial_patches_dropped_by_the_model_get_zero_and_the_map_has_the_input_size():
    vit = make_vit(img_size=36)  # patch 8: the convolution drops the last 4 rows and columns
    images = torch.randn(2, 3, 36, 36)
    grid = TransMM(vit).attribute(images, target=1, return_patches=True)
    pixels = TransMM(vit).attribute(images, target=1)
    assert grid.shape == (2, 4, 4) and pixels.shape == (2, 1, 36, 36)
    torch.testing.assert_close(pixels[:, 0, :32, :32], grid.repeat_interleave(8, 1).repeat_interleave(8, 2))
    assert (pixels[:, :, 32:, :] == 0).all() and (pixels[:, :, :, 32:] == 0).all()
    assert_close_relative(grid.reshape(2, -1), reference_rows(timm_forward, vit, images, [1, 1], 1))


def test_padded_partial_patches_are_cropped_to_the_input():
    vit = make_vit(dynamic_img_size=True, dynamic_img_pad=True)
    images = torch.randn(1, 3, 36, 28)  # padded to 40 x 32: a 5 x 4 grid
    grid = TransMM(vit).attribute(images, target=2, return_patches=True)
    pixels = TransMM(vit).attribute(images, target=2)
    assert grid.shape == (1, 5, 4) and pixels.shape == (1, 1, 36, 28)
    rows, cols = torch.arange(36) // 8, torch.arange(28) // 8
    torch.testing.assert_close(pixels[0, 0], grid[0][rows[:, None], cols[None, :]])


def test_dynamic_img_size_model_matches_explicit_formula_at_another_size():
    vit = make_vit(dynamic_img_size=True)
    images = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(timm_forward(vit, images[:1])[0], vit(images[:1]))
    grid = TransMM(vit).attribute(images, target=[0, 4], return_patches=True)
    assert grid.shape == (2, 6, 5)
    assert_close_relative(grid.reshape(2, -1), reference_rows(timm_forward, vit, images, [0, 4], 1))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        TransMM(vit).attribute(torch.randn(1, 3, 36, 40))


# -- 6. / 7. Captum's metrics and NoiseTunnel --------------------------------------------------------------
def test_sensitivity_max_accepts_tuples_and_matches_explicit_computation(vit):
    x = torch.randn(2, 3, 32, 32)
    delta = 0.05 * torch.randn(1, 3, 32, 32)
    method = TransMM(vit)
    (as_tuple,) = method.attribute((x,), target=1)
    torch.testing.assert_close(as_tuple, method.attribute(x, target=1))
    sens = sensitivity_max(method.attribute, x, perturb_func=lambda inp: inp + delta, n_perturb_samples=1,
                           target=1)
    base, moved = method.attribute(x, target=1), method.attribute(x + delta, target=1)
    expected = (moved - base).flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1)
    torch.testing.assert_close(sens, expected)
    assert (expected > 0).all()


def test_infidelity_on_the_input_shaped_map_matches_explicit_computation(vit):
    x = torch.randn(2, 3, 32, 32)
    noise = 0.1 * torch.randn(1, 3, 32, 32)
    attr = TransMM(vit).attribute(x, target=2, expand_channels=True)
    assert attr.shape == x.shape
    torch.testing.assert_close(attr, TransMM(vit).attribute(x, target=2).expand(-1, 3, -1, -1))
    value = infidelity(vit, lambda inp: (noise.expand_as(inp), inp - noise), x, attr, target=2,
                       n_perturb_samples=1, normalize=False)
    with torch.no_grad():
        drop = vit(x)[:, 2] - vit(x - noise)[:, 2]
    expected = ((noise * attr).flatten(1).sum(dim=1) - drop) ** 2
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="exclude each other"):
        TransMM(vit).attribute(x, return_patches=True, expand_channels=True)


def test_noise_tunnel_with_tuple_inputs(vit):
    x = torch.randn(2, 3, 32, 32)
    (smooth,) = NoiseTunnel(TransMM(vit)).attribute((x,), nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=3)
    torch.testing.assert_close(smooth, TransMM(vit).attribute(x, target=3))
    with pytest.raises(TypeError, match="exactly one"):
        TransMM(vit).attribute((x, x))


# -- 8. targets as Captum and Quantus give them ------------------------------------------------------------
def test_targets_follow_captum_meaning_and_accept_numpy(vit):
    x = torch.randn(2, 3, 32, 32)
    method = TransMM(vit)
    per_sample = method.attribute(x, target=[3, 1])
    torch.testing.assert_close(method.attribute(x, target=np.array([3, 1])), per_sample)
    torch.testing.assert_close(method.attribute(x, target=[np.int64(3), np.int32(1)]), per_sample)
    torch.testing.assert_close(method.attribute(x, target=[(3,), (1,)]), per_sample)
    all_three = method.attribute(x, target=[3, 3])
    torch.testing.assert_close(method.attribute(x, target=(3,)), all_three)  # Captum: one class for all samples
    torch.testing.assert_close(method.attribute(x, target=np.int64(3)), all_three)
    with pytest.raises(ValueError, match="a tuple indexes one output entry"):
        method.attribute(x, target=(3, 1))
    with pytest.raises(TypeError, match="integer"):
        method.attribute(x, target=np.array([0.0, 1.0]))


# -- 10. unsupported models and states: clear errors ------------------------------------------------------
@pytest.mark.parametrize("block_fn", [ParallelThingsBlock, ParallelScalingBlock])
def test_parallel_blocks_are_refused_by_name(block_fn):
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3,
                            block_fn=block_fn)
    with pytest.raises(TypeError, match=f"block 0 \\({block_fn.__name__}\\)"):
        TransMM(vit)


def test_hybrid_cnn_vit_is_refused_by_name():
    import timm

    with pytest.raises(TypeError, match="HybridEmbed, not timm's PatchEmbed"):
        TransMM(timm.create_model("vit_small_r26_s32_224", pretrained=False, img_size=64, num_classes=3))


def test_active_patch_dropout_is_refused():
    vit = make_vit(patch_drop_rate=0.5).train()
    with pytest.raises(ValueError, match="patch dropout is active.*patch_drop_rate=0.5"):
        TransMM(vit).attribute(torch.randn(1, 3, 32, 32), target=0)
    assert TransMM(vit.eval()).attribute(torch.randn(1, 3, 32, 32), target=0).shape == (1, 1, 32, 32)


def _open_clip_tower(**kwargs):
    from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer

    cfg = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=8)
    return OpenClipVisionTransformer(**{**cfg, **kwargs})


def test_open_clip_patch_dropout_and_attentional_pooler_are_refused():
    tower = _open_clip_tower(patch_dropout=0.5).train()
    with pytest.raises(ValueError, match="patch dropout is active.*open_clip patch_dropout=0.5"):
        TransMM(tower).attribute(torch.randn(1, 3, 32, 32), target=0)
    with pytest.raises(ValueError, match="attentional pooler.*CoCa"):
        TransMM(_open_clip_tower(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2))


def test_full_clip_model_names_the_wrapper():
    import open_clip

    clip = open_clip.CLIP(embed_dim=8, vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
                          text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1})
    with pytest.raises(TypeError, match="CLIPZeroShotClassifier"):
        TransMM(clip)
