"""Do the metrics measure faithfulness here? Agreement between the metrics of a finished experiment, read from the
store, and the summary of the validity checks :mod:`captum_fgattr.bench.validity` ran on a subset of it.

* **Ranking agreement**: per pair of metrics, Kendall τ between the methods' rankings by mean score (each metric
  oriented so that higher is better): τ = 1 when both metrics order the methods alike, −1 when reversed.
* **Per-image agreement**: per pair of metrics and per method, Spearman ρ over the images between the two metrics'
  oriented scores (pairs where both are defined); the median over methods and its range. A per-image ρ near 0
  means the metrics disagree about which images a method explains well.

* **Checks** (:func:`validity_summary`): per method the mean MPRT and RandomLogit ρ (a map that does not change
  when the weights are randomised, or with the explained class, does not explain what the model learned), FC's
  per-image test–retest ρ under another subset seed, and Kendall τ between the methods' rankings under the image
  mean and under black / blurred replacements.

Oriented scores: sign flipped for lower-is-better metrics (PF), so that positive correlation is agreement.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import kendalltau, spearmanr

from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.metrics import metric_spec
from captum_fgattr.bench.store import ResultStore

__all__ = ["MetricAgreement", "metric_agreement", "oriented_scores", "MethodValidity", "ValiditySummary",
           "validity_summary"]


@dataclass(frozen=True)
class MetricAgreement:
    """How two metrics agree over one experiment's methods and images."""

    a: str  # metric name
    b: str  # metric name
    n_methods: int  # methods with a defined mean on both
    kendall_tau: float  # between the methods' rankings by oriented mean (NaN with < 3 methods or constant means)
    kendall_p: float  # two-sided, exact where scipy gives it
    image_rho_median: float  # median over methods of the per-image Spearman ρ between the oriented scores
    image_rho_min: float
    image_rho_max: float


def oriented_scores(store: ResultStore, split: str, spec: MethodSpec, metric: str, ids: Sequence[int]) -> np.ndarray:
    """(len(ids),) scores of ``spec`` on ``metric`` in id order, negated where lower is better (NaN: undefined or
    missing)."""
    columns = store.scores(split, spec.key, ids)
    values = np.full(len(ids), math.nan)
    position = {image_id: i for i, image_id in enumerate(ids)}
    for image_id, value in zip(columns["image_id"], columns[metric]):
        values[position[int(image_id)]] = value
    return values if metric_spec(metric).higher_is_better else -values


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 3 or np.ptp(x[both]) == 0 or np.ptp(y[both]) == 0:
        return math.nan
    return float(spearmanr(x[both], y[both]).statistic)


def _defined_mean(values: np.ndarray) -> float:
    """Mean of the defined (finite) values; NaN if none is."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def metric_agreement(store: ResultStore, experiment: str, split: str, metrics: Sequence[str],
                     methods: Sequence[MethodSpec]) -> list[MetricAgreement]:
    """Every pair of ``metrics`` over ``methods`` on the images of ``experiment`` (see the module docstring)."""
    ids = store.experiment_ids(experiment, split)
    scores = {(spec.key, m): oriented_scores(store, split, spec, m, ids) for spec in methods for m in metrics}
    out = []
    for a, b in combinations(metrics, 2):
        means = np.array([[_defined_mean(scores[(s.key, a)]), _defined_mean(scores[(s.key, b)])]
                          for s in methods]).reshape(-1, 2)
        defined = np.isfinite(means).all(axis=1)
        tau, p = math.nan, math.nan
        if defined.sum() >= 3 and np.ptp(means[defined, 0]) > 0 and np.ptp(means[defined, 1]) > 0:
            result = kendalltau(means[defined, 0], means[defined, 1])
            tau, p = float(result.statistic), float(result.pvalue)
        rhos = np.array([_spearman(scores[(s.key, a)], scores[(s.key, b)]) for s in methods])
        finite = rhos[np.isfinite(rhos)]
        out.append(MetricAgreement(
            a, b, int(defined.sum()), tau, p,
            float(np.median(finite)) if len(finite) else math.nan,
            float(finite.min()) if len(finite) else math.nan, float(finite.max()) if len(finite) else math.nan))
    return out


@dataclass(frozen=True)
class MethodValidity:
    """One method's randomisation checks and FC test–retest on the validity subset."""

    label: str
    mprt: float  # mean over images of ρ(map on the trained model, map on the randomised model), where defined
    random_logit: float  # mean over images of ρ(map for the target, map for another class), where defined
    fc_retest: float  # Spearman ρ over images between FC under the run's subset seed and under the next one
    threshold: float  # a randomisation check passes when its mean ρ is below it
    mprt_undefined: int = 0  # images whose MPRT ρ is undefined (a constant map), left out of the mean
    random_logit_undefined: int = 0  # the same for RandomLogit

    @property
    def depends_on_weights(self) -> bool:
        return self.mprt < self.threshold

    @property
    def depends_on_class(self) -> bool:
        return self.random_logit < self.threshold


@dataclass(frozen=True)
class ValiditySummary:
    """The metric-validity section's numbers."""

    n_images: int  # the seeded subset of test images
    methods: list[MethodValidity]
    retest_tau: float  # Kendall τ between the methods' FC means under the two subset seeds
    replacement_tau: dict[tuple[str, str], float]  # (fill, metric) -> τ between the rankings with the mean and it


def _tau(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return math.nan
    return float(kendalltau(x[keep], y[keep]).statistic)


def validity_summary(store: ResultStore, results: dict, methods: Sequence[MethodSpec],
                     threshold: float = 0.5) -> ValiditySummary:
    """The checks of ``results`` (``bench.validity``'s file) with the stored test scores of the same images (the
    mean replacement and the run's FC seed) for ``methods`` that have results."""
    ids = [int(i) for i in results["images"]]
    done = [s for s in methods if s.key in results["methods"]]
    rows, fc, fc_retest = [], [], []
    stored = {(s.key, m): oriented_scores(store, "test", s, m, ids) for s in done for m in ("saco", "fc", "pf_auc")}
    for spec in done:
        r = results["methods"][spec.key]
        retest = np.asarray(r["fc_retest"], dtype=float)
        mprt, random_logit = (np.asarray(r[name], dtype=float) for name in ("mprt", "random_logit"))
        rows.append(MethodValidity(spec.label, _defined_mean(mprt), _defined_mean(random_logit),
                                   _spearman(stored[(spec.key, "fc")], retest), threshold,
                                   int(np.isnan(mprt).sum()), int(np.isnan(random_logit).sum())))
        fc.append(float(np.nanmean(stored[(spec.key, "fc")])))
        fc_retest.append(float(np.nanmean(retest)))
    replacement = {}
    for fill in ("black", "blur"):
        for metric in ("saco", "fc", "pf_auc"):
            sign = 1.0 if metric_spec(metric).higher_is_better else -1.0
            mean_fill = [float(np.nanmean(results["methods"][s.key][fill][metric])) * sign for s in done]
            mean_image = [float(np.nanmean(stored[(s.key, metric)])) for s in done]
            replacement[(fill, metric)] = _tau(mean_image, mean_fill)
    return ValiditySummary(len(ids), rows, _tau(fc, fc_retest), replacement)
