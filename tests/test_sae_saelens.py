"""SAELens-format SAE folders (cfg.json + sae_weights.safetensors): hand-written folders with expected codes
computed here in plain torch, refusals of what is not supported, and (when sae_lens is installed) round trips
against SAELens itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from captum_fgattr.bench.resolve import load_saes
from captum_fgattr.sae import SparseAutoencoder

D, N = 6, 10


def _write(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N, "dtype": "float32", **cfg}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, N, generator=g), "W_dec": torch.randn(N, D, generator=g),
            "b_enc": 0.3 * torch.randn(N, generator=g), "b_dec": 0.3 * torch.randn(D, generator=g)}


X = torch.randn(4, 3, D, generator=torch.Generator().manual_seed(1))


def test_standard_relu_folder(tmp_path):
    w = _weights()
    sae = SparseAutoencoder.load(_write(tmp_path / "s", {"architecture": "standard", "apply_b_dec_to_input": True,
                                                         "metadata": {"hook_name": "blocks.3.hook_resid_post"}}, w))
    f = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    assert sae.config.activation == "relu" and sae.config.hook_layer == 3
    assert 0 < int((f > 0).sum()) < f.numel()
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X), f @ w["W_dec"] + w["b_dec"])


def test_apply_b_dec_to_input_false(tmp_path):
    w = _weights()
    sae = SparseAutoencoder.load(_write(tmp_path / "s", {"architecture": "standard", "apply_b_dec_to_input": False}, w))
    f = torch.relu(X @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(X), f)
    values, index = sae.encode_sparse(X)
    torch.testing.assert_close(torch.zeros_like(f).scatter(-1, index, values), f)


@pytest.mark.parametrize("rescale", [False, True])
def test_topk_folder(tmp_path, rescale):
    w = _weights()
    w["W_dec"][2] *= 5.0  # unequal decoder norms: the rescaling changes which features win
    sae = SparseAutoencoder.load(_write(tmp_path / "t", {"architecture": "topk", "k": 3,
                                                         "rescale_acts_by_decoder_norm": rescale}, w))
    norms = w["W_dec"].norm(dim=-1) if rescale else torch.ones(N)
    pre = ((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    top = pre.topk(3, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    assert sae.config.k == 3 and int((f != 0).sum(-1).max()) <= 3
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X), (f / norms) @ w["W_dec"] + w["b_dec"])


@pytest.mark.parametrize("stored", ["threshold", "log_threshold"])
def test_jumprelu_threshold_respected(tmp_path, stored):
    w = _weights()
    w["W_enc"], w["b_enc"], w["b_dec"] = torch.eye(D, N), torch.zeros(N), torch.zeros(D)  # pre = x padded by zeros
    threshold = torch.full((N,), 0.5)
    w[stored] = threshold.log() if stored == "log_threshold" else threshold
    sae = SparseAutoencoder.load(_write(tmp_path / "j", {"architecture": "jumprelu"}, w))
    x = torch.tensor([[0.2, 0.49, 0.5, 0.51, 2.0, -1.0]])
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.51, 2.0, -0.0] + [0.0] * (N - D)])
    torch.testing.assert_close(sae.encode(x), expected)  # 0.2 and 0.49 pass a ReLU but not the threshold
    values, index = sae.encode_sparse(x)
    torch.testing.assert_close(torch.zeros(1, N).scatter(-1, index, values), expected)
    torch.testing.assert_close(sae(x), expected @ w["W_dec"])


def test_jumprelu_random_and_save_round_trip(tmp_path):
    w = _weights()
    w["threshold"] = torch.rand(N, generator=torch.Generator().manual_seed(2))
    sae = SparseAutoencoder.load(_write(tmp_path / "j", {"architecture": "jumprelu"}, w))
    pre = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f = torch.where(pre > w["threshold"], torch.relu(pre), 0.0)
    assert bool(((pre > 0) & (pre <= w["threshold"])).any())  # some features are cut by the threshold alone
    torch.testing.assert_close(sae.encode(X), f)
    again = SparseAutoencoder.load(sae.save(tmp_path / "ours"))  # this package's format keeps the threshold
    assert again.config.activation == "jumprelu"
    torch.testing.assert_close(again.threshold, w["threshold"])
    torch.testing.assert_close(again.encode(X), f)


def test_layer_norm_is_saelens_formula(tmp_path):
    w = _weights()
    sae = SparseAutoencoder.load(_write(tmp_path / "n", {"architecture": "standard", "normalize_activations": "layer_norm"}, w))
    mu = X.mean(-1, keepdim=True)
    std = (X - mu).std(-1, keepdim=True)
    f = torch.relu(((X - mu) / (std + 1e-5) - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X), (f @ w["W_dec"] + w["b_dec"]) * std + mu, rtol=0, atol=1e-6)


def test_constant_norm_rescale(tmp_path):
    w = _weights()
    sae = SparseAutoencoder.load(_write(tmp_path / "c", {"architecture": "standard",
                                                         "normalize_activations": "constant_norm_rescale"}, w))
    coeff = D**0.5 / X.norm(dim=-1, keepdim=True)
    f = torch.relu((X * coeff - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X), (f @ w["W_dec"] + w["b_dec"]) / coeff)


def test_saelens_folder_through_study_resolution(tmp_path):
    w = _weights()
    _write(tmp_path / "saes" / "layer_2", {"architecture": "standard"}, w)
    saes = load_saes(str(tmp_path / "saes"), [2])
    torch.testing.assert_close(saes[2].encode(X), torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]))


@pytest.mark.parametrize("cfg, weights, message", [
    ({"architecture": "gated"}, {}, "architecture='gated'"),
    ({"architecture": "batchtopk", "k": 2}, {}, "architecture='batchtopk'"),
    ({"architecture": "standard", "normalize_activations": "expected_average_only_in"}, {}, "expected_average_only_in"),
    ({"architecture": "standard", "normalize_activations": "covariance_whitening"}, {}, "covariance_whitening"),
    ({"architecture": "standard", "reshape_activations": "hook_z"}, {}, "hook_z"),
    ({"architecture": "jumprelu"}, {}, "threshold"),
    ({"architecture": "standard", "apply_b_dec_to_input": "yes"}, {}, "apply_b_dec_to_input"),
])
def test_unsupported_refused(tmp_path, cfg, weights, message):
    folder = _write(tmp_path / "u", cfg, {**_weights(), **weights})
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder.load(folder)


# --------------------------------------------------------------------------- against SAELens itself
ARCHITECTURES = [("standard", {}), ("topk", {"k": 3}), ("topk", {"k": 3, "rescale_acts_by_decoder_norm": True}),
                 ("jumprelu", {}), ("standard", {"normalize_activations": "layer_norm", "apply_b_dec_to_input": False}),
                 ("topk", {"k": 4, "normalize_activations": "constant_norm_rescale"})]


@pytest.mark.parametrize("architecture, options", ARCHITECTURES)
def test_round_trip_against_sae_lens(tmp_path, architecture, options):
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens is not installed (pip install captum-fgattr[saelens])")
    classes = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig), "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
               "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig)}
    cls, cfg_cls = classes[architecture]
    torch.manual_seed(0)
    reference = cls(cfg_cls(d_in=16, d_sae=48, **options))
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(0.5 * torch.randn_like(p))
        if architecture == "jumprelu":
            reference.threshold.copy_(0.5 * torch.rand(48))
    reference.save_model(tmp_path / "sae")
    ours = SparseAutoencoder.load(tmp_path / "sae")
    x = 3.0 * torch.randn(7, 5, 16)
    with torch.no_grad():
        f = reference.encode(x)
        assert 0 < int((f > 0).sum()) < f.numel()
        torch.testing.assert_close(ours.encode(x), f, rtol=1e-5, atol=1e-5)
        values, index = ours.encode_sparse(x)
        torch.testing.assert_close(torch.zeros_like(f).scatter(-1, index, values), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(f, x=x), reference.decode(reference.encode(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
