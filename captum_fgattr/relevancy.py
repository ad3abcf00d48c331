"""Relevancy propagation through attention maps (pure tensor functions, no modules or hooks)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def gradient_weighted_attention(attn: Tensor, grad: Tensor) -> Tensor:
    """cam = mean over heads of relu(∇A ⊙ A).

    Args:
        attn: (B, H, N, N) post-softmax attention probabilities.
        grad: (B, H, N, N) gradient of the target logit with respect to ``attn``.

    Returns:
        (B, N, N) gradient-weighted attention map.
    """
    return (grad * attn).clamp(min=0).mean(dim=1)


def transmm_relevancy(cams: Sequence[Tensor]) -> Tensor:
    """Token-to-token relevancy: R_0 = I, R_ℓ = R_{ℓ-1} + cam_ℓ · R_{ℓ-1} (Chefer et al.).

    Args:
        cams: per block, in forward order, (B, N, N) maps.

    Returns:
        R_L (B, N, N).
    """
    B, N, _ = cams[0].shape
    R = torch.eye(N, dtype=cams[0].dtype, device=cams[0].device).expand(B, N, N)
    for cam in cams:
        R = R + cam @ R
    return R


def attention_rollout(attns: Sequence[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema): R = Π_ℓ normalise(0.5·I + 0.5·mean_h A_ℓ), rows summing to 1.

    Args:
        attns: per block, in forward order, (B, H, N, N) attention probabilities.

    Returns:
        (B, N, N) rolled-out attention.
    """
    B, _, N, _ = attns[0].shape
    eye = torch.eye(N, dtype=attns[0].dtype, device=attns[0].device)
    R = eye.expand(B, N, N)
    for attn in attns:
        A = 0.5 * attn.mean(dim=1) + 0.5 * eye
        R = (A / A.sum(dim=-1, keepdim=True)) @ R
    return R


def class_token_row(R: Tensor, num_prefix_tokens: int, rows: Sequence[int] = (0,)) -> Tensor:
    """(B, N, N) relevancy -> (B, P) relevance of the patch tokens for the class token (row 0), or the
    mean of several readout ``rows`` (DeiT distilled: class and distillation token, whose heads the
    model averages)."""
    return R[:, list(rows), num_prefix_tokens:].mean(dim=1)
