"""Independent, explicit per-image computations of the formulas in docs/method.md, written without the
library's hooks or helpers: manual forwards that expose attention, and relevancy in float64 loops."""
from __future__ import annotations

import numpy as np
import torch


def timm_forward(vit, image):
    """Manual forward of a timm ViT on one image (1, C, H, W) -> (logits (1, C'), attns, resids)."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(image)))
    attns, resids = [], []
    for blk in vit.blocks:
        a = blk.attn
        h = blk.norm1(x)
        B, N, _ = h.shape
        q, k, v = a.qkv(h).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(q), a.k_norm(k)
        A = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attns.append(A)
        out = a.proj(a.norm((A @ v).transpose(1, 2).reshape(B, N, -1)))
        x = x + blk.ls1(out)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        resids.append(x)
    x = vit.norm(x)
    return vit.head(vit.fc_norm(x[:, 0])), attns, resids


def clip_forward(clf, image):
    """Manual forward of a CLIPZeroShotClassifier on one image -> (logits, attns, resids)."""
    v = clf.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(1, 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    attns, resids = [], []
    for blk in v.transformer.resblocks:
        mha = blk.attn
        h = blk.ln_1(x)
        B, N, D = h.shape
        hd = D // mha.num_heads
        qkv = h @ mha.in_proj_weight.T + mha.in_proj_bias
        q, k, val = (t.reshape(B, N, mha.num_heads, hd).transpose(1, 2) for t in qkv.split(D, dim=-1))
        A = (q @ k.transpose(-2, -1) / hd ** 0.5).softmax(dim=-1)
        attns.append(A)
        x = x + blk.ls_1(mha.out_proj((A @ val).transpose(1, 2).reshape(B, N, D)))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        resids.append(x)
    pooled = v.ln_post(x)[:, 0] @ v.proj
    feats = pooled / pooled.norm(dim=-1, keepdim=True)
    return clf.logit_scale * feats @ clf.class_embeddings.T, attns, resids


def cam_matrix(attn, grad):
    """One image, one block: (H, N, N) numpy arrays -> (N, N) head mean of relu(grad * attn), loops."""
    H, N, _ = attn.shape
    cam = np.zeros((N, N))
    for h in range(H):
        cam += np.maximum(grad[h] * attn[h], 0.0)
    return cam / H


def transmm_from_cams(cams, num_prefix):
    """R = I; R <- R + cam @ R; return the class-token row over patch tokens (float64)."""
    N = cams[0].shape[0]
    R = np.eye(N)
    for cam in cams:
        R = R + cam @ R
    return R[0, num_prefix:]


def attention_and_grads(forward, model, image, target, layers=()):
    """Manual forward + autograd on one image: numpy attns, attn grads, resids and resid grads."""
    image = image.clone().requires_grad_(True)
    logits, attns, resids = forward(model, image)
    picked = [resids[i] for i in layers]
    grads = torch.autograd.grad(logits[0, target], attns + picked)
    to_np = lambda t: t[0].detach().double().numpy()  # noqa: E731
    return (
        [to_np(a) for a in attns],
        [to_np(g) for g in grads[: len(attns)]],
        {i: to_np(r) for i, r in zip(layers, picked)},
        {i: to_np(g) for i, g in zip(layers, grads[len(attns):])},
    )


def assert_close_relative(actual, expected, tol=1e-5):
    """max |actual − expected| ≤ tol · max |expected|."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(actual - expected).max() / scale
    assert err <= tol, f"relative max error {err:.3g} > {tol}"


def token_normalisation(normalize: str, x: np.ndarray) -> tuple[float, float, np.ndarray]:
    """One token x (D,) float64 -> (shift, scale, norm(x)): norm(x) as the SAE encodes it, (shift, scale) the
    statistics its reconstruction is denormalised with (x̂ = û·scale + shift)."""
    if normalize == "none":
        return 0.0, 1.0, x
    if normalize == "layer_norm":
        mean, std = x.mean(), x.std(ddof=1)
        return mean, std + 1e-5, (x - mean) / (std + 1e-5)
    if normalize == "layer_norm_saelens":  # divided by std + eps, restored with std
        mean, std = x.mean(), x.std(ddof=1)
        return mean, std, (x - mean) / (std + 1e-5)
    assert normalize == "constant_norm_rescale"
    scale = np.linalg.norm(x) / np.sqrt(len(x))
    return 0.0, scale, x / scale


def sae_normalize(sae, x):
    """Explicit SAE input normalisation of one token x (d,) numpy -> norm(x) (d,) float64."""
    return token_normalisation(sae.config.normalize, x)[2]


def sae_scale(sae, x):
    """The per-token scale the SAE denormalises x's reconstruction with (x̂ = û·scale + shift); 1 without normalisation."""
    return token_normalisation(sae.config.normalize, x)[1]


def sae_encode(sae, x):
    """Explicit SAE encoder on one token x (d,) numpy -> f (K,) float64."""
    return sae_encode_normalised(sae, sae_normalize(sae, x))


def sae_encode_normalised(sae, u):
    """Explicit SAE encoder on one normalised token u = norm(x) (d,) numpy -> f (K,) float64."""
    W_enc, b_enc, b_dec = (p.detach().double().numpy() for p in (sae.W_enc, sae.b_enc, sae.b_dec))
    pre = (u - b_dec) @ W_enc + b_enc
    if sae.config.activation == "relu":
        return np.maximum(pre, 0.0)
    f = np.zeros_like(pre)
    keep = np.argsort(-pre)[: sae.config.k]
    f[keep] = np.maximum(pre[keep], 0.0)
    return f


def lower_median(values):
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def token_score(variant, f, g, x, decoder, sae):
    """One token's score, written out: f (K,) codes, g (D,) gradient, x (D,) resid_post, decoder (K, D).
    The scores that pair the gradient with SAE quantities use it in the SAE's normalised space, g̃ = scale·g."""
    K = decoder.shape[0]
    b_dec = sae.b_dec.detach().double().numpy()
    if variant not in ("grad_input", "token_norm"):
        g = sae_scale(sae, x) * g
    if variant == "combined":
        return sum(f[k] * float(g @ decoder[k]) for k in np.flatnonzero(f))
    if variant == "activation":
        return float(f.sum())
    if variant == "gradient":
        return sum(abs(float(g @ decoder[k])) for k in range(K))
    if variant == "gradient_signed":
        return sum(float(g @ decoder[k]) for k in range(K))
    if variant == "grad_input":
        return sum(g[i] * x[i] for i in range(len(x)))
    if variant == "grad_input_centered":
        centered = sae_normalize(sae, x) - b_dec
        return sum(g[i] * centered[i] for i in range(len(x)))
    if variant == "bias_projection":
        return -sum(g[i] * b_dec[i] for i in range(len(x)))
    if variant == "token_norm":
        return float(np.sqrt(sum(v * v for v in x)))
    raise AssertionError(variant)


def gates_from_scores(scores, kappa, c_max):
    """Robust z (lower median, 1.4826·MAD + 1e-8) then exp(ln c_max · tanh(κ z))."""
    med = lower_median(scores)
    mad = 1.4826 * lower_median([abs(s - med) for s in scores])
    return np.array([np.exp(np.log(c_max) * np.tanh(kappa * (s - med) / (mad + 1e-8))) for s in scores])


def feature_gradient_gates(f_rows, g_rows, decoder, variant, kappa, c_max, x_rows, sae):
    """Per-token scores and gates for one image: f_rows (T, K), g_rows and x_rows (T, D), decoder (K, D)."""
    scores = [token_score(variant, f, g, x, decoder, sae) for f, g, x in zip(f_rows, g_rows, x_rows)]
    return np.array(scores), gates_from_scores(scores, kappa, c_max)
