"""Statistics of per-image scores (pure numpy; p-values from the t distribution of scipy).

Conventions (DESIGN §8): mean ± standard error (sample std with ddof=1 over √n); Welch's t-test
(unequal variances) and the paired t-test (same images) of a method against the baseline, two-sided;
% improvement = 100 · Δ / |baseline mean|, sign flipped for lower-is-better metrics (Pixel-Flipping AUC),
so positive always means better (Δ / baseline for positive baselines, as in the thesis tables).
NaN scores (undefined SaCo) are dropped and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _scipy_stats

__all__ = [
    "Summary",
    "TTest",
    "summarize",
    "welch_ttest",
    "paired_ttest",
    "percent_improvement",
    "stars",
]


@dataclass(frozen=True)
class Summary:
    """Mean and standard error of the finite values of a sample."""

    mean: float  # NaN when no finite value
    se: float  # std (ddof=1) / sqrt(n); NaN when n < 2
    n: int  # finite values used
    n_nan: int  # NaN values dropped


@dataclass(frozen=True)
class TTest:
    """Result of a two-sided t-test."""

    t: float  # NaN when undefined (n too small or zero variance)
    df: float
    p: float
    n: int  # values (pairs for the paired test) used


def _finite(values: ArrayLike) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isinf(a).any():
        raise ValueError("scores contain Inf; only finite values or NaN (undefined) are accepted")
    return a


def summarize(values: ArrayLike) -> Summary:
    """Mean ± SE of ``values`` (n,), NaNs dropped and counted."""
    a = _finite(values)
    kept = a[~np.isnan(a)]
    n = len(kept)
    mean = float(kept.mean()) if n else math.nan
    se = float(kept.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return Summary(mean=mean, se=se, n=n, n_nan=len(a) - n)


def _two_sided(t: float, df: float, n: int) -> TTest:
    if not math.isfinite(t) or not df > 0:
        return TTest(t=math.nan, df=df, p=math.nan, n=n)
    return TTest(t=t, df=df, p=float(2.0 * _scipy_stats.t.sf(abs(t), df)), n=n)


def welch_ttest(a: ArrayLike, b: ArrayLike) -> TTest:
    """Welch's two-sided t-test of mean(a) − mean(b), NaNs dropped from each sample; ``n`` = len(a) + len(b)."""
    x, y = _finite(a), _finite(b)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return TTest(t=math.nan, df=math.nan, p=math.nan, n=nx + ny)
    vx, vy = x.var(ddof=1) / nx, y.var(ddof=1) / ny
    if vx + vy == 0:
        return TTest(t=math.nan, df=math.nan, p=math.nan, n=nx + ny)
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    return _two_sided(float(t), float(df), nx + ny)


def paired_ttest(a: ArrayLike, b: ArrayLike) -> TTest:
    """Paired two-sided t-test of a − b for aligned samples (n,); pairs with a NaN are dropped."""
    x, y = _finite(a), _finite(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length; got {len(x)} and {len(y)}")
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    n = len(d)
    if n < 2:
        return TTest(t=math.nan, df=math.nan, p=math.nan, n=n)
    sd = d.std(ddof=1)
    if sd == 0:
        return TTest(t=math.nan, df=float(n - 1), p=math.nan, n=n)
    return _two_sided(float(d.mean() / (sd / math.sqrt(n))), float(n - 1), n)


def percent_improvement(value: float, baseline: float, higher_is_better: bool = True) -> float:
    """100 · (value − baseline) / |baseline|, negated when lower is better; NaN for a zero/NaN baseline."""
    if not math.isfinite(baseline) or baseline == 0 or not math.isfinite(value):
        return math.nan
    pct = 100.0 * (value - baseline) / abs(baseline)
    return pct if higher_is_better else -pct


def stars(p: float) -> str:
    """Significance marks: ``***`` p<0.001, ``**`` p<0.01, ``*`` p<0.05, else (or NaN) ``""``."""
    if not math.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""
