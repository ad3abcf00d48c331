"""SparseAutoencoder encode/decode against docs/method.md §3 written out explicitly, per activation and norm."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from captum_fgattr import SparseAutoencoder
from captum_fgattr.sae import SAEConfig

D, N, K = 16, 48, 5


def reference_norm(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (norm(x), shift, scale) computed token by token from docs/method.md, in float64."""
    x = x.double()
    flat = x.reshape(-1, x.shape[-1])
    out, shifts, scales = [], [], []
    d = flat.shape[1]
    for row in flat:
        if mode == "none":
            shift, scale = 0.0, 1.0
        elif mode == "layer_norm":
            mean = sum(row.tolist()) / d
            var = sum((v - mean) ** 2 for v in row.tolist()) / (d - 1)  # unbiased
            shift, scale = mean, math.sqrt(var) + 1e-5
        else:  # constant_norm_rescale: x * sqrt(d) / ||x||
            shift, scale = 0.0, math.sqrt(sum(v * v for v in row.tolist())) / math.sqrt(d)
        out.append((row - shift) / scale)
        shifts.append(shift)
        scales.append(scale)
    shape = x.shape[:-1] + (1,)
    return (
        torch.stack(out).reshape(x.shape),
        torch.tensor(shifts, dtype=torch.float64).reshape(shape),
        torch.tensor(scales, dtype=torch.float64).reshape(shape),
    )


def reference_act(pre: torch.Tensor, activation: str, k: int | None) -> torch.Tensor:
    flat = pre.reshape(-1, pre.shape[-1])
    out = torch.zeros_like(flat)
    for i, row in enumerate(flat):
        if activation == "relu":
            out[i] = row.clamp_min(0)
        else:
            order = sorted(range(row.numel()), key=lambda j: -float(row[j]))[:k]
            for j in order:
                out[i, j] = max(float(row[j]), 0.0)
    return out.reshape(pre.shape)


def random_sae(activation: str, normalize: str, seed: int = 0) -> SparseAutoencoder:
    k = K if activation == "topk" else None
    sae = SparseAutoencoder(SAEConfig(d_in=D, n_features=N, activation=activation, k=k, normalize=normalize), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # generic (not transposed, non-zero bias) parameters so every term matters
        sae.W_enc.copy_(torch.randn(D, N, generator=g) / math.sqrt(D))
        sae.W_dec.copy_(torch.randn(N, D, generator=g))
        sae.b_enc.copy_(torch.randn(N, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
    return sae


@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale"])
@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_encode_decode_match_formula(activation: str, normalize: str) -> None:
    sae = random_sae(activation, normalize)
    x = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(5)) * 3 + 0.5
    xn, shift, scale = reference_norm(x, normalize)
    W_enc, b_enc, W_dec, b_dec = (p.detach().double() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    pre = (xn - b_dec) @ W_enc + b_enc
    f_ref = reference_act(pre, activation, sae.k)
    x_hat_ref = (f_ref @ W_dec + b_dec) * scale + shift

    f = sae.encode(x)
    assert f.shape == (3, 7, N)
    assert_close(f.double(), f_ref, rtol=1e-4, atol=1e-5)
    assert_close(sae(x).double(), x_hat_ref, rtol=1e-4, atol=1e-4)
    assert_close(sae.decode(f, x=x).double(), x_hat_ref, rtol=1e-4, atol=1e-4)
    _, stats = sae.normalize(x)
    assert_close(sae.decode(f, stats=stats).double(), x_hat_ref, rtol=1e-4, atol=1e-4)
    x_hat2, f2 = sae.forward_with_codes(x)
    assert_close(f2, f)
    assert_close(x_hat2.double(), x_hat_ref, rtol=1e-4, atol=1e-4)
    if normalize == "none":
        assert_close(sae.decode(f).double(), x_hat_ref, rtol=1e-4, atol=1e-4)
    else:
        with pytest.raises(ValueError, match="stats"):
            sae.decode(f)


def test_topk_exactly_k_nonzeros_when_preactivations_positive() -> None:
    sae = random_sae("topk", "layer_norm")
    with torch.no_grad():
        sae.b_enc.add_(100.0)  # every pre-activation positive: ReLU removes nothing
    f = sae.encode(torch.randn(4, 11, D))
    assert ((f != 0).sum(-1) == K).all()


def test_topk_never_more_than_k_and_relu_drops_negative() -> None:
    sae = random_sae("topk", "none")
    with torch.no_grad():
        sae.b_enc.sub_(100.0)  # every pre-activation negative: TopK keeps k, ReLU zeroes them
    assert (sae.encode(torch.randn(5, D)) == 0).all()
    sae = random_sae("topk", "none", seed=3)
    f = sae.encode(torch.randn(50, D))
    assert ((f != 0).sum(-1) <= K).all() and (f >= 0).all()


def test_default_init_decoder_unit_rows_encoder_transpose_and_seeded() -> None:
    a = SparseAutoencoder(SAEConfig(d_in=D, n_features=N, k=K), seed=7)
    b = SparseAutoencoder(SAEConfig(d_in=D, n_features=N, k=K), seed=7)
    c = SparseAutoencoder(SAEConfig(d_in=D, n_features=N, k=K), seed=8)
    assert_close(a.W_dec.norm(dim=1), torch.ones(N))
    assert_close(a.W_enc, a.W_dec.T)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
    assert a.W_enc.shape == (D, N) and a.b_enc.shape == (N,) and a.W_dec.shape == (N, D) and a.b_dec.shape == (D,)
    assert a.d_in == D and a.n_features == N and a.d_sae == N


def test_dtype_and_device_handling() -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=D, n_features=N, k=K), seed=0, dtype=torch.float64)
    x = torch.randn(2, D, dtype=torch.float32)
    f = sae.encode(x)
    assert f.dtype == torch.float64 and f.device == sae.device
    assert_close(f, sae.encode(x.double()))
    sae32 = sae.to(torch.float32)
    assert sae32.encode(x).dtype == torch.float32
    with pytest.raises(TypeError, match="floating-point"):
        sae.encode(torch.ones(2, D, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_in=D, n_features=N, activation="gelu"), "activation='gelu'"),
        (dict(d_in=D, n_features=N, normalize="batch_norm"), "normalize='batch_norm'"),
        (dict(d_in=D, n_features=N, k=N + 1), "k=49 > n_features=48"),
        (dict(d_in=D, n_features=N, k=0), "k=0"),
        (dict(d_in=0, n_features=N), "d_in=0"),
        (dict(d_in=D, n_features=-3), "n_features=-3"),
        (dict(d_in=D, n_features=N, activation="relu", k=4), "k=4"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SAEConfig(**kwargs)


def test_width_errors() -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=D, n_features=N, k=K))
    with pytest.raises(ValueError, match=r"layer 3.*d_in=16.*width 768"):
        sae.check_width(768, "layer 3")
    sae.check_width(D, "layer 3")  # matching width: no error
    with pytest.raises(ValueError, match=r"\(2, 5\).*d_in=16"):
        sae.encode(torch.randn(2, 5))
