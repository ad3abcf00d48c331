"""timm ``VisionTransformer`` (ViT, DeiT, DeiT distilled, register tokens): probabilities at ``attn.attn_drop``."""
from __future__ import annotations

from timm.layers import Attention, PatchDropout, PatchEmbed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from captum_fgattr.adapters.base import AttentionCallback, Undo, ViTAdapter


class TimmViTAdapter(ViTAdapter):
    """Adapter for ``timm.models.vision_transformer.VisionTransformer`` with class-token pooling.

    While attention is exposed, ``blk.attn.fused_attn`` is switched off (the fused kernel never
    materialises the probabilities) and restored by the returned undo function.

    DeiT distilled (``VisionTransformerDistilled``) averages the class-token and distillation-token
    heads, so relevance is read from both token rows and averaged the same way.
    """

    def __init__(self, vit: VisionTransformer, model: nn.Module | None = None) -> None:
        if vit.cls_token is None or vit.global_pool != "token":
            raise ValueError(
                "TransMM reads relevance from the class-token row, so the timm ViT must have a class "
                f"token and global_pool='token'; got global_pool={vit.global_pool!r}, "
                f"class token {'present' if vit.cls_token is not None else 'absent'}"
            )
        if not isinstance(vit.patch_embed, PatchEmbed):
            raise TypeError(
                f"the patch embedding is {type(vit.patch_embed).__name__}, not timm's PatchEmbed: in hybrid CNN-ViTs "
                "(e.g. vit_small_r26_s32_224) tokens are CNN features with overlapping receptive fields, not image "
                "patches, so relevance cannot be mapped to pixels; supported: ViTs with a timm.layers.PatchEmbed"
            )
        for i, blk in enumerate(vit.blocks):
            attn = getattr(blk, "attn", None)
            if type(attn) is not Attention:
                found = "no .attn module" if attn is None else f".attn of type {type(attn).__name__}"
                raise TypeError(
                    f"block {i} ({type(blk).__name__}) has {found}; supported: blocks whose .attn is a "
                    "timm.layers.Attention (timm Block, ResPostBlock). Parallel blocks (ParallelThingsBlock, "
                    "ParallelScalingBlock) and other attention types do not expose their probabilities"
                )
        self.model = vit if model is None else model
        self.vit = vit
        self.blocks = list(vit.blocks)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.img_size = tuple(vit.patch_embed.img_size)
        self.in_chans = vit.patch_embed.proj.in_channels
        self.embed_dim = vit.embed_dim
        self.num_heads = vit.blocks[0].attn.num_heads if len(vit.blocks) else 0
        self.readout_rows = (0, 1) if isinstance(vit, VisionTransformerDistilled) else (0,)
        self.dynamic_img_size = bool(getattr(vit, "dynamic_img_size", False))
        self.dynamic_img_pad = bool(getattr(vit.patch_embed, "dynamic_img_pad", False))

    def active_patch_dropout(self) -> str:
        drop = self.vit.patch_drop
        if isinstance(drop, PatchDropout) and drop.training and drop.prob > 0:
            return f"timm patch_drop_rate={drop.prob}"
        return ""

    def expose_attention(self, layer: int, callback: AttentionCallback) -> Undo:
        attn = self.blocks[layer].attn
        was_fused = attn.fused_attn
        attn.fused_attn = False
        handle = attn.attn_drop.register_forward_hook(lambda _m, _inp, out: callback(out))

        def undo() -> None:
            handle.remove()
            attn.fused_attn = was_fused

        return undo
