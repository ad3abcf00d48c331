"""Quantus metrics at ViT patch granularity: SaCo, patch Faithfulness Correlation, patch Pixel-Flipping.

Thin Quantus subclasses (numpy at the edge); the math lives in ``patches`` and ``scores``.
Definitions: docs/method.md §4. Each metric's ``evaluate_batch`` runs one batched forward of the
``B`` images per perturbation (group, run or step); ``quantus_saco.engine`` gives the same
numbers with far fewer, larger forwards.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Optional, Union

import numpy as np
import torch
from quantus.helpers import warn
from quantus.helpers.constants import AVAILABLE_METRICS
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
from quantus.helpers.model.model_interface import ModelInterface
from quantus.helpers.perturbation_utils import make_perturb_func
from quantus.metrics.base import Metric
from quantus.metrics.faithfulness import FaithfulnessCorrelation, PixelFlipping

from .checks import check_choice, check_patch_size, check_targets
from .engine import SACO_TARGETS
from .patches import (
    REPLACEMENTS, SUBSET_SAMPLINGS, TIE_ORDERS, numpy_global_subsets, patch_grid, patch_map, pool_patches,
    rank_patches, running_mean_values, sample_subsets, split_bounds,
)
from .perturb import batch_patch_replacement_by_indices
from .scores import CORRELATIONS, PAIRINGS, UNDEFINED_SCORES, fill_undefined, pf_auc, removed_counts, saco

__all__ = ["SaCo", "PatchFaithfulnessCorrelation", "PatchPixelFlipping", "register_metric"]

AUC_SCALES = ("unit", "patches")


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: list ``cls`` in ``quantus.AVAILABLE_METRICS`` under its evaluation
    category and name. A different metric already registered under that name raises."""
    category = AVAILABLE_METRICS.setdefault(cls.evaluation_category.value, {})
    existing = category.get(cls.name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"Quantus metric name {cls.name!r} is already taken by {existing!r}")
    category[cls.name] = cls
    return cls


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r}; expected an int >= {low}")
    return int(value)


def _predict(model: ModelInterface, x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) channel-first images -> (B, n_classes) model outputs."""
    return model.predict(model.shape_input(x, x.shape, channel_first=True, batched=True))


class _PatchMetric:
    """Shared glue of the three patch metrics.

    * ``__init__``: each metric declares only its own parameters; its other keyword arguments
      are the Quantus ones (``abs``, ``normalise``, ``normalise_func``, ``normalise_func_kwargs``,
      ``perturb_func``, ``perturb_baseline``, ``perturb_func_kwargs``, ``return_aggregate``,
      ``aggregate_func``, ``default_plot_func``, ``disable_warnings``, ``display_progressbar``),
      passed on unchanged by ``_quantus_kwargs`` over the project defaults, which differ from
      Quantus's where it matters here:

      - ``normalise=False``: raw attributions;
      - ``return_aggregate=False``: one score per image;
      - ``aggregate_func=np.nanmean``: undefined (NaN) samples excluded;
      - ``perturb_func=batch_patch_replacement_by_indices``: Quantus batched perturbation with
        patch indices, called as ``perturb_func(arr=, indices=, image_shape=, patch_size=,
        perturb_baseline=, **perturb_func_kwargs)``;
      - ``perturb_baseline="mean"``: the per-sample image mean (docs/method.md §4).

      ``perturb_func=None`` and ``aggregate_func=None`` also mean the project default; the
      other arguments default to False or None, which Quantus resolves as usual (e.g.
      ``normalise_func=None`` is ``normalise_by_max``).
    * ``__call__``: fixes the model output (logits or softmax) the definition uses and
      accepts patch-grid attributions, (B, P) or (B, gh, gw), by repeating them over pixels.
    * ``evaluate_batch`` helpers: numpy -> patch tensors, perturbed forwards via ``perturb_func``.
    * NaN scores are counted in ``n_undefined`` after each call.
    """

    softmax_output: ClassVar[bool]
    patch_size: int
    perturb_func: Callable[..., np.ndarray]
    n_undefined: int = 0

    _quantus_defaults: ClassVar[Dict[str, Any]] = dict(
        abs=False,
        normalise=False,
        normalise_func=None,
        normalise_func_kwargs=None,
        perturb_func=batch_patch_replacement_by_indices,
        perturb_baseline="mean",
        perturb_func_kwargs=None,
        return_aggregate=False,
        aggregate_func=np.nanmean,
        default_plot_func=None,
        disable_warnings=False,
        display_progressbar=False,
    )

    @classmethod
    def _quantus_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """A metric's Quantus keyword arguments over the project defaults (see the class docstring).
        Names Quantus does not know are kept, for Quantus to refuse."""
        merged = {**cls._quantus_defaults, **kwargs}
        for name in ("perturb_func", "aggregate_func"):
            if merged[name] is None:
                merged[name] = cls._quantus_defaults[name]
        return merged

    def __call__(
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: Optional[np.ndarray] = None,
        **kwargs: Any,
    ) -> List[Any]:
        """Quantus ``Metric.__call__``; ``y_batch=None`` evaluates the predicted class.

        Args:
            x_batch: (B, C, H, W) images (Quantus requires channel-first for torch models).
            y_batch: (B,) target classes (integers >= 0) or None.
            a_batch: (B, 1 or C, H, W) or (B, H, W) pixel maps (pooled by patch mean),
                or (B, P) / (B, gh, gw) patch grids; None to call ``explain_func``
                (which, as Quantus asserts, must return pixel maps).
        """
        softmax = kwargs.pop("softmax", None)
        if softmax is not None and softmax != self.softmax_output:
            raise ValueError(
                f"softmax={softmax!r}; {type(self).__name__} is defined on "
                f"{'softmax probabilities' if self.softmax_output else 'logits'} (softmax={self.softmax_output})"
            )
        for name in ("s_batch", "channel_first", "explain_func", "explain_func_kwargs", "model_predict_kwargs"):
            kwargs.setdefault(name, None)
        patch_grid(tuple(np.shape(x_batch)[-2:]), self.patch_size)  # sizes divisible by the patch first
        check_patch_size(model, self.patch_size)
        if y_batch is not None:
            y_batch = check_targets(y_batch, len(x_batch))
        if a_batch is not None:
            a_batch = self._pixel_attributions(np.asarray(a_batch), np.shape(x_batch))
        return super().__call__(  # type: ignore[misc]
            model=model, x_batch=x_batch, y_batch=y_batch, a_batch=a_batch, softmax=self.softmax_output, **kwargs
        )

    def _pixel_attributions(self, a: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        """Patch grids -> (B, 1, H, W) maps; accepted pixel maps unchanged; anything else raises."""
        if len(x_shape) != 4:
            raise ValueError(f"x_batch has shape {x_shape}; expected (B, C, H, W) images")
        B, C, H, W = x_shape
        gh, gw = patch_grid((H, W), self.patch_size)
        shape = a.shape[1:]
        if a.shape[0] == B and shape in ((gh * gw,), (gh, gw), (1, gh, gw)):
            return patch_map(torch.from_numpy(a.reshape(B, gh * gw)), (H, W), self.patch_size).numpy()
        if a.shape[0] == B and shape in ((H, W), (1, H, W), (C, H, W)):
            return a
        raise ValueError(
            f"attribution shape {a.shape} matches neither the ({B}, {C}, {H}, {W}) images nor their "
            f"{gh}x{gw} patch grid; expected (B, P), (B, gh, gw), (B, H, W), (B, 1, H, W) or (B, C, H, W)"
        )

    def _n_patches(self, x_batch: np.ndarray) -> int:
        gh, gw = patch_grid(x_batch.shape[-2:], self.patch_size)
        return gh * gw

    def _patch_inputs(self, x_batch: np.ndarray, a_batch: np.ndarray) -> torch.Tensor:
        """Validate a batch; returns the (B, P) float64 patch attribution."""
        for name, arr in (("x_batch", x_batch), ("a_batch", a_batch)):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or Inf values")
        a = torch.from_numpy(np.ascontiguousarray(a_batch, dtype=np.float64))
        return pool_patches(a, self.patch_size)

    def _perturbed_predictions(
        self, model: ModelInterface, x_batch: np.ndarray, indices: np.ndarray, **perturb_kwargs: Any
    ) -> np.ndarray:
        """(B, n_classes) model outputs with the patches ``indices`` (B, I) of each image replaced;
        ``perturb_kwargs`` (e.g. a per-patch ``perturb_baseline``) go to ``perturb_func``."""
        B = len(x_batch)
        x_perturbed = self.perturb_func(
            arr=x_batch.reshape(B, -1), indices=indices, image_shape=x_batch.shape[1:], patch_size=self.patch_size,
            **perturb_kwargs,
        )
        return _predict(model, x_perturbed.reshape(x_batch.shape))

    def _perturbed_outputs(
        self, model: ModelInterface, x_batch: np.ndarray, indices: np.ndarray, target: np.ndarray, **perturb_kwargs: Any
    ) -> np.ndarray:
        """Model output for ``target`` with the patches ``indices`` (B, I) of each image replaced -> (B,)."""
        return self._perturbed_predictions(model, x_batch, indices, **perturb_kwargs)[np.arange(len(x_batch)), target]

    @staticmethod
    def _original_outputs(model: ModelInterface, x_batch: np.ndarray, y_batch: Optional[np.ndarray]):
        """-> ((B,) target classes, (B,) model output for them, (B,) top-class output) on the unperturbed images."""
        out = _predict(model, x_batch)
        target = out.argmax(axis=1) if y_batch is None else check_targets(y_batch, len(out), out.shape[1])
        return target, out[np.arange(len(out)), target], out.max(axis=1)

    def custom_postprocess(self, **kwargs: Any) -> None:
        """Count undefined (NaN) per-sample scores of the last call in ``n_undefined``."""
        scores = np.asarray(self.evaluation_scores, dtype=float)
        self.n_undefined = int(np.isnan(scores.reshape(len(scores), -1)).any(axis=1).sum())


@register_metric
class SaCo(_PatchMetric, Metric[List[float]]):
    """Salience-guided Faithfulness Coefficient (Wu et al., CVPR 2024) at patch level.

    Patches are ranked by attribution and split into ``n_groups`` groups as
    ``np.array_split`` splits the ranking; each group is replaced on its own by the
    per-sample image mean; Δ_i is the drop of the target's softmax probability and
    group salience is the sum of its attributions. SaCo in [-1, 1], higher is better;
    NaN (with a warning, counted in ``n_undefined``) when all group saliences are equal or
    there is one group, or 0 with ``undefined="zero"``. The options ``target``, ``tie_order``,
    ``pairing`` and ``undefined`` select the thesis author's variants (docs/method.md §4).

    Example:
        >>> import numpy as np, torch, quantus, quantus_saco
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
        >>> x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
        >>> a = np.random.default_rng(1).normal(size=(2, 4, 4))      # (B, gh, gw) patch grid
        >>> metric = quantus_saco.SaCo(patch_size=4, n_groups=4, disable_warnings=True)
        >>> scores = metric(model=model, x_batch=x, y_batch=np.array([0, 2]), a_batch=a)
        >>> len(scores), all(-1 <= s <= 1 for s in scores)
        (2, True)
        >>> "SaCo" in quantus.available_metrics()["Faithfulness"]
        True
    """

    name = "SaCo"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    score_direction = ScoreDirection.HIGHER
    evaluation_category = EvaluationCategory.FAITHFULNESS
    softmax_output = True

    def __init__(
        self,
        patch_size: int,
        n_groups: int = 10,
        target: str = "original",
        tie_order: str = "stable",
        pairing: str = "ranking",
        undefined: str = "nan",
        **kwargs: Any,
    ):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            n_groups: K >= 1 groups (at most the number of patches); the thesis used 49 for 196 patches.
            target: ``engine.SACO_TARGETS``: "original": Δ_i = p(t|x) - p(t|x_i); "perturbed_top":
                Δ_i = max_c p(c|x) - max_c p(c|x_i).
            tie_order: ``patches.TIE_ORDERS``, order of equal attributions in the ranking.
            pairing: ``scores.PAIRINGS``: pairs in ranking order or groups re-sorted by salience.
            undefined: ``scores.UNDEFINED_SCORES``: an undefined score is NaN or 0.
            **kwargs: as in ``quantus.Metric``, plus ``perturb_func``, ``perturb_baseline`` and
                ``perturb_func_kwargs`` as in the Quantus perturbation metrics (the groups are
                replaced with them); project defaults as listed in ``_PatchMetric``.
        """
        quantus_kwargs = self._quantus_kwargs(kwargs)
        perturb_func, perturb_baseline, perturb_func_kwargs = (
            quantus_kwargs.pop(name) for name in ("perturb_func", "perturb_baseline", "perturb_func_kwargs")
        )
        super().__init__(**quantus_kwargs)
        self.patch_size = _check_int("patch_size", patch_size, 1)
        self.n_groups = _check_int("n_groups", n_groups, 1)
        self.target = check_choice("target", target, SACO_TARGETS)
        self.tie_order = check_choice("tie_order", tie_order, TIE_ORDERS)
        self.pairing = check_choice("pairing", pairing, PAIRINGS)
        self.undefined = check_choice("undefined", undefined, UNDEFINED_SCORES)
        self.perturb_func = make_perturb_func(perturb_func, perturb_func_kwargs, perturb_baseline=perturb_baseline)
        if not self.disable_warnings:
            warn.warn_parameterisation(
                metric_name=self.__class__.__name__,
                sensitive_params="the number of groups 'n_groups' and the baseline value 'perturb_baseline'",
                citation=(
                    "Wu, Z. et al. 'On the Faithfulness of Vision Transformer Explanations.' CVPR (2024)"
                ),
            )

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> None:
        """Check the patch grid and ``n_groups`` against the images."""
        n_patches = self._n_patches(x_batch)
        if self.n_groups > n_patches:
            raise ValueError(f"n_groups={self.n_groups} exceeds the {n_patches} patches of the images")

    def evaluate_batch(
        self,
        model: ModelInterface,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: np.ndarray,
        **kwargs: Any,
    ) -> List[float]:
        """(B, C, H, W) images, (B,) targets, (B, c, H, W) attributions -> B SaCo scores."""
        attr = self._patch_inputs(x_batch, a_batch)
        order = rank_patches(attr, self.tie_order)
        target, p_target, p_top = self._original_outputs(model, x_batch, y_batch)
        bounds = split_bounds(attr.shape[1], self.n_groups)
        salience = torch.stack([attr.gather(1, order[:, a:b]).sum(dim=1) for a, b in bounds], dim=1)
        rows = np.arange(len(x_batch))
        drops = []
        for a, b in bounds:
            p = self._perturbed_predictions(model, x_batch, order[:, a:b].numpy())
            drops.append(p_target - p[rows, target] if self.target == "original" else p_top - p.max(axis=1))
        return saco(salience, torch.from_numpy(np.stack(drops, axis=1)), self.pairing, self.undefined).tolist()


@register_metric
class PatchFaithfulnessCorrelation(_PatchMetric, FaithfulnessCorrelation):
    """Faithfulness Correlation (Bhatt et al. 2020) with subsets counted in patches.

    For each image, ``nr_runs`` random subsets of ``subset_size`` patches (all channels)
    are replaced by the per-sample mean; the correlation between the target logit drop
    y_t(x) - y_t(x_S) and the sum of the subset's patch attributions is the score
    (higher is better). Subsets come from ``patches.sample_subsets(range(N), nr_runs, P,
    subset_size, seed)`` over the N images of one call (or, with ``sampling="numpy_global"``,
    ``numpy_global_subsets(N, ...)``), so results are reproducible and equal ``quantus_saco.engine``
    for the same seed. An undefined correlation (a constant row) is NaN, or 0 with ``undefined="zero"``.
    """

    name = "Patch Faithfulness Correlation"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    softmax_output = False

    def __init__(
        self,
        patch_size: int,
        nr_runs: int = 100,
        subset_size: int = 20,
        correlation: str = "pearson",
        seed: int = 0,
        sampling: str = "per_image",
        undefined: str = "nan",
        **kwargs: Any,
    ):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            nr_runs: random subsets per image (>= 2).
            subset_size: patches per subset, 1 <= subset_size < number of patches (thesis: 20 of 196).
            correlation: "pearson" or "spearman".
            seed: seed of the subset sampling.
            sampling: ``patches.SUBSET_SAMPLINGS``: "per_image" (``sample_subsets``) or "numpy_global"
                (``numpy_global_subsets``, the thesis author's draws).
            undefined: ``scores.UNDEFINED_SCORES``: an undefined correlation is NaN or 0.
            **kwargs: as in ``quantus.FaithfulnessCorrelation`` (but ``similarity_func``, set by
                ``correlation``); project defaults as listed in ``_PatchMetric``.
        """
        if correlation not in CORRELATIONS:
            raise ValueError(f"correlation={correlation!r}; expected one of {sorted(CORRELATIONS)}")
        super().__init__(
            similarity_func=CORRELATIONS[correlation],
            nr_runs=_check_int("nr_runs", nr_runs, 2),
            subset_size=_check_int("subset_size", subset_size, 1),
            **self._quantus_kwargs(kwargs),
        )
        self.patch_size = _check_int("patch_size", patch_size, 1)
        self.correlation = correlation
        self.seed = seed
        self.sampling = check_choice("sampling", sampling, SUBSET_SAMPLINGS)
        self.undefined = check_choice("undefined", undefined, UNDEFINED_SCORES)

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> Dict[str, np.ndarray]:
        """Check the patch grid; draw the subsets of all N images -> ``subsets_batch`` (N, nr_runs, subset_size)."""
        n_patches = self._n_patches(x_batch)
        if self.sampling == "numpy_global":
            subsets = numpy_global_subsets(len(x_batch), self.nr_runs, n_patches, self.subset_size, self.seed)
        else:
            subsets = sample_subsets(range(len(x_batch)), self.nr_runs, n_patches, self.subset_size, self.seed)
        return {"subsets_batch": subsets.numpy()}

    def evaluate_batch(
        self,
        model: ModelInterface,
        x_batch: np.ndarray,
        y_batch: Optional[np.ndarray],
        a_batch: np.ndarray,
        subsets_batch: np.ndarray,
        **kwargs: Any,
    ) -> List[float]:
        """(B, C, H, W) images, (B,) targets, (B, c, H, W) attributions,
        (B, nr_runs, subset_size) subsets -> B correlations."""
        attr = self._patch_inputs(x_batch, a_batch)
        target, y_original, _ = self._original_outputs(model, x_batch, y_batch)
        subsets = torch.from_numpy(subsets_batch)
        B, R, k = subsets.shape
        attr_sums = attr.gather(1, subsets.reshape(B, R * k)).reshape(B, R, k).sum(dim=2)
        drops = np.stack(
            [y_original - self._perturbed_outputs(model, x_batch, subsets_batch[:, r], target) for r in range(R)],
            axis=1,
        )
        return fill_undefined(self.similarity_func(attr_sums, torch.from_numpy(drops)), self.undefined).tolist()


@register_metric
class PatchPixelFlipping(_PatchMetric, PixelFlipping):
    """Pixel-Flipping (Bach et al. 2015), MoRF, with steps counted in patches.

    Patches are removed cumulatively in descending attribution order, ``patches_in_step``
    per step, each step replacing them in the original image by its (fixed) per-sample
    mean, or with ``replacement="running_mean"`` by the mean of the image as perturbed so far
    (the thesis author's code); ``tie_order`` orders equal attributions. The curve s_k = p(t | x^(k)), k = 0..S, includes the unperturbed point.
    Per-sample score: trapezoid AUC over the removed fraction, in [0, 1] (lower is better),
    or times the number of patches with ``auc_scale="patches"`` (thesis tables).
    """

    name = "Patch Pixel-Flipping"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    softmax_output = True

    def __init__(
        self,
        patch_size: int,
        patches_in_step: int = 1,
        return_auc_per_sample: bool = True,
        auc_scale: str = "unit",
        tie_order: str = "stable",
        replacement: str = "original_mean",
        **kwargs: Any,
    ):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            patches_in_step: patches removed per step (>= 1, at most the number of patches).
            return_auc_per_sample: True: one AUC per image; False: the curves (S + 1 points each).
            auc_scale: "unit" (AUC in [0, 1]) or "patches" (AUC x number of patches).
            tie_order: ``patches.TIE_ORDERS``, order of equal attributions in the ranking.
            replacement: ``patches.REPLACEMENTS``: "original_mean" or "running_mean" (needs
                ``perturb_baseline="mean"`` and a ``perturb_func`` taking (N, P) per-patch baselines).
            **kwargs: as in ``quantus.PixelFlipping`` (but ``features_in_step``, set by
                ``patches_in_step``); project defaults as listed in ``_PatchMetric``.
        """
        if auc_scale not in AUC_SCALES:
            raise ValueError(f"auc_scale={auc_scale!r}; expected one of {AUC_SCALES}")
        check_choice("tie_order", tie_order, TIE_ORDERS)
        if check_choice("replacement", replacement, REPLACEMENTS) == "running_mean" and kwargs.get("perturb_baseline", "mean") != "mean":
            raise ValueError(f"replacement='running_mean' replaces by the image mean; perturb_baseline="
                             f"{kwargs['perturb_baseline']!r} contradicts it")
        super().__init__(
            features_in_step=_check_int("patches_in_step", patches_in_step, 1),
            return_auc_per_sample=return_auc_per_sample,
            **self._quantus_kwargs(kwargs),
        )
        self.patch_size = _check_int("patch_size", patch_size, 1)
        self.auc_scale = auc_scale
        self.tie_order = tie_order
        self.replacement = replacement

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> None:
        """Check the patch grid and ``patches_in_step`` against the images."""
        self.n_patches = self._n_patches(x_batch)
        if self.features_in_step > self.n_patches:
            raise ValueError(f"patches_in_step={self.features_in_step} exceeds the {self.n_patches} patches of the images")

    def auc(self, curves: np.ndarray) -> np.ndarray:
        """(B, S + 1) curves of the last call -> (B,) AUC in this metric's ``auc_scale``."""
        auc = pf_auc(torch.as_tensor(curves), removed_counts(self.n_patches, self.features_in_step), self.n_patches)
        return (auc * (self.n_patches if self.auc_scale == "patches" else 1)).numpy()

    @property
    def get_auc_score(self) -> float:
        """Mean AUC over the images of the last call (replaces Quantus's ``np.trapz`` version)."""
        scores = np.asarray(self.evaluation_scores, dtype=float)
        return float(np.nanmean(self.auc(scores) if scores.ndim == 2 else scores))

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
        attr = self._patch_inputs(x_batch, a_batch)
        order = rank_patches(attr, self.tie_order)
        target, p_original, _ = self._original_outputs(model, x_batch, y_batch)
        counts = removed_counts(self.n_patches, self.features_in_step)
        perturb_kwargs = {}
        if self.replacement == "running_mean":
            values = running_mean_values(torch.from_numpy(x_batch), order, counts, self.patch_size)
            perturb_kwargs["perturb_baseline"] = values.numpy()
        curves = np.stack(
            [p_original] + [self._perturbed_outputs(model, x_batch, order[:, :n].numpy(), target, **perturb_kwargs)
                            for n in counts[1:].tolist()],
            axis=1,
        )
        return (self.auc(curves) if self.return_auc_per_sample else curves).tolist()
