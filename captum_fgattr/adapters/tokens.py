"""Token bookkeeping: patch relevance vectors <-> patch grids <-> pixel maps."""
from __future__ import annotations

from torch import Tensor


def patches_to_grid(patch_values: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """(B, P) patch values in row-major token order -> (B, gh, gw)."""
    return patch_values.reshape(patch_values.shape[0], *grid_size)


def grid_to_pixels(grid: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """(B, gh, gw) -> (B, 1, gh·ph, gw·pw), each patch's value repeated over its pixels."""
    ph, pw = patch_size
    return grid.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2).unsqueeze(1)


def pixels_to_patches(pixel_attr: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) pixel attribution -> (B, P) per-patch sums over channels and the patch's pixels."""
    B, _, H, W = pixel_attr.shape
    ph, pw = patch_size
    summed = pixel_attr.sum(dim=1).reshape(B, H // ph, ph, W // pw, pw)
    return summed.sum(dim=(2, 4)).reshape(B, -1)
