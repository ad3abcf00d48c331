"""Baseline ViT attributions as Captum classes: token Grad-CAM, attention rollout, raw attention.

Each yields one raw value per patch token and follows :class:`PatchAttribution`'s contract (pixel map
by default, ``return_patches=True`` for the (B, gh, gw) grid).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_fgattr.adapters import capture
from captum_fgattr.patch_attribution import PatchAttribution, check_finite
from captum_fgattr.relevancy import attention_rollout, class_token_row
from captum_fgattr.targets import TargetLike, resolve_target

__all__ = ["TokenGradCAM", "AttentionRollout", "RawAttention"]


def _pre_attention_norm(block: nn.Module) -> nn.Module:
    """The LayerNorm a block applies before attention (timm ``norm1``, open_clip ``ln_1``)."""
    for name in ("norm1", "ln_1"):
        norm = getattr(block, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise TypeError(f"{type(block).__name__} has no pre-attention norm (norm1 / ln_1); Grad-CAM needs one")


class TokenGradCAM(PatchAttribution):
    """Grad-CAM on the patch tokens at the output of the last block's first LayerNorm (timm
    ``blocks[-1].norm1``, open_clip ``ln_1``) — the usual ViT recipe of pytorch-grad-cam:

        a_t = norm1(x_t) (D channels), w = mean_t ∂y/∂a_t,  cam_t = relu(Σ_d w_d a_td)

    over the patch tokens t (prefix tokens dropped before the mean, as a reshape to the patch grid does).
    Raw values, not min-max normalised or resized.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
        >>> TokenGradCAM(vit).attribute(torch.randn(2, 3, 32, 32), target=1, return_patches=True).shape
        torch.Size([2, 2, 2])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.layer = _pre_attention_norm(self.adapter.blocks[-1])

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        outputs: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda module, args, out: outputs.append(out))
        try:
            with torch.enable_grad():
                logits = self.adapter.model(images.detach().requires_grad_(True), *extra)
                target_idx = resolve_target(target, logits)
                check_finite("logits", logits.gather(1, target_idx[:, None]), images)
                acts = outputs[-1].transpose(0, 1) if self.adapter.sequence_first else outputs[-1]
                (grads,) = torch.autograd.grad(logits.gather(1, target_idx[:, None]).sum(), outputs[-1])
        finally:
            handle.remove()
        grads = grads.transpose(0, 1) if self.adapter.sequence_first else grads
        prefix = self.adapter.num_prefix_tokens
        acts, grads = acts[:, prefix:].detach(), grads[:, prefix:]
        return torch.relu((acts * grads.mean(dim=1, keepdim=True)).sum(dim=-1))


def _attention_maps(attribution: PatchAttribution, images: Tensor, target: TargetLike, extra: tuple) -> list[Tensor]:
    """Every block's (B, heads, N, N) attention probabilities from one no-grad forward; ``target`` is checked
    against its logits as the class-specific methods check it (a bad target is refused, not ignored)."""
    with torch.no_grad(), capture(attribution.adapter) as captured:
        resolve_target(target, attribution.adapter.model(images, *extra))
        return list(captured.attn)


class AttentionRollout(PatchAttribution):
    """Attention rollout (Abnar & Zuidema 2020): R = Π_ℓ normalise(0.5·I + 0.5·mean_h A_ℓ); the class
    token's row over the patches. Class-agnostic: ``target`` is checked (as for the other methods: −1 or a
    class the model does not have is refused), then ignored."""

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        rolled = attention_rollout(_attention_maps(self, images, target, extra))
        return class_token_row(rolled, self.adapter.num_prefix_tokens, self.adapter.readout_rows)


class RawAttention(PatchAttribution):
    """The last block's head-mean attention of the class token over the patches. Class-agnostic:
    ``target`` is checked (as for the other methods), then ignored."""

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        last = _attention_maps(self, images, target, extra)[-1].mean(dim=1)
        return class_token_row(last, self.adapter.num_prefix_tokens, self.adapter.readout_rows)
