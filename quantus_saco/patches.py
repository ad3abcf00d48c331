"""Patch indices, masks and replacement (pure torch, batched, device-agnostic).

Patches are numbered row-major over the (gh, gw) grid, ``P = gh * gw``, the order of
ViT patch tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "patch_grid",
    "pool_patches",
    "patch_map",
    "rank_patches",
    "split_bounds",
    "indices_to_mask",
    "replace_patches",
    "sample_subsets",
]


def patch_grid(image_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Grid ``(gh, gw)`` of an ``(H, W)`` image cut into ``patch_size`` squares."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size={patch_size!r}; expected a positive int")
    H, W = image_hw
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"image size (H, W)={(H, W)} is not divisible by patch_size={patch_size}"
        )
    return H // patch_size, W // patch_size


def pool_patches(a: Tensor, patch_size: int) -> Tensor:
    """Mean of a pixel map over each patch (and its channels).

    Args:
        a: (B, c, H, W) attribution map, any channel count c.
    Returns:
        (B, P) per-patch values; exact for maps that are constant within patches.
    """
    B, c, H, W = a.shape
    gh, gw = patch_grid((H, W), patch_size)
    return a.reshape(B, c, gh, patch_size, gw, patch_size).mean(dim=(1, 3, 5)).reshape(B, gh * gw)


def patch_map(values: Tensor, image_hw: tuple[int, int], patch_size: int) -> Tensor:
    """Repeat per-patch values over their pixels.

    Args:
        values: (B, P) per-patch values, ``P = gh * gw``.
    Returns:
        (B, 1, H, W) map, constant within each patch.
    """
    B, P = values.shape
    gh, gw = patch_grid(image_hw, patch_size)
    if P != gh * gw:
        raise ValueError(f"{P} patch values do not match the {gh}x{gw} patch grid of a {image_hw} image")
    grid = values.reshape(B, 1, gh, gw)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def rank_patches(attr: Tensor) -> Tensor:
    """Patch indices by descending attribution; ties keep index order.

    Args:
        attr: (B, P) per-patch attribution.
    Returns:
        (B, P) long, ``[:, 0]`` the most relevant patch.
    """
    return torch.sort(attr, dim=1, descending=True, stable=True).indices


def split_bounds(n: int, n_groups: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``n_groups`` near-equal consecutive groups of ``n`` items,
    larger groups first, exactly as ``np.array_split`` splits."""
    size, extra = divmod(n, n_groups)
    stops = [(i + 1) * size + min(i + 1, extra) for i in range(n_groups)]
    return list(zip([0] + stops[:-1], stops))


def indices_to_mask(indices: Tensor, n_patches: int) -> Tensor:
    """Boolean patch mask from patch indices.

    Args:
        indices: (..., I) long patch indices.
    Returns:
        (..., n_patches) bool, True at the given indices.
    """
    mask = torch.zeros((*indices.shape[:-1], n_patches), dtype=torch.bool, device=indices.device)
    return mask.scatter_(-1, indices, True)


def replace_patches(x: Tensor, mask: Tensor, baseline: Tensor, patch_size: int) -> Tensor:
    """Replace whole patches (all channels) by a per-sample value.

    Args:
        x: (B, C, H, W) images.
        mask: (B, P) bool, True for patches to replace.
        baseline: (B,) replacement value per image.
    Returns:
        (B, C, H, W) perturbed copy of ``x``.
    """
    pixel_mask = patch_map(mask, x.shape[-2:], patch_size)
    return torch.where(pixel_mask, baseline.to(x.dtype)[:, None, None, None], x)


def _image_seed(seed: int, sample_id: int) -> int:
    """A well-mixed 64-bit generator seed for one (seed, sample id) pair."""
    return int(np.random.SeedSequence([seed, sample_id]).generate_state(1, dtype=np.uint64)[0])


def sample_subsets(
    sample_ids: Sequence[int], n_runs: int, n_patches: int, subset_size: int, seed: int
) -> Tensor:
    """Random patch subsets without replacement, a pure function of its arguments.

    Each image's subsets are drawn on the CPU from its own ``torch.Generator`` seeded with
    ``(seed, sample id)``, so every device, every caller (Quantus path, batched engine) and every
    batching of the same images gets the same subsets.

    Args:
        sample_ids: (B,) non-negative ids of the images (their positions, or dataset ids).

    Returns:
        (B, n_runs, subset_size) long patch indices.
    """
    if not 1 <= subset_size < n_patches:
        raise ValueError(f"subset_size={subset_size!r}; expected 1 <= subset_size < {n_patches} patches")
    if seed < 0 or any(int(i) < 0 for i in sample_ids):
        raise ValueError(f"seed={seed!r} and sample ids must be non-negative")
    keys = [torch.rand((n_runs, n_patches), generator=torch.Generator().manual_seed(_image_seed(seed, int(i))))
            for i in sample_ids]
    return torch.stack(keys).argsort(dim=-1)[..., :subset_size]
