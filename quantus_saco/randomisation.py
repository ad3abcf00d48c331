"""Randomisation sanity checks on patch maps: MPRT (Adebayo et al. 2018) and Random Logit (Sixt et al. 2020).

Thin subclasses of Quantus's ``MPRT`` and ``RandomLogit``. Both explain the images again (on a randomised model,
for another class), so they need an ``explain_func``; here it may return patch maps, (B, P) or (B, gh, gw),
which are repeated over their pixels for Quantus (which asserts pixel-shaped explanations). Similarity is
Spearman's ρ by default (Quantus's ``correlation_spearman`` values, per row: :func:`spearman_rows`, NaN for a
constant map); on maps constant within patches it equals ρ of the patch vectors (each patch's pixels share one
average rank, a linear function of the patch's rank).

What differs from Quantus:

* both leave the global random state as they found it (Quantus's ``MPRT`` calls ``torch.manual_seed`` before
  each layer's reset; ``RandomLogit`` calls ``np.random.seed`` for every batch);
* ``RandomLogit`` compares with ρ instead of SSIM (defined on 2-D images, not on flattened maps) and reads
  the number of classes from the model's outputs (Quantus's default is 1000);
* ``MPRT``'s average over layers leaves out the unrandomised model's similarity (Quantus skips a key "orig"
  that it never writes, so its average includes the "original" entry);
* project defaults as the other patch metrics: raw maps (``abs=False``, ``normalise=False``; Quantus's MPRT
  takes absolute values and normalises).

Quantus's ``EfficientMPRT`` and ``SmoothMPRT`` are not offered: eMPRT scores a histogram entropy whose bin
count a rule chooses from the number of attribution values, so a patch map repeated over its pixels gets other
bins than the patch vector and the score is not a patch-level one without replacing its ``__call__``; and
``SmoothMPRT`` explains the noisy inputs with ``quantus.explain`` whatever ``explain_func`` is given (and draws
the noise from numpy's global generator, unseeded), so a patch-level method cannot be checked with it.

Definitions: docs/method.md §7.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
from quantus.metrics.randomisation import MPRT, RandomLogit
from scipy.stats import rankdata

from .checks import check_choice, check_targets
from .metrics import _check_int, _PatchMetric, _predict, register_metric
from .scores import pearson

__all__ = ["PatchMPRT", "PatchRandomLogit", "WeightDependence", "weight_dependence", "spearman_rows",
           "LAYER_ORDERS"]

#: Quantus's layer randomisation orders: cascading from the output layer or from the input, or one layer at a time
LAYER_ORDERS = ("top_down", "bottom_up", "independent")


@contextlib.contextmanager
def _global_rngs_restored() -> Iterator[None]:
    """Restore numpy's and torch's (CPU and CUDA) global random states on exit."""
    state = np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        np.random.set_state(state)


def spearman_rows(a: np.ndarray, b: np.ndarray, batched: bool = True, **_: Any) -> Any:
    """Spearman ρ between row i of ``a`` and row i of ``b``, (N, F) each -> (N,); a float for unbatched 1-D maps:
    :func:`~quantus_saco.scores.pearson` of the rows' average ranks (scipy's ``rankdata``: pixel maps are too long for
    the pairwise ranks of ``scores.spearman``). Quantus's ``correlation_spearman`` gives the same values but fails on
    a batch where one map is constant (scipy then returns one NaN for the whole batch); here only that row's ρ is
    NaN (undefined)."""
    ranks = [torch.from_numpy(rankdata(np.atleast_2d(np.asarray(x, dtype=float)), axis=1)) for x in (a, b)]
    rho = pearson(*ranks).numpy()
    return rho if batched else float(rho[0])


class _PatchRandomisation(_PatchMetric):
    """Shared glue of the randomisation checks: patch-map ``explain_func``, targets required, RNGs restored.

    The Quantus keyword arguments (``abs``, ``normalise``, ``normalise_func``, ``normalise_func_kwargs``,
    ``return_aggregate``, ``aggregate_func``, ``default_plot_func``, ``disable_warnings``,
    ``display_progressbar``) default as in ``_PatchMetric`` (raw maps, one score per image, ``np.nanmean``).
    """

    softmax_output = False
    _quantus_defaults = {k: v for k, v in _PatchMetric._quantus_defaults.items() if not k.startswith("perturb_")}

    @classmethod
    def _quantus_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """A metric's Quantus keyword arguments over the project defaults; ``aggregate_func=None`` is the default."""
        merged = {**cls._quantus_defaults, **kwargs}
        if merged["aggregate_func"] is None:
            merged["aggregate_func"] = cls._quantus_defaults["aggregate_func"]
        return merged

    def __call__(  # type: ignore[override]
        self,
        model: Any,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        a_batch: Optional[np.ndarray] = None,
        **kwargs: Any,
    ) -> Any:
        """Quantus ``__call__`` of the check.

        Args:
            x_batch: (B, C, H, W) images.
            y_batch: (B,) target classes (required: the checks explain them again).
            a_batch: maps of the unchanged model as ``_PatchMetric`` accepts them, or None to compute them.
            **kwargs: as in Quantus; ``explain_func(model=, inputs=, targets=, **explain_func_kwargs)`` is
                required and may return (B, P) or (B, gh, gw) patch maps or pixel maps (numpy or torch).
        """
        if y_batch is None:
            raise ValueError(f"y_batch=None; {type(self).__name__} explains given classes: pass (B,) targets")
        explain_func = kwargs.get("explain_func")
        if explain_func is None:
            raise ValueError(f"explain_func=None; {type(self).__name__} explains the images again and needs it")
        kwargs["explain_func"] = functools.partial(self._explain_pixels, explain_func)
        with _global_rngs_restored():
            return super().__call__(model, x_batch, y_batch, a_batch, **kwargs)

    def _explain_pixels(self, explain_func: Callable[..., Any], model: Any, inputs: np.ndarray, targets: np.ndarray,
                        **kwargs: Any) -> np.ndarray:
        """``explain_func``'s maps of (B, C, H, W) ``inputs`` as (B, 1, H, W) (patch maps) or as returned (pixel maps)."""
        a = explain_func(model=model, inputs=inputs, targets=targets, **kwargs)
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        return self._pixel_attributions(np.asarray(a), np.shape(inputs))


@register_metric
class PatchMPRT(_PatchRandomisation, MPRT):
    """Model parameter randomisation test (Adebayo et al. 2018) on patch maps.

    Quantus's ``MPRT``: the layers with a ``reset_parameters`` method (for a timm ViT: the linear, norm and
    patch-embedding layers; ``cls_token`` and ``pos_embed`` keep their values) are re-initialised one by one,
    cascading from the output (``layer_order="top_down"``, the default), each after ``torch.manual_seed(seed +
    1)``; after each, the maps are explained again on a copy of the model and compared with the maps of the
    unchanged model (ρ by default). By default one dict {layer: (N,) similarities} with "original" first;
    ``return_last_correlation=True``: (N,) the similarity after all layers are randomised;
    ``return_average_correlation=True``: (N,) its mean over the randomised layers. Lower is better: a map that
    depends on the learned weights changes when they are randomised.
    """

    name = "Patch Model Parameter Randomisation Test"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    score_direction = ScoreDirection.LOWER
    evaluation_category = EvaluationCategory.RANDOMISATION

    def __init__(
        self,
        patch_size: int,
        layer_order: str = "top_down",
        seed: int = 42,
        similarity_func: Optional[Callable[..., Any]] = None,
        return_average_correlation: bool = False,
        return_last_correlation: bool = False,
        skip_layers: bool = False,
        **kwargs: Any,
    ):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            layer_order: ``LAYER_ORDERS``.
            seed: seed of the layer re-initialisation (>= 0).
            similarity_func: ``f(a (N, F), b (N, F), batched=True) -> (N,)``; None: :func:`spearman_rows`
                (Quantus's Spearman, NaN for a constant map).
            return_average_correlation, return_last_correlation, skip_layers: as in ``quantus.MPRT``
                (``skip_layers``: explain only on the fully randomised model).
            **kwargs: as in ``quantus.MPRT``; project defaults as listed in ``_PatchRandomisation``.
        """
        super().__init__(
            similarity_func=similarity_func or spearman_rows,
            layer_order=check_choice("layer_order", layer_order, LAYER_ORDERS),
            seed=_check_int("seed", seed, 0),
            return_average_correlation=return_average_correlation,
            return_last_correlation=return_last_correlation,
            skip_layers=skip_layers,
            **self._quantus_kwargs(kwargs),
        )
        self.patch_size = _check_int("patch_size", patch_size, 1)

    def recompute_average_correlation_per_sample(self) -> List[float]:
        """(N,) mean similarity over the randomised layers (the "original" entry left out)."""
        layers = [scores for name, scores in self.evaluation_scores.items() if name != "original"]
        return np.mean(np.asarray(layers, dtype=float), axis=0).tolist()


@register_metric
class PatchRandomLogit(_PatchRandomisation, RandomLogit):
    """Random-logit test (Sixt et al. 2020) on patch maps.

    Quantus's ``RandomLogit``: for each image a class other than the target is drawn (numpy seeded with ``seed``
    at every Quantus batch, so the draw depends on the image's position in its batch), the map for it is
    computed with ``explain_func`` and compared with the target's map (ρ by default). One score per image;
    lower is better: a map that explains the target differs from the map of another class.
    """

    name = "Patch Random Logit"
    data_applicability = {DataType.IMAGE}
    model_applicability = {ModelType.TORCH}
    score_direction = ScoreDirection.LOWER
    evaluation_category = EvaluationCategory.RANDOMISATION

    def __init__(self, patch_size: int, seed: int = 42, similarity_func: Optional[Callable[..., Any]] = None,
                 **kwargs: Any):
        """
        Args:
            patch_size: side of the square ViT patch, in pixels.
            seed: seed of the other classes' draw (>= 0).
            similarity_func: ``f(a (N, F), b (N, F), batched=True) -> (N,)``; None: :func:`spearman_rows`
                (Quantus's Spearman, NaN for a constant map).
            **kwargs: as in ``quantus.RandomLogit`` (but ``num_classes``: the model's number of outputs);
                project defaults as listed in ``_PatchRandomisation``.
        """
        if "num_classes" in kwargs:
            raise ValueError("num_classes is not a parameter of PatchRandomLogit: it is the model's number of outputs")
        super().__init__(similarity_func=similarity_func or spearman_rows, seed=_check_int("seed", seed, 0),
                         **self._quantus_kwargs(kwargs))
        self.patch_size = _check_int("patch_size", patch_size, 1)

    def custom_preprocess(self, **kwargs: Any) -> None:
        """Set ``num_classes`` from the model's outputs; check the targets against it."""
        super().custom_preprocess(**kwargs)
        x_batch = kwargs["x_batch"]
        self.num_classes = _predict(kwargs["model"], x_batch[:1]).shape[1]
        if self.num_classes < 2:
            raise ValueError(f"the model has {self.num_classes} output; the random-logit test needs another class")
        check_targets(kwargs["y_batch"], len(x_batch), self.num_classes)


@dataclass(frozen=True)
class WeightDependence:
    """Does a method's map depend on the model's weights? Per-image similarities and verdicts.

    Attributes:
        mprt: (N,) ρ between the map on the trained model and on the fully randomised one (``PatchMPRT``,
            layers re-initialised top-down, ``return_last_correlation``); NaN where either map is constant.
        random_logit: (N,) ρ between the map for the target and for a random other class (``PatchRandomLogit``);
            NaN where either map is constant (e.g. Grad-CAM's all-zero map for a class the image shows nothing of).
        threshold: a check passes when the mean ρ over the images is below it.
    """

    mprt: np.ndarray
    random_logit: np.ndarray
    threshold: float

    @property
    def mprt_passed(self) -> bool:
        """The maps change when the weights are randomised (mean ρ < threshold)."""
        return bool(np.nanmean(self.mprt) < self.threshold)

    @property
    def random_logit_passed(self) -> bool:
        """The maps change with the explained class (mean ρ < threshold)."""
        return bool(np.nanmean(self.random_logit) < self.threshold)

    @property
    def passed(self) -> bool:
        """Both checks pass; False flags a map that does not depend on what the model learned."""
        return self.mprt_passed and self.random_logit_passed


def weight_dependence(
    model: torch.nn.Module,
    x_batch: np.ndarray,
    y_batch: np.ndarray,
    explain_func: Callable[..., Any],
    patch_size: int,
    *,
    threshold: float = 0.5,
    seed: int = 42,
    explain_func_kwargs: Optional[Dict[str, Any]] = None,
    batch_size: int = 64,
    device: Optional[str] = None,
) -> WeightDependence:
    """Run ``PatchMPRT`` (fully randomised model, top-down) and ``PatchRandomLogit`` on one method's maps.

    Args:
        model: the trained classifier (left unchanged: Quantus randomises a copy).
        x_batch: (N, C, H, W) images; y_batch: (N,) target classes.
        explain_func: ``explain_func(model=, inputs=, targets=, **explain_func_kwargs)`` -> patch or pixel maps.
        threshold: a check passes when the mean ρ is below it (default 0.5, a convention of this library, not
            of the papers: a map that ignores the model scores ρ = 1 on both).
        seed: seed of the re-initialisation and of the other classes' draw.
    Returns:
        ``WeightDependence``.
    """
    if not -1 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r}; expected a Spearman correlation in (-1, 1]")
    call = dict(model=model, x_batch=x_batch, y_batch=y_batch, explain_func=explain_func,
                explain_func_kwargs=explain_func_kwargs, batch_size=batch_size, device=device)
    mprt = PatchMPRT(patch_size, seed=seed, return_last_correlation=True, skip_layers=True, disable_warnings=True)
    random_logit = PatchRandomLogit(patch_size, seed=seed, disable_warnings=True)
    return WeightDependence(np.asarray(mprt(**call), dtype=float), np.asarray(random_logit(**call), dtype=float),
                            float(threshold))
