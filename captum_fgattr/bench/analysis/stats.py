"""Statistics of per-image scores (pure numpy; p-values from the t distribution of scipy).

Conventions: mean ± standard error (sample std with ddof=1 over √n); Welch's t-test
(unequal variances) and the paired t-test (same images) of a method against the baseline, two-sided;
% improvement = 100 · Δ / |baseline mean|, sign flipped for lower-is-better metrics (Pixel-Flipping AUC),
so positive always means better (Δ / baseline for positive baselines, as in the thesis tables).
NaN scores (undefined SaCo) are dropped and counted. The headline comparison is paired
(:func:`paired_comparison`: mean Δ, 95 % CI, Cohen's d_z, paired t-test, minimum detectable effect),
Holm-adjusted over a test family (:func:`holm_adjust`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _scipy_stats
from scipy.optimize import brentq as _brentq

__all__ = [
    "Summary",
    "TTest",
    "summarize",
    "welch_ttest",
    "paired_ttest",
    "percent_improvement",
    "stars",
    "PairedComparison",
    "paired_comparison",
    "minimum_detectable_dz",
    "holm",
    "holm_adjust",
    "verdict",
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


@dataclass(frozen=True)
class PairedComparison:
    """A − B on the same images: the paired effect with its uncertainty (pairs with a NaN dropped).

    ``delta`` is the raw mean difference (A − B, in the metric's units); ``d_z`` = mean Δ / SD Δ (Cohen's
    d_z); ``better`` orients it: +1 when A is better than B on this metric (lower-is-better metrics flipped).
    """

    delta: float  # mean of A − B
    ci_low: float  # 95 % CI of the mean difference (t distribution)
    ci_high: float
    sd: float  # SD (ddof=1) of the differences
    d_z: float  # delta / sd
    t: float
    p: float  # two-sided paired t-test
    n: int  # pairs used
    n_dropped: int  # pairs with a NaN on either side
    mde: float  # minimum detectable |mean Δ| at this n (80 % power, α = 0.05), in the metric's units
    p_holm: float = math.nan  # Holm-adjusted p over the comparison family (set by :func:`holm_adjust`)

    def oriented_d_z(self, higher_is_better: bool) -> float:
        """d_z with the sign flipped for lower-is-better metrics, so positive means A is better."""
        return self.d_z if higher_is_better else -self.d_z


def minimum_detectable_dz(n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest |d_z| a two-sided paired t-test on n pairs detects with ``power`` at level ``alpha``
    (exact, from the noncentral t distribution); NaN for n < 2 or where scipy cannot evaluate it (tiny n)."""
    if n < 2:
        return math.nan
    df = n - 1
    crit = _scipy_stats.t.ppf(1 - alpha / 2, df)

    def shortfall(d: float) -> float:
        nc = d * math.sqrt(n)
        return _scipy_stats.nct.sf(crit, df, nc) + _scipy_stats.nct.cdf(-crit, df, nc) - power

    high = 3.0 / math.sqrt(n)  # ≈ the normal approximation 2.8/√n; doubled until the power exceeds the target
    while shortfall(high) < 0:
        high *= 2.0
    if not math.isfinite(shortfall(high)):  # scipy's noncentral t fails far in the tail (n of 2 or 3)
        return math.nan
    return float(_brentq(shortfall, 1e-9, high))


def paired_comparison(a: ArrayLike, b: ArrayLike) -> PairedComparison:
    """Paired comparison of aligned per-image scores a, b (n,): mean Δ = a − b, 95 % CI, d_z, t-test, MDE."""
    x, y = _finite(a), _finite(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length; got {len(x)} and {len(y)}")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = (x - y)[keep]
    n, dropped = len(d), int((~keep).sum())
    if n < 2:
        nan = math.nan
        return PairedComparison(float(d.mean()) if n else nan, nan, nan, nan, nan, nan, nan, n, dropped, nan)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    test = paired_ttest(x[keep], y[keep])
    d_z = mean / sd if sd > 0 else math.nan
    return PairedComparison(mean, mean - half, mean + half, sd, d_z, test.t, test.p, n, dropped,
                            minimum_detectable_dz(n) * sd)


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (n,); NaNs stay NaN and do not count in the family."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def holm_adjust(comparisons: list[PairedComparison]) -> list[PairedComparison]:
    """The comparisons with ``p_holm`` set, Holm-adjusted over the whole list (one test family)."""
    adjusted = holm([c.p for c in comparisons])
    return [replace(c, p_holm=float(q)) for c, q in zip(comparisons, adjusted)]


def verdict(comparison: PairedComparison, higher_is_better: bool, alpha: float = 0.05) -> str:
    """"better" / "worse" (Holm-adjusted p < alpha, direction from the mean Δ) or "no detectable difference"."""
    p = comparison.p_holm if math.isfinite(comparison.p_holm) else comparison.p
    if not (math.isfinite(p) and p < alpha):
        return "no detectable difference"
    return "better" if (comparison.delta > 0) == higher_is_better else "worse"
