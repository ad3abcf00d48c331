"""Baseline ViT attributions as Captum classes: token Grad-CAM, attention rollout, raw attention, Integrated
Gradients and Saliency summed per patch, random patch maps.

Each yields one raw value per patch token and follows :class:`PatchAttribution`'s contract (pixel map
by default, ``return_patches=True`` for the (B, gh, gw) grid).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum.attr import IntegratedGradients, Saliency
from captum.log import log_usage
from torch import Tensor, nn

from captum_fgattr.adapters import capture
from captum_fgattr.adapters.tokens import pixels_to_patches
from captum_fgattr.patch_attribution import PatchAttribution, check_finite
from captum_fgattr.relevancy import attention_rollout, class_token_row
from captum_fgattr.targets import TargetLike, check_target_classes, resolve_target, target_indices

__all__ = ["TokenGradCAM", "AttentionRollout", "RawAttention", "PatchIntegratedGradients", "PatchSaliency",
           "RandomPatches"]


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


def _pixel_targets(attribution: PatchAttribution, images: Tensor, target: TargetLike,
                   extra: tuple) -> tuple[Tensor, Callable[..., Tensor]]:
    """(B,) target classes for Captum's pixel methods and the forward function to give Captum for them. ``None``:
    the predicted classes, from one no-grad forward; a given target: its indices, whose class range the returned
    forward checks on the logits Captum computes anyway (no forward of its own), as the other methods check it."""
    if target is None:
        with torch.no_grad():
            return resolve_target(None, attribution.forward_func(images, *extra)), attribution.forward_func
    indices = target_indices(target, images.shape[0], images.device)

    def checked_forward(inputs: Tensor, *args: Any) -> Tensor:
        logits = attribution.forward_func(inputs, *args)
        check_target_classes(indices, logits)
        return logits
    return indices, checked_forward


class PatchIntegratedGradients(PatchAttribution):
    """Captum's :class:`~captum.attr.IntegratedGradients` from a constant baseline image x', summed per patch:

        relevance_p = Σ_{c, (i, j) ∈ p} (x − x')_cij · ∫₀¹ ∂y/∂x_cij(x' + α (x − x')) dα

    with ``n_steps`` Gauss-Legendre points, run as one batch of B · n_steps images.

    Args:
        model: as for :class:`PatchAttribution`.
        baseline: x' as one model-input value for all channels, or one per channel (a black image is
            (0 − mean) / std).
        n_steps: integration points.

    As with Captum's class, ``attribute(..., return_convergence_delta=True)`` returns (attributions, (B,)
    completeness gaps Σ_p relevance_p − (y(x) − y(x'))).

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
        >>> patches, delta = PatchIntegratedGradients(vit, n_steps=8).attribute(
        ...     torch.randn(2, 3, 32, 32), target=1, return_patches=True, return_convergence_delta=True)
        >>> patches.shape, delta.shape
        (torch.Size([2, 2, 2]), torch.Size([2]))
    """

    def __init__(self, model: nn.Module, baseline: float | Sequence[float] = 0.0, n_steps: int = 50) -> None:
        super().__init__(model)
        self.baseline, self.n_steps = baseline, n_steps
        self._delta: Tensor | None = None

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor], *args: Any, return_convergence_delta: bool = False,
                  **kwargs: Any) -> Tensor | tuple[Tensor] | tuple[Tensor | tuple[Tensor], Tensor]:
        """As :meth:`PatchAttribution.attribute`; with ``return_convergence_delta`` the pair (that, (B,) deltas)."""
        try:
            out = super().attribute(inputs, *args, **kwargs)
            return (out, self._delta) if return_convergence_delta else out
        finally:
            self._delta = None

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        values = torch.as_tensor(self.baseline, dtype=images.dtype, device=images.device).reshape(-1)
        if values.numel() not in (1, images.shape[1]):
            raise ValueError(f"the Integrated Gradients baseline has {values.numel()} values for {images.shape[1]} "
                             "channels; expected one value or one per channel")
        reference = values.reshape(1, -1, 1, 1).expand_as(images)
        target_idx, forward = _pixel_targets(self, images, target, extra)
        with torch.enable_grad():
            attr, delta = IntegratedGradients(forward).attribute(
                images, baselines=reference, target=target_idx, additional_forward_args=extra or None,
                n_steps=self.n_steps, internal_batch_size=images.shape[0] * self.n_steps, return_convergence_delta=True)
        self._delta = delta.detach()
        return pixels_to_patches(attr.detach(), self.adapter.patch_size)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True


class PatchSaliency(PatchAttribution):
    """Captum's :class:`~captum.attr.Saliency` summed per patch: relevance_p = Σ_{c, (i, j) ∈ p} |∂y/∂x_cij|."""

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        target_idx, forward = _pixel_targets(self, images, target, extra)
        with torch.enable_grad():
            grads = Saliency(forward).attribute(images.detach().requires_grad_(True), target=target_idx,
                                            additional_forward_args=extra or None)
        return pixels_to_patches(grads.detach(), self.adapter.patch_size)


class RandomPatches(PatchAttribution):
    """Uniform random patch relevance in [0, 1): image i's (P,) map is ``torch.rand(P)`` from a generator seeded
    with seed · 1000003 + id_i, so it depends on ``seed`` and the image's id only, not on the batching. The
    model is not run; ``target`` is ignored."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = seed
        self._sample_ids: Tensor | None = None

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor], *args: Any, sample_ids: Sequence[int] | Tensor | None = None,
                  **kwargs: Any) -> Tensor | tuple[Tensor]:
        """As :meth:`PatchAttribution.attribute`; ``sample_ids`` (B,) stable image ids (default: 0 for every
        image, i.e. one map for all)."""
        self._sample_ids = None if sample_ids is None else torch.as_tensor(sample_ids).reshape(-1)
        try:
            return super().attribute(inputs, *args, **kwargs)
        finally:
            self._sample_ids = None

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        ids = torch.zeros(len(images), dtype=torch.long) if self._sample_ids is None else self._sample_ids
        if ids.numel() != len(images):
            raise ValueError(f"sample_ids has {ids.numel()} entries for a batch of {len(images)} images")
        gh, gw = self.adapter.grid_size(images)
        seeded = (torch.Generator().manual_seed(self.seed * 1_000_003 + int(i)) for i in ids)
        return torch.stack([torch.rand(gh * gw, generator=generator) for generator in seeded]).to(images.device)
