"""Feature-gradient gates (DESIGN §5), as pure tensor functions.

Shapes: B images, T patch tokens, D residual width, K SAE features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

VARIANTS = ("combined", "activation", "gradient")
MAD_SCALE = 1.4826
MAD_EPS = 1e-8


def decode_codes(values: Tensor, indices: Tensor, decoder: Tensor) -> Tensor:
    """Dᵀf from sparse codes: (..., m) values at (..., m) feature indices, (K, D) decoder -> (..., D).

    Only the active decoder rows are read (an ``embedding_bag`` sum), never a dense (..., K) tensor.
    """
    m = values.shape[-1]
    flat = F.embedding_bag(indices.reshape(-1, m), decoder, per_sample_weights=values.reshape(-1, m).to(decoder),
                           mode="sum")
    return flat.reshape(*values.shape[:-1], decoder.shape[1])


def feature_gradient_scores(values: Tensor, indices: Tensor, grad: Tensor, decoder: Tensor, variant: str = "combined") -> Tensor:
    """Per-patch scores s_t.

    Args:
        values, indices: (B, T, m) the SAE codes f_t in sparse form (``f_t[indices] = values``, others 0).
        grad: (B, T, D) gradient g_t of the target logit at the gated resid_post.
        decoder: (K, D) decoder directions d_k (rows), as stored (or row-permuted for the control).
        variant: ``combined``: Σ_k f_tk⟨g_t, d_k⟩ = ⟨g_t, Dᵀf_t⟩; ``activation``: Σ_k f_tk;
            ``gradient``: Σ_k |⟨g_t, d_k⟩|.

    Returns:
        (B, T) scores.
    """
    if variant == "combined":
        return (decode_codes(values, indices, decoder) * grad).sum(dim=-1)
    if variant == "activation":
        return values.sum(dim=-1)
    if variant == "gradient":
        return (grad @ decoder.T).abs().sum(dim=-1)
    raise ValueError(f"variant={variant!r}; expected one of {list(VARIANTS)}")


def robust_center_scale(scores: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T) -> (median (B, 1), 1.4826·MAD + 1e-8 (B, 1)) per image; median = lower middle value."""
    med = scores.median(dim=1, keepdim=True).values
    return med, MAD_SCALE * (scores - med).abs().median(dim=1, keepdim=True).values + MAD_EPS


def robust_z(scores: Tensor) -> Tensor:
    """(B, T) -> (B, T): (s − median) / (1.4826·MAD + 1e-8), per image."""
    med, scale = robust_center_scale(scores)
    return (scores - med) / scale


def exp_tanh_gates(z: Tensor, kappa: float, c_max: float) -> Tensor:
    """w = exp(ln(c_max) · tanh(κ·z)) ∈ (1/c_max, c_max), 1 where z = 0."""
    return torch.exp(math.log(c_max) * torch.tanh(kappa * z))


def gate_columns(cam: Tensor, gates: Tensor, num_prefix_tokens: int) -> Tensor:
    """cam · diag(1 for prefix tokens, w_t for patches): scales the columns of every row.

    Args:
        cam: (B, N, N) gradient-weighted attention.
        gates: (B, T) patch gates, T = N − num_prefix_tokens.
    """
    prefix = gates.new_ones(gates.shape[0], num_prefix_tokens)
    return cam * torch.cat([prefix, gates], dim=1)[:, None, :]
