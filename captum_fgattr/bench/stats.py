"""Statistics of per-image scores (pure numpy; p-values from the t distribution of scipy).

Conventions: mean ± standard error (sample std with ddof=1 over √n); Welch's t-test
(unequal variances) and the paired t-test (same images) of a method against the baseline, two-sided;
% improvement = 100 · Δ / baseline mean, sign flipped for lower-is-better metrics (Pixel-Flipping AUC),
so positive always means better, as in the thesis tables; only over a baseline mean of at least
:data:`PCT_MIN_BASELINE` (over a negative or near-zero one the ratio is meaningless or explodes: NaN, "–").
NaN scores (undefined SaCo) are dropped and counted. The headline comparison is paired
(:func:`paired_comparison`: mean Δ, 95 % CI, Cohen's d_z, paired t-test, minimum detectable effect, and the
equivalence test TOST at a margin ±δ), Holm-adjusted over a test family (:func:`holm_adjust`: the difference
tests, the equivalence tests and the MDE at the family's strictest threshold α/m). A random control (several
seeds) is compared at the level of its seeds (:func:`seed_comparison`: t on the per-seed mean differences,
seeds − 1 df). :func:`verdict` reads four outcomes: better, worse, equivalent, inconclusive.
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
    "PCT_MIN_BASELINE",
    "stars",
    "PairedComparison",
    "paired_comparison",
    "minimum_detectable_dz",
    "holm",
    "holm_adjust",
    "tost_p",
    "seed_comparison",
    "PooledEffect",
    "random_effects",
    "ALPHA",
    "OUTCOMES",
    "verdict",
]

#: the family-wise α of every verdict (Holm)
ALPHA = 0.05
#: what a comparison can conclude (:func:`verdict`)
OUTCOMES = ("better", "worse", "equivalent", "inconclusive")


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


#: smallest baseline mean a % improvement is computed over (SaCo and FC lie in [−1, 1], PF AUC in [0, 1]): over a
#: negative mean "+294 %" would read as a gain whatever happened, and near 0 the ratio explodes
PCT_MIN_BASELINE = 0.05


def percent_improvement(value: float, baseline: float, higher_is_better: bool = True) -> float:
    """100 · (value − baseline) / baseline, negated when lower is better; NaN for a baseline mean below
    :data:`PCT_MIN_BASELINE` (negative, zero, near zero) or a NaN value."""
    if not math.isfinite(baseline) or baseline < PCT_MIN_BASELINE or not math.isfinite(value):
        return math.nan
    pct = 100.0 * (value - baseline) / baseline
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
    d_z). With ``unit == "seeds"`` (a random control, :func:`seed_comparison`) the units of inference are the
    seeds: ``n`` seeds, ``sd`` the SD of the per-seed mean differences ``per_seed``, and every test has n − 1 df.
    """

    delta: float  # mean of A − B
    ci_low: float  # 95 % CI of the mean difference (t distribution)
    ci_high: float
    sd: float  # SD (ddof=1) of the differences (per image, or per seed)
    d_z: float  # delta / sd
    t: float
    p: float  # two-sided paired t-test
    n: int  # pairs used (images, or seeds)
    n_dropped: int  # pairs with a NaN on either side
    mde: float  # minimum detectable |mean Δ| at this n (80 % power, α = 0.05 unadjusted), in the metric's units
    p_holm: float = math.nan  # Holm-adjusted p over the comparison family (set by :func:`holm_adjust`)
    margin: float = math.nan  # equivalence margin δ > 0 (metric units); NaN: no equivalence test
    p_tost: float = math.nan  # equivalence (TOST): the larger p of the one-sided tests of Δ > −δ and Δ < +δ
    p_tost_holm: float = math.nan  # p_tost Holm-adjusted over the family (set by :func:`holm_adjust`)
    mde_holm: float = math.nan  # MDE at α/m, the strictest Holm threshold of the family (set by :func:`holm_adjust`)
    unit: str = "images"  # "images" (paired over images) or "seeds" (random effects over a control's seeds)
    per_seed: tuple[float, ...] = ()  # per-seed mean differences (``unit == "seeds"``)

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
        wrong_sign = _scipy_stats.nct.cdf(-crit, df, nc)  # NaN from scipy far in the tail, where it is ~0
        return _scipy_stats.nct.sf(crit, df, nc) + (wrong_sign if math.isfinite(wrong_sign) else 0.0) - power

    high = 3.0 / math.sqrt(n)  # ≈ the normal approximation 2.8/√n; doubled until the power exceeds the target
    while shortfall(high) < 0:
        high *= 2.0
    if not math.isfinite(shortfall(high)):  # scipy's noncentral t fails far in the tail (n of 2 or 3)
        return math.nan
    return float(_brentq(shortfall, 1e-9, high))


def tost_p(mean: float, sd: float, n: int, margin: float) -> float:
    """Two one-sided t-tests (TOST) of |true mean| < ``margin`` from ``n`` differences with this mean and SD:
    max(P(T ≥ (mean + δ)/se), P(T ≤ (mean − δ)/se)), T ~ t(n − 1), se = sd/√n. Small p: equivalent within ±δ.
    NaN without a finite margin > 0 or with n < 2; for sd = 0, 0 inside the margin and 1 outside."""
    if not (math.isfinite(margin) and margin > 0) or n < 2 or not math.isfinite(mean):
        return math.nan
    if sd == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se, df = sd / math.sqrt(n), n - 1
    above_lower = float(_scipy_stats.t.sf((mean + margin) / se, df))  # H0: mean <= -margin
    below_upper = float(_scipy_stats.t.cdf((mean - margin) / se, df))  # H0: mean >= +margin
    return max(above_lower, below_upper)


def _from_differences(d: np.ndarray, dropped: int, margin: float, unit: str = "images",
                      per_seed: tuple[float, ...] = ()) -> PairedComparison:
    """The one-sample inference on differences ``d`` (n,): mean, 95 % CI, d_z, t-test, MDE, TOST at ``margin``."""
    n = len(d)
    if n < 2:
        nan = math.nan
        return PairedComparison(float(d.mean()) if n else nan, nan, nan, nan, nan, nan, nan, n, dropped, nan,
                                margin=margin, unit=unit, per_seed=per_seed)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    test = _two_sided(mean / (sd / math.sqrt(n)) if sd > 0 else math.nan, float(n - 1), n)
    return PairedComparison(mean, mean - half, mean + half, sd, mean / sd if sd > 0 else math.nan, test.t, test.p,
                            n, dropped,
                            minimum_detectable_dz(n) * sd, margin=margin, p_tost=tost_p(mean, sd, n, margin),
                            unit=unit, per_seed=per_seed)


def paired_comparison(a: ArrayLike, b: ArrayLike, margin: float = math.nan) -> PairedComparison:
    """Paired comparison of aligned per-image scores a, b (n,): mean Δ = a − b, 95 % CI, d_z, t-test, MDE, and
    TOST at the equivalence margin ±``margin`` (NaN: none)."""
    x, y = _finite(a), _finite(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length; got {len(x)} and {len(y)}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return _from_differences((x - y)[keep], int((~keep).sum()), margin)


def seed_comparison(a: ArrayLike, seeds: ArrayLike, margin: float = math.nan) -> PairedComparison:
    """A (n,) vs a random control run with S seeds (S, n), seeds as random effects: the per-seed mean paired
    differences e_s = mean_i(a_i − seeds_si) (pairs with a NaN dropped per seed) are the S observations of a
    one-sample t-test (S − 1 df), so the variation between seeds enters the uncertainty; TOST alike.
    ``n`` = S, ``n_dropped`` = pairs dropped over all seeds; S < 2 gives NaN tests (no seed-level inference)."""
    x, table = _finite(a), np.asarray(seeds, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(x):
        raise ValueError(f"seeds must be (S, {len(x)}) per-seed scores aligned with a; got {table.shape}")
    if np.isinf(table).any():
        raise ValueError("scores contain Inf; only finite values or NaN (undefined) are accepted")
    effects, dropped = [], 0
    for row in table:
        keep = ~(np.isnan(x) | np.isnan(row))
        dropped += int((~keep).sum())
        if keep.any():
            effects.append(float((x[keep] - row[keep]).mean()))
    return _from_differences(np.array(effects), dropped, margin, unit="seeds", per_seed=tuple(effects))


@dataclass(frozen=True)
class PooledEffect:
    """One comparison pooled over replicates (e.g. SAEs or models trained from different seeds) by a random-effects
    meta-analysis; ``comparison`` carries the pooled estimate in the fields every verdict reads (``unit ==
    "replicates"``, ``n`` = replicates, tests on n − 1 df)."""

    comparison: PairedComparison  # pooled: delta = μ̂, CI, t, p, TOST at the margin; sd = se·√n
    replicates: tuple[PairedComparison, ...]  # each replicate's own paired comparison over its images
    tau: float  # between-replicate SD of the true effects (DerSimonian–Laird τ̂)
    q: float  # Cochran's Q (heterogeneity)

    @property
    def agree_in_sign(self) -> int:
        """Replicates whose mean difference has the pooled estimate's sign."""
        return sum(np.sign(r.delta) == np.sign(self.comparison.delta) for r in self.replicates)


def random_effects(replicates: list[PairedComparison], margin: float = math.nan) -> PooledEffect:
    """Pool per-replicate paired comparisons (each: mean Δ over its images, se = sd/√n) with a random-effects
    meta-analysis: DerSimonian–Laird τ̂² = max(0, (Q − (k − 1)) / (Σw − Σw²/Σw)), w = 1/se², Q = Σw(Δ − Δ̄_w)²;
    μ̂ = Σw*Δ / Σw*, w* = 1/(se² + τ̂²); inference with the Hartung–Knapp–Sidik–Jonkman variance
    max(1, Σw*(Δ − μ̂)²/(k − 1)) / Σw* on k − 1 df (the max(1, ·) keeps it from falling below the fixed-effect
    variance with few replicates). k < 2 or a replicate without a standard error gives NaN tests."""
    k = len(replicates)
    deltas = np.array([r.delta for r in replicates], dtype=np.float64)
    variances = np.array([(r.sd / math.sqrt(r.n)) ** 2 if r.n >= 2 else math.nan for r in replicates])
    nan = math.nan
    if k < 2 or not np.isfinite(variances).all() or not np.isfinite(deltas).all() or (variances <= 0).any():
        pooled = PairedComparison(float(deltas.mean()) if k else nan, nan, nan, nan, nan, nan, nan, k, 0, nan,
                                  margin=margin, unit="replicates", per_seed=tuple(deltas.tolist()))
        return PooledEffect(pooled, tuple(replicates), nan, nan)
    w = 1.0 / variances
    fixed = float((w * deltas).sum() / w.sum())
    q = float((w * (deltas - fixed) ** 2).sum())
    tau2 = max(0.0, (q - (k - 1)) / float(w.sum() - (w ** 2).sum() / w.sum()))
    w_star = 1.0 / (variances + tau2)
    mu = float((w_star * deltas).sum() / w_star.sum())
    scale = max(1.0, float((w_star * (deltas - mu) ** 2).sum()) / (k - 1))
    se, df = math.sqrt(scale / float(w_star.sum())), k - 1
    half = float(_scipy_stats.t.ppf(0.975, df)) * se
    sd = se * math.sqrt(k)  # the spread whose t-test on k values has this se
    test = _two_sided(mu / se, float(df), k)
    pooled = PairedComparison(mu, mu - half, mu + half, sd, mu / sd, test.t, test.p, k, 0,
                              minimum_detectable_dz(k) * sd, margin=margin, p_tost=tost_p(mu, sd, k, margin),
                              unit="replicates", per_seed=tuple(deltas.tolist()))
    return PooledEffect(pooled, tuple(replicates), math.sqrt(tau2), q)


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


def holm_adjust(comparisons: list[PairedComparison], alpha: float = ALPHA) -> list[PairedComparison]:
    """The comparisons as one test family: ``p_holm`` and ``p_tost_holm`` Holm-adjusted over the whole list (the
    difference and the equivalence tests each), ``mde_holm`` the MDE at α/m (m finite p-values: the threshold
    Holm applies to the smallest p, so a |Δ| above it is detected with 80 % power whatever its rank)."""
    adjusted, tost = holm([c.p for c in comparisons]), holm([c.p_tost for c in comparisons])
    m = max(1, sum(math.isfinite(c.p) for c in comparisons))
    return [replace(c, p_holm=float(q), p_tost_holm=float(e),
                    mde_holm=minimum_detectable_dz(c.n, alpha=alpha / m) * c.sd if c.n >= 2 else math.nan)
            for c, q, e in zip(comparisons, adjusted, tost)]


def verdict(comparison: PairedComparison, higher_is_better: bool, alpha: float = ALPHA) -> str:
    """One of :data:`OUTCOMES`: "better" / "worse" (Holm-adjusted p < alpha, direction from the mean Δ, A's side),
    else "equivalent" (Holm-adjusted TOST p < alpha: Δ inside ±margin), else "inconclusive". Unadjusted p-values
    are read where the comparison was never adjusted (a family of one)."""
    p = comparison.p_holm if math.isfinite(comparison.p_holm) else comparison.p
    if math.isfinite(p) and p < alpha:
        return "better" if (comparison.delta > 0) == higher_is_better else "worse"
    q = comparison.p_tost_holm if math.isfinite(comparison.p_tost_holm) else comparison.p_tost
    return "equivalent" if math.isfinite(q) and q < alpha else "inconclusive"
