"""Target classes as Captum users give them, resolved to one class index per sample.

Captum's meaning for a (B, C) output: an int or a 1-tuple ``(c,)`` is class ``c`` for every sample; a
list (of ints or 1-tuples) or a (B,) tensor gives one class per sample. numpy integers and integer
arrays (what Quantus passes as ``y_batch``) are accepted like Python ints and tensors.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

TargetLike = int | tuple[int] | Sequence[int] | Tensor | np.ndarray | None


def _as_index_tensor(target: object, device: torch.device) -> Tensor:
    """int / 1-tuple / list / numpy / tensor -> integer tensor (0-d or 1-d as given)."""
    if isinstance(target, tuple):
        if len(target) != 1:
            raise ValueError(
                f"target={target!r}: a tuple indexes one output entry (Captum), i.e. one class (c,) for a "
                "(B, num_classes) output; for one class per sample pass a list or a (B,) tensor"
            )
        target = target[0]
    elif isinstance(target, list):
        target = [t[0] if isinstance(t, tuple) and len(t) == 1 else t for t in target]
    if isinstance(target, bool) or not isinstance(target, (int, np.integer, np.ndarray, Sequence, Tensor)):
        raise TypeError(
            f"target must be an int, a list of ints, a 1-D tensor or numpy array; got {type(target).__name__}"
        )
    if isinstance(target, np.ndarray) and target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices; got numpy dtype {target.dtype}")
    try:
        t = torch.as_tensor(np.asarray(target) if isinstance(target, (np.ndarray, np.integer)) else target, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"target {target!r} is not a list of int class indices ({err})") from err
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices; got dtype {t.dtype}")
    return t


def _check_logits(logits: Tensor) -> tuple[int, int]:
    """(B, C) of model output ``logits``, refused (by what it is) unless a (B, C) tensor."""
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model must return a logits tensor (B, num_classes); got {type(logits).__name__} (e.g. a DeiT "
            "distilled model in train mode with distilled_training returns two heads: call model.eval())"
        )
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (B, num_classes); got shape {tuple(logits.shape)}")
    return logits.shape[0], logits.shape[1]


def target_indices(target: TargetLike, batch: int, device: torch.device) -> Tensor:
    """(B,) class indices of a given (not ``None``) ``target`` for ``batch`` samples, checked for shape but not yet
    against a number of classes (:func:`check_target_classes`)."""
    t = _as_index_tensor(target, device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"target must be an int or have one entry per sample ({batch}); got shape {tuple(t.shape)}")
    return t.long()


def check_target_classes(indices: Tensor, logits: Tensor) -> None:
    """Refuse ``indices`` outside the classes of model output ``logits`` (N, C) (any N: e.g. Captum's expanded
    batches)."""
    _, num_classes = _check_logits(logits)
    if ((indices < 0) | (indices >= num_classes)).any():
        raise ValueError(f"target {indices.tolist()} out of range for {num_classes} classes (0..{num_classes - 1})")


def resolve_target(target: TargetLike, logits: Tensor) -> Tensor:
    """Per-sample target indices (B,) for ``logits`` (B, C); ``None`` -> predicted class."""
    batch, _ = _check_logits(logits)
    if target is None:
        return logits.detach().argmax(dim=1)
    t = target_indices(target, batch, logits.device)
    check_target_classes(t, logits)
    return t
