"""Activation collection: patch tokens only, streamed, cached on disk; hooks removed afterwards."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from captum_fgattr.sae import ActivationCache, ActivationStream, SAEConfig, TrainConfig, iter_patch_activations, train_sae


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_block_outputs(vit, images: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every timm block, computed by running the blocks one by one (B, N, D)."""
    with torch.no_grad():
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        outs = []
        for blk in vit.blocks:
            x = blk(x)
            outs.append(x)
    return outs


def no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def batches(images: torch.Tensor, size: int):
    return [(images[i : i + size], torch.zeros(len(images[i : i + size]), dtype=torch.long)) for i in range(0, len(images), size)]


@pytest.mark.parametrize("fixture", ["vit", "vit_registers"])
def test_patch_tokens_only_match_block_outputs(request, fixture: str) -> None:
    vit = request.getfixturevalue(fixture)
    H, W = vit.patch_embed.img_size
    images = torch.randn(5, 3, H, W)
    prefix = vit.num_prefix_tokens  # class token (+ registers)
    ref = reference_block_outputs(vit, images)
    layers = [0, len(vit.blocks) - 1]
    got = list(iter_patch_activations(vit, batches(images, 2), layers, progress=False))
    assert len(got) == 3  # one yield per DataLoader batch
    for layer in layers:
        tokens = torch.cat([g[layer] for g in got])
        expected = ref[layer][:, prefix:].reshape(-1, ref[layer].shape[-1])
        assert tokens.shape == (5 * vit.patch_embed.num_patches, vit.embed_dim)
        assert_close(tokens, expected)
    assert no_hooks(vit)
    with pytest.raises(ValueError, match="out of range"):
        next(iter_patch_activations(vit, batches(images, 2), [len(vit.blocks)], progress=False))
    assert no_hooks(vit)


def test_cache_and_stream_agree_and_train(tmp_path, vit) -> None:
    images = torch.randn(6, 3, 32, 32)
    cache = ActivationCache.build(vit, batches(images, 4), [1, 2], tmp_path / "cache", progress=False)
    ref = reference_block_outputs(vit, images)
    assert cache.num_tokens == 6 * 16 and cache.d_model == 32 and cache.layers == [1, 2]
    assert_close(torch.from_numpy(np.array(cache.array(2))), ref[2][:, 1:].reshape(-1, 32))
    reopened = ActivationCache(tmp_path / "cache")
    assert np.array_equal(reopened.array(1), cache.array(1))
    with pytest.raises(ValueError, match="not in the activation cache"):
        cache.array(0)

    class Loader(list):  # a DataLoader stand-in with a dataset length
        dataset = list(range(6))

    stream = ActivationStream(vit, Loader(batches(images, 4)), 1, progress=False)
    assert stream.num_tokens == 96
    assert_close(torch.cat(list(stream)), torch.from_numpy(np.array(cache.array(1))))
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_tokens=32, warmup_steps=2, shuffle_buffer_tokens=64, progress=False)
    result = train_sae(stream, SAEConfig(d_in=32, n_features=64, k=4), cfg)
    assert result.metrics.num_tokens == 96 and len(result.history) >= 1
    assert no_hooks(vit)
    cache.delete()
    assert not (tmp_path / "cache").exists()


def test_interrupted_or_corrupt_cache_is_refused(tmp_path, vit) -> None:
    images = torch.randn(2, 3, 32, 32)
    ActivationCache.build(vit, batches(images, 2), [0], tmp_path / "c", progress=False)
    (tmp_path / "c" / "layer_0.bin").write_bytes(b"short")
    with pytest.raises(ValueError, match="wrong size"):
        ActivationCache(tmp_path / "c")
    (tmp_path / "c" / "activations.json").write_text('{"layers": [0], "complete": false}')
    with pytest.raises(ValueError, match="incomplete"):
        ActivationCache(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no activation cache"):
        ActivationCache(tmp_path / "missing")
    with pytest.raises(TypeError, match="cannot find the images"):
        next(iter_patch_activations(vit, [["not", "images"]], [0], progress=False))
