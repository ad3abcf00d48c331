"""Target classes as Captum users give them, resolved to one class index per sample."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

TargetLike = int | Sequence[int] | Tensor | None


def resolve_target(target: TargetLike, logits: Tensor) -> Tensor:
    """Per-sample target indices (B,) for ``logits`` (B, C); ``None`` -> predicted class."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, num_classes); got shape {tuple(logits.shape)}")
    B, C = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, bool) or not isinstance(target, (int, Sequence, Tensor)):
        raise TypeError(f"target must be an int, a list of ints or a 1-D tensor; got {type(target).__name__}")
    t = torch.as_tensor(target, device=logits.device)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"target must hold integer class indices; got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"target must be an int or have one entry per sample ({B}); got shape {tuple(t.shape)}")
    if ((t < 0) | (t >= C)).any():
        raise ValueError(f"target {t.tolist()} out of range for {C} classes (0..{C - 1})")
    return t.long()
