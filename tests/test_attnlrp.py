"""AttnLRP: relevance conservation on models every layer of which the rules cover (timm ViT, open_clip
CLIP classifier), equality with lxt's own patched torchvision ViT, scoped patching (model and classes
unchanged after a call, also after an exception), patch pooling, the benchmark registration, and the error
naming the ``lrp`` extra when lxt is missing."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from captum_fgattr.lrp import AttnLRP, attnlrp_input_relevance, attnlrp_rules, lxt_available
from tests.conftest import make_vit

HAVE_LXT, WHY = lxt_available()
needs_lxt = pytest.mark.skipif(not HAVE_LXT, reason=f"lxt's efficient mode is not importable: {WHY}")


def _bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias and additive constant token, so that nothing but the input carries relevance."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in ("bias", "in_proj_bias", "cls_token", "pos_embed", "class_embedding",
                                           "positional_embedding"):
                p.zero_()
    return model


def _plain_gradient_times_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return x * grad


@needs_lxt
def test_conservation_timm_vit():
    vit = _bias_free(make_vit(depth=2, num_heads=2)).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 3, 1])
    logits = vit(x).gather(1, target[:, None]).squeeze(1)
    relevance = attnlrp_input_relevance(vit, x, target)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-7, atol=1e-9)
    plain = _plain_gradient_times_input(vit, x, target).sum(dim=(1, 2, 3))  # softmax, GELU, LayerNorm: not conserved
    assert (plain - logits).abs().max() > 1e-3 * logits.abs().max()


@needs_lxt
def test_conservation_open_clip_classifier():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from captum_fgattr import CLIPZeroShotClassifier

    torch.manual_seed(0)
    clip = CLIP(16, CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
                CLIPTextCfg(context_length=6, vocab_size=50, width=16, heads=2, layers=1))
    tokenizer = lambda texts: torch.arange(len(texts) * 6).reshape(len(texts), 6) % 50  # noqa: E731
    clf = _bias_free(CLIPZeroShotClassifier(clip, ["a", "b", "c"], tokenizer).eval())  # float32: it casts to it
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([2, 0])
    logits = clf(x).gather(1, target[:, None]).squeeze(1)
    relevance = attnlrp_input_relevance(clf, x, target)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-4, atol=1e-5)
    plain = _plain_gradient_times_input(clf, x, target).sum(dim=(1, 2, 3))
    assert (plain - logits).abs().max() > 1e-3 * logits.abs().max()


@needs_lxt
def test_equals_lxt_patched_torchvision_vit():
    import lxt.efficient
    from torchvision.models import VisionTransformer, vision_transformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=3).eval()
    with torch.no_grad():
        vit.heads.head.weight.normal_()  # torchvision zero-initialises the head: every relevance would be 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 1])
    ours = attnlrp_input_relevance(vit, x, target)
    plain = _plain_gradient_times_input(vit, x, target)
    classes = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
    saved = {cls: dict(cls.__dict__) for cls in classes}
    try:
        lxt.efficient.monkey_patch(vision_transformer)  # lxt's own map for torchvision's ViT, patched globally
        reference = _plain_gradient_times_input(vit, x, target)
    finally:
        for cls in classes:
            for name in ("forward", "original_forward"):
                if name in saved[cls]:
                    setattr(cls, name, saved[cls][name])
                elif name in cls.__dict__:
                    delattr(cls, name)
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-5, atol=1e-7)
    assert ours.abs().amax() > 1e-3 and not torch.allclose(ours, plain, rtol=1e-2, atol=1e-4)  # the rules matter


def _state(model: nn.Module) -> dict:
    """Everything the patching could change: each module's attributes (by identity), its hooks, and the classes."""
    modules = {name: ({k: id(v) for k, v in m.__dict__.items() if not isinstance(v, dict)},
                      {k: dict(v) for k, v in m.__dict__.items() if isinstance(v, dict) and "hooks" in k})
               for name, m in model.named_modules()}
    classes = {cls: dict(cls.__dict__) for cls in {type(m) for m in model.modules()} | {nn.LayerNorm, nn.GELU}}
    return {"modules": modules, "classes": classes}


@needs_lxt
def test_patching_is_scoped_also_after_an_exception():
    vit = make_vit(depth=2, num_heads=2)
    fused = [blk.attn.fused_attn for blk in vit.blocks]
    x = torch.randn(2, 3, 32, 32)
    before, out = _state(vit), vit(x)
    method = AttnLRP(vit)
    method.attribute(x, target=1)
    assert _state(vit) == before
    with pytest.raises(ValueError, match="target"):
        method.attribute(x, target=[0, 99])  # refused inside the patched scope
    assert _state(vit) == before
    with pytest.raises(RuntimeError, match="inside"), attnlrp_rules(vit):
        assert "forward" in vit.blocks[0].norm1.__dict__ and not any(blk.attn.fused_attn for blk in vit.blocks)
        raise RuntimeError("inside")
    assert _state(vit) == before and [blk.attn.fused_attn for blk in vit.blocks] == fused
    torch.testing.assert_close(vit(x), out, rtol=0, atol=0)


@needs_lxt
def test_patch_pooling_and_registration():
    from captum_fgattr.bench.methods import MethodSpec, build_method

    vit = make_vit(depth=2, num_heads=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([4, 1])
    pixels = attnlrp_input_relevance(vit, x, target)  # (2, 3, 32, 32), 8x8 patches on a 4x4 grid
    expected = torch.stack([torch.stack([pixels[b, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8].sum() for i in range(4)
                                         for j in range(4)]) for b in range(2)])
    torch.testing.assert_close(AttnLRP(vit).attribute(x, target=target, return_patches=True).flatten(1), expected)
    torch.testing.assert_close(build_method(MethodSpec("attnlrp"), vit)(x, target, torch.arange(2)), expected)


def test_missing_lxt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lxt.efficient", None)  # as if lxt were not installed
    with pytest.raises(ImportError, match=r"captum-fgattr\[lrp\]"):
        AttnLRP(make_vit(depth=1, num_heads=2))
    assert lxt_available()[0] is False


def _run_study(tmp_path, baselines: list[str]):
    """``fgattr run`` on a tiny random timm ViT and generated HyperKvasir-layout images; returns (run folder, test keys)."""
    import json
    import sqlite3

    from captum_fgattr.bench.cli.main import main
    from captum_fgattr.sae import save_sae
    from tests.test_bench_data_models import make_kvasir
    from tests.test_fg_transmm import make_sae

    make_kvasir(tmp_path / "hyper-kvasir", counts=(10,) * 6)
    save_sae(make_sae(64, seed=1), tmp_path / "saes" / "layer_1")
    config = {
        "model": {"name": "test_vit", "num_classes": 6, "img_size": 64},
        "data": {"kind": "hyperkvasir", "root": str(tmp_path / "hyper-kvasir"), "seed": 7},
        "saes": str(tmp_path / "saes"),
        "protocol": {"layers": [1], "variants": ["combined"], "multi_layers": [], "baselines": baselines,
                     "controls": [], "val_images": 2, "test_images": 2},
        "evaluation": {"batch_size": 4, "progress": False, "gallery": 1,
                       "metrics": {"saco_groups": 4, "fc_runs": 4, "fc_subset_size": 4}},
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "run.json"), "--run-dir", str(run)]) == 0
    with sqlite3.connect(run / "results.sqlite") as conn:
        keys = {json.loads(k)["name"] for (k,) in conn.execute("SELECT DISTINCT method_key FROM results WHERE split = 'test'")}
    return run, keys


@needs_lxt
def test_study_runs_the_attnlrp_baseline(tmp_path, one_torch_thread):
    run, keys = _run_study(tmp_path, ["random", "attnlrp"])
    assert keys == {"transmm", "fg", "random", "attnlrp"}
    table = (run / "report" / "test.md").read_text()
    assert "| attnlrp |" in table and "Skipped baseline" not in table


def test_study_skips_attnlrp_without_lxt_and_says_so(tmp_path, monkeypatch, capsys, one_torch_thread):
    monkeypatch.setitem(sys.modules, "lxt.efficient", None)  # as if lxt were not installed
    run, keys = _run_study(tmp_path, ["random", "attnlrp"])
    assert keys == {"transmm", "fg", "random"}
    assert "skipping the optional baseline 'attnlrp'" in capsys.readouterr().err
    assert "Skipped baseline attnlrp" in (run / "report" / "test.md").read_text()
