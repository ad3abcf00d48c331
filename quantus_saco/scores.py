"""Scores from model outputs (pure torch, batched): SaCo, Pixel-Flipping AUC, correlations.

Formulas: docs/method.md §4. Computed in float64; rows whose score is undefined are NaN.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .checks import check_choice

__all__ = [
    "saco", "removed_counts", "pf_auc", "pearson", "spearman", "correlation", "fill_undefined", "CORRELATIONS",
    "PAIRINGS", "UNDEFINED_SCORES", "UndefinedScoreWarning",
]

#: SaCo's pairs i < j: groups in ranking order, or re-sorted by salience (descending) first
PAIRINGS = ("ranking", "salience")
#: score of an undefined SaCo / FC sample: NaN (excluded, counted) or 0 (the thesis author's code)
UNDEFINED_SCORES = ("nan", "zero")


class UndefinedScoreWarning(RuntimeWarning):
    """A score undefined for ``count`` of ``total`` samples (returned as NaN for them), e.g. SaCo where all group
    saliences are equal; ``metric`` and ``reason`` name the score and the cause. Callers that count these
    (the benchmark) read the attributes instead of parsing the message."""

    def __init__(self, metric: str, reason: str, count: int, total: int) -> None:
        super().__init__(f"{metric} is undefined ({reason}) for {count} of {total} samples; returning NaN for them")
        self.metric, self.reason, self.count, self.total = metric, reason, count, total

    def __reduce__(self) -> tuple[type, tuple[str, str, int, int]]:  # copy / pickle (e.g. across processes)
        return type(self), (self.metric, self.reason, self.count, self.total)


def fill_undefined(scores: Tensor, undefined: str) -> Tensor:
    """(B,) scores with NaN kept (``undefined="nan"``) or replaced by 0 (``"zero"``)."""
    check_choice("undefined", undefined, UNDEFINED_SCORES)
    return scores if undefined == "nan" else torch.nan_to_num(scores, nan=0.0)


def saco(salience: Tensor, drop: Tensor, pairing: str = "ranking", undefined: str = "nan") -> Tensor:
    """Salience-guided faithfulness coefficient (Wu et al. 2024).

    All pairs i < j of the groups, in ranking order or (``pairing="salience"``) re-sorted by
    descending salience (stable), contribute ``w_ij = s_i - s_j`` if ``drop_i >= drop_j`` (ties
    concordant) else ``-(s_i - s_j)``; ``SaCo = sum(w) / sum(|w|)``. The order matters only for
    tied drops. Where ``sum(|w|) = 0`` (equal saliences, one group): NaN with a warning, or 0.

    Args:
        salience: (B, K) group salience s(G_i), groups in ranking order.
        drop: (B, K) Δ_i, the drop of the scored confidence when G_i is replaced.
        pairing: one of ``PAIRINGS``.
        undefined: one of ``UNDEFINED_SCORES``.
    Returns:
        (B,) float64 in [-1, 1] or NaN.
    """
    check_choice("pairing", pairing, PAIRINGS)
    check_choice("undefined", undefined, UNDEFINED_SCORES)
    s, d = salience.double(), drop.double()
    if pairing == "salience":
        s, by_salience = torch.sort(s, dim=1, descending=True, stable=True)
        d = d.gather(1, by_salience)
    i, j = torch.triu_indices(s.shape[1], s.shape[1], offset=1, device=s.device)
    diff = s[:, i] - s[:, j]
    w = torch.where(d[:, i] >= d[:, j], diff, -diff)
    total = w.abs().sum(dim=1)
    is_undefined = total == 0
    if is_undefined.any() and undefined == "nan":
        warnings.warn(UndefinedScoreWarning("SaCo", "all group saliences equal", int(is_undefined.sum()), len(total)),
                      stacklevel=2)
    return fill_undefined(torch.where(is_undefined, torch.nan, w.sum(dim=1) / total), undefined)


def removed_counts(n_patches: int, patches_per_step: int) -> Tensor:
    """Number of patches removed at each Pixel-Flipping point, starting at 0.

    Returns:
        (S + 1,) long, ``S = ceil(n_patches / patches_per_step)``, last entry ``n_patches``.
    """
    return torch.arange(0, n_patches + patches_per_step, patches_per_step).clamp(max=n_patches)


def pf_auc(curve: Tensor, counts: Tensor, n_patches: int) -> Tensor:
    """Trapezoid area under a Pixel-Flipping curve over the removed fraction, in [0, 1]
    (thesis eq. 4.3; multiply by ``n_patches`` for the thesis tables' scale).

    Args:
        curve: (B, S + 1) p(t | x^(k)), k = 0 the unperturbed image.
        counts: (S + 1,) patches removed at each point (``removed_counts``).
    Returns:
        (B,) float64.
    """
    fractions = counts.to(curve.device, torch.float64) / n_patches
    return torch.trapezoid(curve.double(), x=fractions, dim=1)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of (B, R) tensors -> (B,) float64, NaN for a constant row."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.square().sum(dim=1) * b.square().sum(dim=1)).sqrt()


def _average_ranks(a: Tensor) -> Tensor:
    """(B, R) -> (B, R) ranks starting at 1, ties given their average rank (as scipy)."""
    below = (a[:, None, :] < a[:, :, None]).sum(dim=2)
    equal = (a[:, None, :] == a[:, :, None]).sum(dim=2)
    return below.double() + (equal.double() + 1) / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman rank correlation of (B, R) tensors -> (B,) float64."""
    return pearson(_average_ranks(a), _average_ranks(b))


CORRELATIONS = {"pearson": pearson, "spearman": spearman}


def correlation(a: Tensor, b: Tensor, method: str) -> Tensor:
    """Row-wise correlation ``method`` in ``CORRELATIONS`` of (B, R) tensors -> (B,)."""
    if method not in CORRELATIONS:
        raise ValueError(f"correlation={method!r}; expected one of {sorted(CORRELATIONS)}")
    return CORRELATIONS[method](a, b)
