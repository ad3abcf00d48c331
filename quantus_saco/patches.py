"""Patch indices, masks and replacement (pure torch, batched, device-agnostic).

Patches are numbered row-major over the (gh, gw) grid, ``P = gh * gw``, the order of
ViT patch tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .checks import check_choice

__all__ = [
    "patch_grid",
    "pool_patches",
    "patch_map",
    "rank_patches",
    "TIE_ORDERS",
    "split_bounds",
    "indices_to_mask",
    "replace_patches",
    "sample_subsets",
    "numpy_global_subsets",
    "SUBSET_SAMPLINGS",
    "running_mean_values",
    "REPLACEMENTS",
]

#: how patches with equal attribution are ordered by ``rank_patches``
TIE_ORDERS = ("stable", "numpy_reversed", "numpy_negated")
#: how FC subsets are drawn: ``sample_subsets`` or ``numpy_global_subsets``
SUBSET_SAMPLINGS = ("per_image", "numpy_global")
#: Pixel-Flipping's replacement value: the original image's mean, or the mean of the image as perturbed so far
REPLACEMENTS = ("original_mean", "running_mean")


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


def rank_patches(attr: Tensor, tie_order: str = "stable") -> Tensor:
    """Patch indices by descending attribution.

    Args:
        attr: (B, P) per-patch attribution.
        tie_order: order of equal attributions: ``"stable"``: lower patch index first;
            ``"numpy_reversed"``: as ``np.argsort(a)[::-1]`` orders them, ``"numpy_negated"``: as
            ``np.argsort(-a)`` (numpy's default unstable sort, computed by numpy on the CPU, as the
            thesis author's code ranks for SaCo and for Pixel Flipping respectively).
    Returns:
        (B, P) long on the device of ``attr``, ``[:, 0]`` the most relevant patch.
    """
    if tie_order == "stable":
        return torch.sort(attr, dim=1, descending=True, stable=True).indices
    check_choice("tie_order", tie_order, TIE_ORDERS)
    a = attr.detach().cpu().numpy()
    order = np.argsort(a, axis=1, kind="quicksort")[:, ::-1] if tie_order == "numpy_reversed" \
        else np.argsort(-a, axis=1, kind="quicksort")
    return torch.from_numpy(np.ascontiguousarray(order)).to(attr.device)


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
    """Replace whole patches (all channels) by a per-sample or per-patch value.

    Args:
        x: (B, C, H, W) images.
        mask: (B, P) bool, True for patches to replace.
        baseline: (B,) replacement value per image, or (B, P) per patch.
    Returns:
        (B, C, H, W) perturbed copy of ``x``.
    """
    pixel_mask = patch_map(mask, x.shape[-2:], patch_size)
    if baseline.ndim == 2:
        return torch.where(pixel_mask, patch_map(baseline.to(x.dtype), x.shape[-2:], patch_size), x)
    return torch.where(pixel_mask, baseline.to(x.dtype)[:, None, None, None], x)


def running_mean_values(x: Tensor, order: Tensor, counts: Tensor, patch_size: int) -> Tensor:
    """Replacement value of each patch when Pixel Flipping replaces patches step by step on the image as
    perturbed so far, each step's patches by that image's mean (the thesis author's code).

    Step k replaces the patches ``order[:, counts[k-1]:counts[k]]`` of x^(k-1) by mean(x^(k-1)), cast to
    the image dtype; the mean is updated from the patch sums in float64 (one (B,) update per step).

    Args:
        x: (B, C, H, W) original images.
        order: (B, P) patch indices in removal order.
        counts: (S + 1,) patches removed after each step, from 0 to P (``scores.removed_counts``).
    Returns:
        (B, P) float64 value of each patch in every x^(k) where it is replaced.
    """
    B, C, H, W = x.shape
    gh, gw = patch_grid((H, W), patch_size)
    sums = x.double().reshape(B, C, gh, patch_size, gw, patch_size).sum(dim=(1, 3, 5)).reshape(B, gh * gw)
    per_patch = C * patch_size**2  # values per patch
    total = sums.sum(dim=1)
    ranked_values = torch.empty_like(sums)
    ranked_sums = sums.gather(1, order)
    for start, stop in zip(counts[:-1].tolist(), counts[1:].tolist()):
        value = (total / (H * W * C)).to(x.dtype).double()  # mean of x^(k-1) as the image stores it
        ranked_values[:, start:stop] = value[:, None]
        total = total + (per_patch * value[:, None] - ranked_sums[:, start:stop]).sum(dim=1)
    return torch.empty_like(sums).scatter_(1, order, ranked_values)


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


def numpy_global_subsets(n_images: int, n_runs: int, n_patches: int, subset_size: int, seed: int) -> Tensor:
    """Random patch subsets as the thesis author's code draws them for one batch: after
    ``np.random.seed(seed)``, ``n_runs * n_images`` calls of ``np.random.choice(n_patches, subset_size,
    replace=False)``, the i-th for run i // n_images of image i % n_images (a private ``RandomState``,
    the same stream, leaves numpy's global state alone). The subsets depend on the images' positions.

    Returns:
        (n_images, n_runs, subset_size) long patch indices.
    """
    if not 1 <= subset_size < n_patches:
        raise ValueError(f"subset_size={subset_size!r}; expected 1 <= subset_size < {n_patches} patches")
    state = np.random.RandomState(seed)
    draws = np.stack([state.choice(n_patches, subset_size, replace=False) for _ in range(n_runs * n_images)])
    return torch.from_numpy(draws.reshape(n_runs, n_images, subset_size).transpose(1, 0, 2).copy()).long()
