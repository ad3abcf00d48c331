"""open_clip ``VisionTransformer`` towers (ViT-B-32 and friends).

Their blocks call ``nn.MultiheadAttention`` with ``need_weights=False`` and the weights it could
return carry no gradient, so while attention is exposed the module's forward is replaced by an
explicit computation from its own ``in_proj_weight`` / ``in_proj_bias`` / ``out_proj`` (same outputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from captum_fgattr.adapters.base import AttentionCallback, Undo, ViTAdapter


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def explicit_self_attention(mha: nn.MultiheadAttention, x: Tensor, attn_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Self-attention of ``mha`` on batch-first ``x`` (B, N, D) -> (output (B, N, D), probs (B, h, N, N))."""
    B, N, D = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)
    scores = (q * (D // h) ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = scores.softmax(dim=-1)
    out = F.dropout(probs, mha.dropout, training=mha.training) @ v
    return mha.out_proj(out.transpose(1, 2).reshape(B, N, D)), probs


class OpenClipViTAdapter(ViTAdapter):
    """Adapter for ``open_clip.transformer.VisionTransformer`` with class-token pooling."""

    def __init__(self, vit: VisionTransformer, model: nn.Module | None = None) -> None:
        if vit.attn_pool is not None:
            raise ValueError(
                "this open_clip tower pools its tokens with an attentional pooler (attn_pool, as in CoCa), so "
                "the image embedding is not the class token's and TransMM's class-token readout does not "
                "apply; supported: towers without attentional pooling and pool_type='tok' (e.g. ViT-B-32)"
            )
        if vit.pool_type != "tok":
            raise ValueError(
                "TransMM reads relevance from the class-token row, so the open_clip tower must pool "
                f"the class token (pool_type='tok'); got pool_type={vit.pool_type!r}"
            )
        for i, blk in enumerate(vit.transformer.resblocks):
            if not isinstance(blk, ResidualAttentionBlock) or not isinstance(blk.attn, nn.MultiheadAttention):
                raise TypeError(
                    f"block {i} is {type(blk).__name__}; supported: open_clip ResidualAttentionBlock "
                    "with nn.MultiheadAttention"
                )
        self.model = vit if model is None else model
        self.vit = vit
        self.blocks = list(vit.transformer.resblocks)
        self.num_prefix_tokens = 1
        self.patch_size = _pair(vit.patch_size)
        self.img_size = _pair(vit.image_size)
        self.in_chans = vit.conv1.in_channels
        self.embed_dim = vit.transformer.width
        self.num_heads = self.blocks[0].attn.num_heads if self.blocks else 0
        self.sequence_first = not vit.transformer.batch_first

    def active_patch_dropout(self) -> str:
        drop = self.vit.patch_dropout
        prob = getattr(drop, "prob", 0.0)
        return f"open_clip patch_dropout={prob}" if drop.training and prob > 0 else ""

    def expose_attention(self, layer: int, callback: AttentionCallback) -> Undo:
        mha = self.blocks[layer].attn
        had_override = "forward" in mha.__dict__
        previous = mha.__dict__.get("forward")

        def forward(query: Tensor, key: Tensor, value: Tensor, need_weights: bool = True,
                    attn_mask: Tensor | None = None, **_: object) -> tuple[Tensor, Tensor]:
            if not (query is key is value):
                raise ValueError("only self-attention (query is key is value) can be explained")
            x = query if mha.batch_first else query.transpose(0, 1)
            out, probs = explicit_self_attention(mha, x, attn_mask)
            callback(probs)
            return (out if mha.batch_first else out.transpose(0, 1)), probs.mean(dim=1)

        mha.forward = forward

        def undo() -> None:
            if had_override:
                mha.forward = previous
            else:
                del mha.forward

        return undo
