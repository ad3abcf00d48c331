"""Token bookkeeping: patch relevance vectors <-> patch grids <-> pixel maps."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def patches_to_grid(patch_values: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """(B, P) patch values in row-major token order -> (B, gh, gw)."""
    B, P = patch_values.shape
    gh, gw = grid_size
    if P != gh * gw:
        raise ValueError(f"{P} patch values do not fill a {gh}x{gw} patch grid")
    return patch_values.reshape(B, gh, gw)


def grid_to_pixels(grid: Tensor, patch_size: tuple[int, int], image_size: tuple[int, int] | None = None) -> Tensor:
    """(B, gh, gw) -> (B, 1, H, W), each patch's value repeated over its pixels.

    ``image_size`` (H, W) defaults to (gh·ph, gw·pw). Patches are anchored at the top-left corner, as
    patch embeddings cut them: a padded partial last patch is cropped to the image; pixels of a
    partial patch the embedding dropped get 0 (the model never sees them).
    """
    ph, pw = patch_size
    pixels = grid.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2).unsqueeze(1)
    if image_size is None:
        return pixels
    H, W = image_size
    pixels = pixels[..., :H, :W]
    return F.pad(pixels, (0, W - pixels.shape[-1], 0, H - pixels.shape[-2]))


def pixels_to_patches(pixel_attr: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) pixel attribution -> (B, P) per-patch sums over channels and the patch's pixels."""
    B, _, H, W = pixel_attr.shape
    ph, pw = patch_size
    summed = pixel_attr.sum(dim=1).reshape(B, H // ph, ph, W // pw, pw)
    return summed.sum(dim=(2, 4)).reshape(B, -1)
