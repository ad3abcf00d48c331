"""The model's outputs on perturbed copies of one batch of images, computed once per distinct perturbation.

A perturbed image is determined by the original image, the patches replaced (a boolean mask over the patch
grid) and the values they are replaced by (or, with ``fill``, the pixels of a fixed replacement image such as a
black or blurred copy). :class:`PerturbedForwards` keys its outputs by exactly that
(the image's position in the batch, the mask's bytes, the replacement values' bytes), so every call of
:func:`quantus_saco.engine.evaluate_patch_metrics` that is given the same instance — one per method on the
same batch — forwards each distinct perturbed image once:

* Faithfulness Correlation's random subsets are drawn per image, not per method, so every method shares them;
* SaCo groups and Pixel-Flipping steps are shared where two methods' rankings replace the same patches.

Only the logits are kept (``n_classes`` floats per distinct perturbed image), not the perturbed images. The
missing images of a call are forwarded in the order the call lists them, in chunks of exactly ``max_batch``
images: the last chunk is filled up by repeating its last image.

Why fixed-size chunks: the backend picks its matrix kernels by batch size, and a row's float32 outputs can
differ in the last bits between kernels. Measured on this project's CPU: the default ViT gives other bits for
a batch of 1 than for 2..256, and a random tiny ViT's 40 images forwarded in chunks of uneven size (e.g. 6 × 6
+ 4) other bits than in one forward. At one batch size, a row's outputs did not depend on its position or on
the other rows. So with one size for every forward, an
image's logits, and every score, are the same whether it was a hit, a miss, or evaluated in a run of its own.
The cost is at most ``max_batch - 1`` repeated images per call.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .patches import patch_map, replace_patches

__all__ = ["PerturbedForwards"]


class PerturbedForwards:
    """Logits of ``model`` on perturbed copies of the images ``x``, each distinct perturbation forwarded once.

    Args:
        model: classifier in eval mode on the device of ``x``, (N, C, H, W) -> (N, n_classes) logits.
        x: (B, C, H, W) the original images every call perturbs.
        patch_size: square patches of ``patch_size`` × ``patch_size`` pixels.
        fill: (B, C, H, W) images whose pixels replace the removed patches (e.g. a black or blurred copy of ``x``)
            instead of the values given to :meth:`logits`, which then only tell variants apart; None: the values.

    Attributes:
        requested: perturbed images asked for so far (hits and misses).
        forwarded: distinct perturbed images run through the model so far (the misses).
        padded: repeated images that filled up the last chunk of a call so far (also run through the model).

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
        >>> forwards = PerturbedForwards(model, torch.randn(2, 3, 32, 32), 8)
        >>> masks = torch.zeros(2, 4, 16, dtype=torch.bool); masks[:, :, 0] = True  # 4 equal variants per image
        >>> forwards.logits(masks, torch.zeros(2, 4)).shape, forwards.requested, forwards.forwarded
        (torch.Size([2, 4, 3]), 8, 2)
    """

    def __init__(self, model: nn.Module, x: Tensor, patch_size: int, fill: Tensor | None = None) -> None:
        if fill is not None and fill.shape != x.shape:
            raise ValueError(f"fill has shape {tuple(fill.shape)}; expected the images' shape {tuple(x.shape)}")
        self.model, self.x, self.patch_size, self.fill = model, x, patch_size, fill
        self.requested = self.forwarded = self.padded = 0
        self._logits: dict[tuple[int, bool, bytes, bytes], Tensor] = {}  # (image, autocast, mask, values) -> (C,)

    def check(self, model: nn.Module, x: Tensor, patch_size: int, fill: Tensor | None = None) -> None:
        """ValueError unless a call on ``model``, ``x``, ``patch_size`` and ``fill`` may use these outputs."""
        if (fill is None) != (self.fill is None) or (fill is not None and fill is not self.fill
                                                     and not torch.equal(fill, self.fill)):
            raise ValueError("these PerturbedForwards replace patches by another fill; make one per replacement")
        if model is not self.model or patch_size != self.patch_size:
            raise ValueError("these PerturbedForwards hold another model's or patch size's outputs; make one per "
                             "model and batch")
        if x is not self.x and (x.shape != self.x.shape or not torch.equal(x, self.x)):
            raise ValueError("these PerturbedForwards hold the outputs of other images; make one per batch of images")

    @torch.no_grad()
    def logits(self, masks: Tensor, baselines: Tensor, max_batch: int = 256, autocast: bool = False) -> Tensor:
        """Logits of every perturbed variant: image b with the patches ``masks[b, v]`` replaced by ``baselines``.

        Args:
            masks: (B, V, P) bool, patches to replace.
            baselines: (B, V) replacement value per variant, or (B, V, P) per patch.
            max_batch: images per forward (a call's last chunk filled up by repetition: module docstring).
            autocast: forwards under ``torch.autocast`` on the device (kept apart from full-precision outputs).
        Returns:
            (B, V, n_classes) float32.
        """
        B, V, P = masks.shape
        flat_masks = masks.reshape(B * V, P)
        flat_values = baselines.reshape(B * V, -1)
        image = torch.arange(B, device=masks.device).repeat_interleave(V)
        mask_bytes, value_bytes = flat_masks.cpu().numpy(), flat_values.cpu().numpy()
        keys = [(i, autocast, m.tobytes(), v.tobytes()) for i, m, v in zip(image.tolist(), mask_bytes, value_bytes)]
        first: dict[tuple[int, bool, bytes, bytes], int] = {}  # each missing key -> its first row
        for row, key in enumerate(keys):
            if key not in self._logits and key not in first:
                first[key] = row
        missing = torch.tensor(list(first.values()), dtype=torch.long, device=masks.device)
        for start in range(0, len(missing), max_batch):
            rows = missing[start:start + max_batch]
            run = torch.cat([rows, rows[-1:].expand(max_batch - len(rows))])  # always max_batch images (above)
            if self.fill is None:
                perturbed = replace_patches(self.x[image[run]], flat_masks[run], flat_values[run].reshape(
                    max_batch, *baselines.shape[2:]), self.patch_size)
            else:
                pixels = patch_map(flat_masks[run], tuple(self.x.shape[-2:]), self.patch_size)
                perturbed = torch.where(pixels, self.fill[image[run]], self.x[image[run]])
            with torch.autocast(self.x.device.type, enabled=autocast):
                out = self.model(perturbed).float()
            for row, logits in zip(rows.tolist(), out):
                self._logits[keys[row]] = logits
        self.requested += len(keys)
        self.forwarded += len(first)
        self.padded += -len(first) % max_batch
        return torch.stack([self._logits[key] for key in keys]).reshape(B, V, -1)
