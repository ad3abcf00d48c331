"""Argument checks shared by the Quantus metrics and the batched engine: target classes and the
metric's patch size against the ViT's own patch embedding (no silent scoring of the wrong class or grid)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn


def check_targets(targets: Any, n_samples: int, n_classes: int | None = None, name: str = "y_batch") -> np.ndarray:
    """(n_samples,) int64 class indices, refusing non-integer, negative (numpy would silently pick the
    last classes) or out-of-range values."""
    y = np.asarray(targets)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64).reshape(-1)
    if y.shape != (n_samples,):
        raise ValueError(f"{name} has {y.size} entries; expected one class per image ({n_samples})")
    if (y < 0).any():
        raise ValueError(f"{name} holds negative classes {sorted(set(y[y < 0].tolist()))}; expected indices >= 0")
    if n_classes is not None and (y >= n_classes).any():
        raise ValueError(f"{name} holds classes {sorted(set(y[y >= n_classes].tolist()))} but the model has "
                         f"{n_classes} outputs (0..{n_classes - 1})")
    return y


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else a ValueError naming the argument and the choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")
    return value


def model_patch_sizes(model: Any) -> set[tuple[int, int]]:
    """Patch sizes (ph, pw) of the ViT patch embeddings inside a torch ``model``: modules with a
    ``patch_size`` and a Conv2d child whose kernel and stride equal it (timm ``PatchEmbed``, open_clip
    ``VisionTransformer``). Empty for other models."""
    if not isinstance(model, nn.Module):
        return set()
    found = set()
    for module in model.modules():
        size = getattr(module, "patch_size", None)
        if isinstance(size, int):
            size = (size, size)
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            continue
        size = tuple(size)
        if any(isinstance(c, nn.Conv2d) and tuple(c.kernel_size) == size == tuple(c.stride) for c in module.children()):
            found.add(size)
    return found


def check_patch_size(model: Any, patch_size: int) -> None:
    """Raise if ``model`` is a ViT whose patch embedding does not cut ``patch_size`` x ``patch_size`` patches."""
    sizes = model_patch_sizes(model)
    if sizes and sizes != {(patch_size, patch_size)}:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        raise ValueError(f"patch_size={patch_size} but the model's patch embedding cuts {shown} patches; "
                         "the metric would perturb and score a different grid than the model sees")
