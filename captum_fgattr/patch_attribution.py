"""The Captum contract shared by every patch-level attribution of this package.

A subclass computes one thing, the raw relevance of the patch tokens (B, P), in
:meth:`PatchAttribution._patch_relevance`; this base checks the inputs, accepts what Captum passes
(a 1-tuple of inputs, Captum targets, ``additional_forward_args``) and returns what Captum users put
attributions in: the (B, 1, H, W) pixel map, the input-shaped map, or the raw (B, gh, gw) patch grid.
"""
from __future__ import annotations

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_fgattr.adapters import get_adapter
from captum_fgattr.adapters.tokens import grid_to_pixels, patches_to_grid
from captum_fgattr.targets import TargetLike

__all__ = ["PatchAttribution", "check_finite"]


def _single_input(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, bool]:
    """(images, whether they came as a 1-tuple): Captum's metrics pass inputs as a tuple of tensors."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
            raise TypeError(
                f"inputs given as a tuple must hold exactly one (B, C, H, W) image tensor; got {len(inputs)} element(s)"
            )
        return inputs[0], True
    return inputs, False


def check_finite(name: str, values: Tensor, inputs: Tensor) -> None:
    """Raise if ``values`` (logits or relevance) hold NaN or Inf, naming the input range."""
    if not torch.isfinite(values).all():
        raise ValueError(
            f"the {name} contain NaN or Inf (inputs range {inputs.min().item():.3g} .. {inputs.max().item():.3g}); "
            "the attribution would be meaningless: check the input scale and the model's dtype"
        )


class PatchAttribution(GradientAttribution):
    """Base of the ViT attributions: one relevance value per patch token, shown as Captum expects.

    Args:
        model: a supported ViT classifier (timm ``VisionTransformer``, open_clip ViT classifier, or a
            module containing exactly one of them) returning logits (B, num_classes).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.adapter = get_adapter(model)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetLike = None,
        additional_forward_args: object = None,
        return_patches: bool = False,
        expand_channels: bool = False,
    ) -> Tensor | tuple[Tensor]:
        """Attribute the target logit to the input's patches.

        Args:
            inputs: (B, C, H, W) images, finite, at the model's input size (any size for timm
                ``dynamic_img_size`` models); or a 1-tuple of them, as Captum's metrics pass inputs
                (``captum.metrics.sensitivity_max``), and then the result is a 1-tuple too.
            target: class per sample as in Captum — an int or a 1-tuple ``(c,)`` for all samples, a
                list of B ints, a (B,) tensor or numpy array; ``None`` uses the predicted class.
            additional_forward_args: extra positional arguments for the model after the images.
            return_patches: return the raw patch grid instead of the pixel map.
            expand_channels: repeat the pixel map over the C input channels, giving the input's
                shape (what ``captum.metrics.infidelity`` needs).

        Returns:
            (B, 1, H, W) pixel map with each patch's relevance repeated over its pixels (0 on pixels of
            a partial patch the model drops), (B, C, H, W) if ``expand_channels``, or (B, gh, gw)
            patch relevance if ``return_patches``.

        Example (Captum's metrics):
            >>> import timm, torch
            >>> from captum.metrics import infidelity, sensitivity_max
            >>> from captum_fgattr import TransMM
            >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
            >>> x, method = torch.randn(2, 3, 32, 32), TransMM(vit)
            >>> sensitivity_max(method.attribute, x, target=1, n_perturb_samples=2).shape
            torch.Size([2])
            >>> noise = lambda x: (n := 0.01 * torch.randn_like(x), x - n)
            >>> infidelity(vit, noise, x, method.attribute(x, target=1, expand_channels=True), target=1).shape
            torch.Size([2])
        """
        images, as_tuple = _single_input(inputs)
        if return_patches and expand_channels:
            raise ValueError("return_patches and expand_channels exclude each other: choose the patch grid or the input-shaped map")
        self.adapter.check_input(images)
        extra = _format_additional_forward_args(additional_forward_args) or ()
        relevance = self._patch_relevance(images, target, extra)
        check_finite("relevance values", relevance, images)
        grid = patches_to_grid(relevance.detach(), self.adapter.grid_size(images))
        if return_patches:
            out = grid
        else:
            out = grid_to_pixels(grid, self.adapter.patch_size, tuple(images.shape[-2:]))
            out = out.repeat(1, images.shape[1], 1, 1) if expand_channels else out
        return (out,) if as_tuple else out

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        """(B, C, H, W) checked images -> (B, P) raw relevance of the patch tokens, row-major over the grid."""
        raise NotImplementedError

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return False
