"""ROAD's noisy linear imputation (Rong et al. 2022) of whole patches, under Quantus's batched ``perturb_func``
contract (numpy edge), with seeded noise.

The imputation itself is Quantus's ``noisy_linear_imputation``: each removed pixel (all channels) is the
weighted mean of its 8 neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals; neighbours outside the
image dropped and the weights renormalised), a sparse linear system over all removed pixels of one image. Two
things are done here instead of inside Quantus: indices are patches, expanded to their pixels; and the noise
comes from caller-given standard-normal draws (``road_noise``: one generator per image, seeded by the seed and
the image's id) rather than from numpy's global generator, which Quantus draws from unseeded (its global state
is left as it was found).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from quantus.functions.perturb_func import noisy_linear_imputation
from torch import Tensor

from .patches import _image_seed, patch_grid

__all__ = ["batch_patch_noisy_linear_imputation", "road_noise", "patch_pixel_indices"]


def patch_pixel_indices(image_hw: tuple[int, int], patch_size: int) -> np.ndarray:
    """(P, patch_size²) flat pixel indices (row-major over H·W) of each patch, patches row-major over the grid."""
    H, W = image_hw
    gh, gw = patch_grid((H, W), patch_size)
    pixels = np.arange(H * W).reshape(gh, patch_size, gw, patch_size)
    return pixels.transpose(0, 2, 1, 3).reshape(gh * gw, patch_size * patch_size)


def road_noise(sample_ids: Sequence[int], shape: tuple[int, int, int], seed: int) -> Tensor:
    """Standard-normal noise draws, a pure function of its arguments (as ``patches.sample_subsets``).

    Image i's draws come from its own CPU ``torch.Generator`` seeded with ``(seed, sample_ids[i])``, so every
    device, caller and batching of the same images gets the same noise.

    Args:
        sample_ids: (B,) non-negative ids of the images.
        shape: (C, H, W) of one image.
    Returns:
        (B, C, H, W) float32.
    """
    if seed < 0 or any(int(i) < 0 for i in sample_ids):
        raise ValueError(f"seed={seed!r} and sample ids must be non-negative")
    draws = [torch.randn(shape, generator=torch.Generator().manual_seed(_image_seed(seed, int(i)))) for i in sample_ids]
    return torch.stack(draws) if draws else torch.empty((0, *shape))


def batch_patch_noisy_linear_imputation(
    arr: np.ndarray,
    indices: np.ndarray,
    noise: float = 0.01,
    *,
    image_shape: tuple[int, int, int],
    patch_size: int,
    noise_draws: np.ndarray | None = None,
) -> np.ndarray:
    """Impute whole patches of flattened images by noisy linear imputation.

    Quantus's batched contract (as ``batch_baseline_replacement_by_indices``), with indices counted in
    patches; Quantus's ``noisy_linear_imputation`` solves one image at a time.

    Args:
        arr: (N, F) images flattened from ``image_shape`` = (C, H, W), F = C·H·W.
        indices: (N, I) patch indices (row-major over the patch grid) to impute; fewer than all patches.
        noise: standard deviation of the noise added to the imputed pixels (ROAD: 0.01), in the units of ``arr``.
        noise_draws: (N, F) standard-normal draws (``road_noise``); required when ``noise > 0``.
    Returns:
        (N, F) perturbed copy, dtype of ``arr``.
    """
    C, H, W = image_shape
    pixels = patch_pixel_indices((H, W), patch_size)
    indices = np.asarray(indices, dtype=np.int64).reshape(len(arr), -1)
    if not noise >= 0:
        raise ValueError(f"noise={noise!r}; expected a standard deviation >= 0")
    if noise > 0 and (noise_draws is None or np.shape(noise_draws) != np.shape(arr)):
        shape = None if noise_draws is None else np.shape(noise_draws)
        raise ValueError(f"noise={noise!r} needs noise_draws of shape {np.shape(arr)} (road_noise); got {shape}")
    out = np.array(arr, copy=True)
    state = np.random.get_state()  # Quantus draws its (here zero) noise from numpy's global generator
    try:
        for i, patches in enumerate(indices):  # one sparse system per image
            if patches.size == 0:
                continue
            if len(np.unique(patches)) >= len(pixels):
                raise ValueError(f"all {len(pixels)} patches are to be imputed; linear imputation needs pixels left")
            removed = np.sort(pixels[patches].ravel())
            image = noisy_linear_imputation(arr=out[i].reshape(C, H, W), indices=removed, noise=0.0).reshape(C, -1)
            if noise > 0:
                image[:, removed] += noise * np.asarray(noise_draws[i]).reshape(C, -1)[:, removed]
            out[i] = image.reshape(-1)
    finally:
        np.random.set_state(state)
    return out
