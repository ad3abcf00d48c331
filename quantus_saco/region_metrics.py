"""Quantus metrics at ViT patch granularity: region perturbation (MoRF / LeRF), SRG and ROAD.

Thin Quantus subclasses (numpy at the edge) over the ranking, counts and AUC of :mod:`quantus_saco.region`;
``region.evaluate_region_perturbation`` and ``region.evaluate_road`` give the same numbers in batched tensor
code. What differs from Quantus's ``RegionPerturbation`` and ``ROAD`` (which step and rank over flattened
pixels or C·H·W elements):

* patches are the ViT's, ranked by their (pooled) attribution, removed whole (all channels);
* the curve is the target's softmax probability with the unperturbed point first (Quantus's region
  perturbation records drops without it), one AUC per image by the trapezoid rule over the removed fraction
  (Quantus's AUC helper calls ``np.trapz``, which numpy >= 2.4 removed);
* MoRF and LeRF for both; ``score_direction`` follows the order (Quantus declares "lower" for LeRF too);
* ROAD's noise is seeded per image (``imputation.road_noise``; Quantus draws it from numpy's global generator),
  it scores every batch (Quantus's ``ROAD.custom_postprocess`` keeps the first batch only) and it returns one
  score per image rather than a dict of accuracies per percentage.

Definitions: docs/method.md §7.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
from quantus.helpers.model.model_interface import ModelInterface
from quantus.metrics.faithfulness import ROAD, RegionPerturbation

from .checks import check_choice
from .imputation import batch_patch_noisy_linear_imputation, road_noise
from .metrics import _check_int, _PatchMetric, register_metric
from .patches import TIE_ORDERS
from .region import ORDERS, ROAD_FRACTIONS, check_fractions, fraction_counts, normalised_auc, removal_order
from .scores import removed_counts

__all__ = ["PatchRegionPerturbation", "PatchSRG", "PatchROAD"]

#: the direction of an AUC per removal order: MoRF curves should fall fast, LeRF curves stay high
ORDER_DIRECTIONS = {"morf": ScoreDirection.LOWER, "lerf": ScoreDirection.HIGHER}


class _RemovalCurves(_PatchMetric):
    """Cumulative patch removal along an attribution ranking, shared by region perturbation and ROAD.

    ``custom_preprocess`` sets ``n_patches`` and ``counts`` (S + 1,), the patches removed at each point from 0.
    """

    tie_order: str
    return_auc_per_sample: bool
    n_patches: int
    counts: torch.Tensor

    def _removal_curves(
        self,
        model: ModelInterface,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: np.ndarray,
        orders: Sequence[str],
        **perturb_kwargs: Any,
    ) -> Dict[str, np.ndarray]:
        """-> {order: (B, S + 1) target softmax probability after removing the first ``counts[k]`` patches}."""
        attr = self._patch_inputs(x_batch, a_batch)
        target, p_original, _ = self._original_outputs(model, x_batch, y_batch)
        curves = {}
        for order in orders:
            ranked = removal_order(attr, order, self.tie_order).numpy()
            curves[order] = np.stack(
                [p_original] + [self._perturbed_outputs(model, x_batch, ranked[:, :n], target, **perturb_kwargs)
                                for n in self.counts[1:].tolist()],
                axis=1,
            )
        return curves

    def auc(self, curves: np.ndarray) -> np.ndarray:
        """(B, S + 1) curves of the last call -> (B,) AUC in [0, 1] (``region.normalised_auc``)."""
        return normalised_auc(torch.as_tensor(curves), self.counts, self.n_patches).numpy()

    @property
    def get_auc_score(self) -> float:
        """Mean AUC over the images of the last call (replaces Quantus's ``np.trapz`` version)."""
        scores = np.asarray(self.evaluation_scores, dtype=float)
        return float(np.nanmean(self.auc(scores) if scores.ndim == 2 else scores))

    def _order_result(self, curves: np.ndarray) -> List[Union[float, List[float]]]:
        """One order's (B, S + 1) curves -> B AUCs, or the curves if ``return_auc_per_sample`` is False."""
        return (self.auc(curves) if self.return_auc_per_sample else curves).tolist()


@register_metric
class PatchRegionPerturbation(_RemovalCurves, RegionPerturbation):
    """Region perturbation (Samek et al. 2017) with ViT patches as regions, MoRF or LeRF.

    Patches are ranked by attribution (``order="morf"``: descending, ``"lerf"``: ascending; ``tie_order`` for
    equal values) and removed cumulatively, ``patches_in_step`` per step, each replaced in the original image by
    ``perturb_baseline`` (default: the per-sample image mean) until all are removed. The curve s_k = p(t | x^(k)),
    k = 0..S, includes the unperturbed point. Per-sample score: trapezoid AUC over the removed fraction, in
    [0, 1]; MoRF: lower is better, LeRF: higher is better (``score_direction`` of the instance). MoRF with the
    same step equals ``PatchPixelFlipping``.

    Example:
        >>> import numpy as np, torch, quantus_saco
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
        >>> x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
        >>> a = np.random.default_rng(1).normal(size=(2, 16))       # (B, P) patch attribution
        >>> lerf = quantus_saco.PatchRegionPerturbation(patch_size=4, order="lerf", disable_warnings=True)
        >>> aucs = lerf(model=model, x_batch=x, y_batch=np.array([0, 2]), a_batch=a)
        >>> len(aucs), all(0 <= v <= 1 for v in aucs), lerf.score_direction.value
        (2, True, 'higher')
    """

    name = "Patch Region Perturbation"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    score_direction = ScoreDirection.LOWER  # for MoRF; an instance sets its order's (ORDER_DIRECTIONS)
    evaluation_category = EvaluationCategory.FAITHFULNESS
    softmax_output = True

    def __init__(
        self,
        patch_size: int,
        order: str = "morf",
        patches_in_step: int = 1,
        tie_order: str = "stable",
        return_auc_per_sample: bool = True,
        **kwargs: Any,
    ):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            order: ``region.ORDERS``, "morf" or "lerf".
            patches_in_step: patches removed per step (>= 1, at most the number of patches).
            tie_order: ``patches.TIE_ORDERS``, order of equal attributions (``region.removal_order``).
            return_auc_per_sample: True: one AUC per image; False: the curves (S + 1 points each).
            **kwargs: as in ``quantus.RegionPerturbation`` (but ``regions_evaluation``: the curve always runs
                until all patches are removed); project defaults as listed in ``_PatchMetric``.
        """
        check_choice("order", order, ORDERS)
        if "regions_evaluation" in kwargs:
            raise ValueError("regions_evaluation is not used: the curve runs until all patches are removed, so that "
                             "its AUC spans [0, 1]; set the resolution with patches_in_step")
        super().__init__(patch_size=_check_int("patch_size", patch_size, 1), order=order, **self._quantus_kwargs(kwargs))
        self.patches_in_step = _check_int("patches_in_step", patches_in_step, 1)
        self.tie_order = check_choice("tie_order", tie_order, TIE_ORDERS)
        self.return_auc_per_sample = return_auc_per_sample
        self.score_direction = ORDER_DIRECTIONS[order]  # type: ignore[misc]

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> None:
        """Check the patch grid and ``patches_in_step`` against the images; set the removal counts."""
        self.n_patches = self._n_patches(x_batch)
        if self.patches_in_step > self.n_patches:
            raise ValueError(f"patches_in_step={self.patches_in_step} exceeds the {self.n_patches} patches of the images")
        self.counts = removed_counts(self.n_patches, self.patches_in_step)

    def evaluate_batch(
        self,
        model: ModelInterface,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> List[Union[float, List[float]]]:
        """(B, C, H, W) images, (B,) targets, (B, c, H, W) attributions
        -> B AUCs, or B curves of S + 1 points if ``return_auc_per_sample`` is False."""
        return self._order_result(self._removal_curves(model, x_batch, y_batch, a_batch, (self.order,))[self.order])


@register_metric
class PatchSRG(PatchRegionPerturbation):
    """Symmetric relevance gain (Blücher et al. 2024): SRG = AUC(LeRF) − AUC(MoRF) of ``PatchRegionPerturbation``.

    Both curves come from the same images, replacement and step; one score per image in [-1, 1], higher is
    better (a map that orders the patches by their effect removes the important ones first under MoRF and last
    under LeRF). Quantus has no SRG; the Quantus base class is ``RegionPerturbation`` (its ``order`` attribute
    is not used: both orders are scored).
    """

    name = "Patch SRG"
    score_direction = ScoreDirection.HIGHER

    def __init__(self, patch_size: int, patches_in_step: int = 1, tie_order: str = "stable", **kwargs: Any):
        """
        Args:
            patch_size, patches_in_step, tie_order, **kwargs: as in ``PatchRegionPerturbation``.
        """
        for name in ("order", "return_auc_per_sample"):
            if name in kwargs:
                raise ValueError(f"{name} does not apply to PatchSRG: it scores the AUCs of both orders")
        super().__init__(patch_size, patches_in_step=patches_in_step, tie_order=tie_order, **kwargs)
        self.score_direction = ScoreDirection.HIGHER  # type: ignore[misc]

    def evaluate_batch(
        self,
        model: ModelInterface,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> List[float]:
        """(B, C, H, W) images, (B,) targets, (B, c, H, W) attributions -> B SRG scores."""
        curves = self._removal_curves(model, x_batch, y_batch, a_batch, ORDERS)
        return (self.auc(curves["lerf"]) - self.auc(curves["morf"])).tolist()


@register_metric
class PatchROAD(_RemovalCurves, ROAD):
    """ROAD (Rong et al. 2022) with ViT patches: removed patches imputed, not replaced by a constant.

    Patches are ranked by attribution (``order``, as ``PatchRegionPerturbation``); at each removal fraction
    f in ``fractions`` the first round(f·P) patches are imputed in the original image, all channels, by
    Quantus's noisy linear imputation (``imputation.batch_patch_noisy_linear_imputation``) with ``noise`` ×
    standard-normal draws seeded per image (``imputation.road_noise(range(N), (C, H, W), seed)`` over the N
    images of one call; the same draws at every fraction). The curve is the target's softmax probability at
    0 and at each fraction; the per-sample score is its trapezoid AUC over the removed fraction divided by the
    last fraction, in [0, 1]: MoRF lower is better, LeRF higher is better. Rong et al.'s accuracy per fraction
    is ``region.evaluate_road``'s "road_{order}_correct" averaged over images.
    """

    name = "Patch ROAD"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    score_direction = ScoreDirection.LOWER  # for MoRF; an instance sets its order's (ORDER_DIRECTIONS)
    evaluation_category = EvaluationCategory.FAITHFULNESS
    softmax_output = True

    _quantus_defaults = {
        **{k: v for k, v in _PatchMetric._quantus_defaults.items() if k != "perturb_baseline"},
        "perturb_func": batch_patch_noisy_linear_imputation,
    }

    def __init__(
        self,
        patch_size: int,
        order: str = "morf",
        fractions: Sequence[float] = ROAD_FRACTIONS,
        noise: float = 0.01,
        seed: int = 0,
        tie_order: str = "stable",
        return_auc_per_sample: bool = True,
        **kwargs: Any,
    ):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            order: ``region.ORDERS``, "morf" or "lerf".
            fractions: strictly increasing removal fractions in (0, 1) (``region.fraction_counts``).
            noise: standard deviation of the imputation noise, in the units of the images (>= 0).
            seed: seed of the noise draws (>= 0).
            tie_order: ``patches.TIE_ORDERS``, order of equal attributions.
            return_auc_per_sample: True: one AUC per image; False: the curves (F + 1 points each).
            **kwargs: as in ``quantus.ROAD`` (but ``percentages``, set by ``fractions``); ``perturb_func`` is
                called as ``perturb_func(arr=, indices=, image_shape=, patch_size=, noise_draws=, noise=,
                **perturb_func_kwargs)``, default ``imputation.batch_patch_noisy_linear_imputation``; other
                project defaults as listed in ``_PatchMetric`` (no ``perturb_baseline``: removed patches are imputed).
        """
        check_choice("order", order, ORDERS)
        for name in ("percentages", "perturb_baseline"):
            if name in kwargs:
                raise ValueError(f"{name} does not apply to PatchROAD: removal fractions are set by fractions, and "
                                 "removed patches are imputed, not replaced by a baseline")
        fractions = check_fractions(fractions)  # against the images' patch count in custom_preprocess
        if not noise >= 0:
            raise ValueError(f"noise={noise!r}; expected a standard deviation >= 0")
        super().__init__(percentages=[100 * f for f in fractions], noise=noise, **self._quantus_kwargs(kwargs))
        self.patch_size = _check_int("patch_size", patch_size, 1)
        self.order = order
        self.fractions = fractions
        self.seed = _check_int("seed", seed, 0)
        self.tie_order = check_choice("tie_order", tie_order, TIE_ORDERS)
        self.return_auc_per_sample = return_auc_per_sample
        self.score_direction = ORDER_DIRECTIONS[order]  # type: ignore[misc]

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> Dict[str, np.ndarray]:
        """Check the fractions against the patch grid; draw the noise of all N images -> ``noise_batch`` (N, F)."""
        self.n_patches = self._n_patches(x_batch)
        self.counts = fraction_counts(self.fractions, self.n_patches)
        N, C, H, W = x_batch.shape
        return {"noise_batch": road_noise(range(N), (C, H, W), self.seed).reshape(N, -1).numpy()}

    def evaluate_batch(
        self,
        model: ModelInterface,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: np.ndarray,
        noise_batch: np.ndarray,
        **kwargs: Any,
    ) -> List[Union[float, List[float]]]:
        """(B, C, H, W) images, (B,) targets, (B, c, H, W) attributions, (B, C·H·W) noise draws
        -> B AUCs, or B curves of F + 1 points if ``return_auc_per_sample`` is False."""
        curves = self._removal_curves(model, x_batch, y_batch, a_batch, (self.order,), noise_draws=noise_batch)
        return self._order_result(curves[self.order])
