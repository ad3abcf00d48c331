"""Shared tiny models (random weights, no downloads)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer


def write_split_folders(root: Path) -> Path:
    """``root/{val,test}/{a,b}/0.png``: one 32 × 32 RGB image per class and split (class b brighter); ``root``."""
    for split in ("val", "test"):
        for c, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (200 * c, 30, 60)).save(root / split / name / "0.png")
    return root


def make_vit(**overrides) -> VisionTransformer:
    """Tiny timm ViT with random weights scaled up so attention and gradients are far from uniform."""
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
    cfg.update(overrides)
    torch.manual_seed(cfg.pop("seed", 0))
    vit = VisionTransformer(**cfg)
    with torch.no_grad():
        for blk in vit.blocks:
            blk.attn.qkv.weight.mul_(8.0)
    return vit.eval()


@pytest.fixture
def vit() -> VisionTransformer:
    return make_vit()


@pytest.fixture
def vit_registers() -> VisionTransformer:
    """Non-square input, register tokens, qk-norm, biases: the other shape the tests cover."""
    return make_vit(img_size=(24, 40), patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=4,
                    reg_tokens=2, qkv_bias=True, qk_norm=True, seed=1)


@pytest.fixture(scope="session")
def clip_classifier():
    """open_clip ViT-B-32 with random weights as a 3-class zero-shot classifier."""
    import open_clip

    from captum_fgattr import CLIPZeroShotClassifier

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    clf = CLIPZeroShotClassifier(clip, ["cat", "dog", "lung"], open_clip.get_tokenizer("ViT-B-32"))
    return clf.eval()


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """One model/SAE/data cache per test session, shared by the tests that run the quick demo plan."""
    return tmp_path_factory.mktemp("fgattr-cache")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: tiny matrices gain nothing from two, and a busy 2-core box oversubscribes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
