"""Patch-level perturbation under Quantus's batched ``perturb_func`` contract (numpy edge)."""

from __future__ import annotations

import numpy as np
import torch

from .patches import indices_to_mask, patch_grid, replace_patches

__all__ = ["batch_patch_replacement_by_indices", "patch_baseline"]

BASELINES = ("mean", "black", "white")


def patch_baseline(arr: np.ndarray, perturb_baseline: str | float | np.ndarray, n_patches: int | None = None) -> np.ndarray:
    """Per-sample (or per-patch) replacement value.

    Args:
        arr: (N, F) flattened original images.
        perturb_baseline: "mean" (per-sample mean, docs/method.md §4), "black" (minimum),
            "white" (maximum), a number, an (N,) array, or an (N, n_patches) array of per-patch values.
    Returns:
        (N,) or (N, n_patches) float64 replacement values (cast to the image dtype when applied).
    """
    N = arr.shape[0]
    if isinstance(perturb_baseline, str):
        reducers = dict(zip(BASELINES, (np.mean, np.min, np.max)))
        if perturb_baseline not in reducers:
            raise ValueError(f"perturb_baseline={perturb_baseline!r}; expected one of {BASELINES}, a number or an (N,) array")
        return reducers[perturb_baseline](arr.astype(np.float64), axis=1)
    value = np.asarray(perturb_baseline, dtype=np.float64)
    if n_patches is not None and value.shape == (N, n_patches):
        return value
    if value.shape not in ((), (N,)):
        per_patch = "" if n_patches is None else f" or ({N}, {n_patches})"
        raise ValueError(f"perturb_baseline has shape {value.shape}; expected a scalar, ({N},){per_patch}")
    return np.broadcast_to(value, (N,))


def batch_patch_replacement_by_indices(
    arr: np.ndarray,
    indices: np.ndarray,
    perturb_baseline: str | float | np.ndarray,
    *,
    image_shape: tuple[int, int, int],
    patch_size: int,
) -> np.ndarray:
    """Replace whole patches of flattened images by a per-sample baseline.

    Quantus's batched contract (as ``batch_baseline_replacement_by_indices``), with
    indices counted in patches instead of flattened C·H·W elements.

    Args:
        arr: (N, F) images flattened from ``image_shape`` = (C, H, W), F = C·H·W.
        indices: (N, I) patch indices (row-major over the patch grid) to replace.
        perturb_baseline: see ``patch_baseline``; computed from ``arr``; (N, P) arrays give per-patch values.
    Returns:
        (N, F) perturbed copy.
    """
    C, H, W = image_shape
    gh, gw = patch_grid((H, W), patch_size)
    x = torch.from_numpy(np.ascontiguousarray(arr)).reshape(-1, C, H, W)
    mask = indices_to_mask(torch.as_tensor(indices, dtype=torch.long), gh * gw)
    baseline = torch.from_numpy(np.ascontiguousarray(patch_baseline(arr, perturb_baseline, gh * gw)))
    return replace_patches(x, mask, baseline, patch_size).reshape(arr.shape).numpy()
