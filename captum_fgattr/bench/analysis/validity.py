"""Do the metrics agree? Agreement between the metrics of a finished experiment, read from the store.

* **Ranking agreement**: per pair of metrics, Kendall τ between the methods' rankings by mean score (each metric
  oriented so that higher is better): τ = 1 when both metrics order the methods alike, −1 when reversed.
* **Per-image agreement**: per pair of metrics and per method, Spearman ρ over the images between the two metrics'
  oriented scores (pairs where both are defined); the median over methods and its range. A per-image ρ near 0
  means the metrics disagree about which images a method explains well.

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

__all__ = ["MetricAgreement", "metric_agreement", "oriented_scores"]


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


def metric_agreement(store: ResultStore, experiment: str, split: str, metrics: Sequence[str],
                     methods: Sequence[MethodSpec]) -> list[MetricAgreement]:
    """Every pair of ``metrics`` over ``methods`` on the images of ``experiment`` (see the module docstring)."""
    ids = store.experiment_ids(experiment, split)
    scores = {(spec.key, m): oriented_scores(store, split, spec, m, ids) for spec in methods for m in metrics}
    out = []
    for a, b in combinations(metrics, 2):
        means = np.array([[np.nanmean(scores[(s.key, a)]) if np.isfinite(scores[(s.key, a)]).any() else math.nan,
                           np.nanmean(scores[(s.key, b)]) if np.isfinite(scores[(s.key, b)]).any() else math.nan]
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
