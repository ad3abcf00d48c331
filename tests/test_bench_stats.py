"""bench.stats against scipy.stats on known inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from captum_fgattr.bench.stats import paired_ttest, percent_improvement, stars, summarize, welch_ttest

RNG = np.random.default_rng(0)
A = RNG.normal(0.40, 0.10, size=37)
B = RNG.normal(0.45, 0.25, size=23)


def test_summary_matches_scipy_sem_and_counts_nan():
    values = np.concatenate([A, [np.nan, np.nan]])
    s = summarize(values)
    assert (s.n, s.n_nan) == (37, 2)
    assert s.mean == pytest.approx(A.mean(), rel=1e-12)
    assert s.se == pytest.approx(sps.sem(A), rel=1e-12)


def test_summary_of_hand_values():
    s = summarize([1.0, 2.0, 3.0, 6.0])  # mean 3, sample var 14/3, se = sqrt(14/3)/2
    assert s.mean == 3.0 and s.se == pytest.approx(math.sqrt(14 / 3) / 2)
    one = summarize([5.0, np.nan])
    assert one.mean == 5.0 and math.isnan(one.se) and (one.n, one.n_nan) == (1, 1)


def test_welch_matches_scipy():
    ours = welch_ttest(A, np.concatenate([B, [np.nan]]))
    ref = sps.ttest_ind(A, B, equal_var=False)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == pytest.approx(ref.df, rel=1e-10)
    assert ours.n == len(A) + len(B)


def test_paired_matches_scipy_and_drops_nan_pairs():
    a, b = A[:23].copy(), B.copy()
    ref = sps.ttest_rel(np.delete(a, [3, 7]), np.delete(b, [3, 7]))
    a[3], b[7] = np.nan, np.nan
    ours = paired_ttest(a, b)
    assert ours.n == 21 and ours.df == 20
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)


def test_degenerate_tests_are_nan():
    assert math.isnan(welch_ttest([1.0], [2.0, 3.0]).p)
    assert math.isnan(welch_ttest([1.0, 1.0], [2.0, 2.0]).p)  # zero variance
    assert math.isnan(paired_ttest([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]).p)  # constant difference
    with pytest.raises(ValueError, match="same length"):
        paired_ttest([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="Inf"):
        summarize([1.0, np.inf])


def test_percent_improvement_sign_convention():
    assert percent_improvement(0.55, 0.50) == pytest.approx(10.0)
    assert percent_improvement(0.45, 0.50, higher_is_better=False) == pytest.approx(10.0)  # lower PF is better
    for baseline in (-0.2, 0.0, 0.049):  # a negative or near-zero baseline: no meaningful ratio
        assert math.isnan(percent_improvement(0.3, baseline))
    assert percent_improvement(0.1, 0.05) == pytest.approx(100.0)  # from the threshold on


@pytest.mark.parametrize("p, mark", [(0.0009, "***"), (0.001, "**"), (0.009, "**"), (0.01, "*"), (0.049, "*"),
                                     (0.05, ""), (math.nan, "")])
def test_stars(p, mark):
    assert stars(p) == mark


# ---------------------------------------------------------------- paired comparisons, Holm, power
from captum_fgattr.bench.stats import (  # noqa: E402
    holm, holm_adjust, minimum_detectable_dz, paired_comparison, verdict,
)


def test_paired_comparison_against_hand_computation_and_scipy():
    a = np.array([0.3, 0.5, np.nan, 0.9, 0.2, 0.7, 0.4])
    b = np.array([0.1, 0.6, 0.3, 0.5, 0.1, np.nan, 0.2])
    c = paired_comparison(a, b)
    d = np.array([0.2, -0.1, 0.4, 0.1, 0.2])  # pairs without NaN, written out
    assert (c.n, c.n_dropped) == (5, 2)
    assert c.delta == pytest.approx(d.mean()) and c.sd == pytest.approx(d.std(ddof=1))
    assert c.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    ref = sps.ttest_rel(a[[0, 1, 3, 4, 6]], b[[0, 1, 3, 4, 6]])
    assert c.t == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue)
    assert c.oriented_d_z(False) == -c.d_z


def test_minimum_detectable_effect_has_80_percent_power():
    for n in (10, 64, 300):
        dz = minimum_detectable_dz(n)
        crit = sps.t.ppf(0.975, n - 1)
        power = sps.nct.sf(crit, n - 1, dz * math.sqrt(n)) + sps.nct.cdf(-crit, n - 1, dz * math.sqrt(n))
        assert power == pytest.approx(0.8, abs=1e-6)
    # the textbook normal approximation (z_.975 + z_.8)/sqrt(n) = 2.80/sqrt(n) is close for large n
    assert minimum_detectable_dz(300) == pytest.approx(2.8016 / math.sqrt(300), rel=0.01)
    assert math.isnan(minimum_detectable_dz(1))
    sim = np.random.default_rng(1)
    c = paired_comparison(sim.normal(0, 1, 50), sim.normal(0, 1, 50))
    assert c.mde == pytest.approx(minimum_detectable_dz(50) * c.sd)


def test_holm_against_hand_computation():
    p = [0.01, 0.04, np.nan, 0.03, 0.5]  # m = 4 finite: sorted 0.01, 0.03, 0.04, 0.5
    expected = [0.04, max(0.09, 0.08), np.nan, 0.09, 0.5]  # 4·0.01, max(3·0.03, 2·0.04)=0.09 for both, 1·0.5
    np.testing.assert_allclose(holm(p), expected)
    assert holm([0.6, 0.5]).tolist() == [1.0, 1.0]  # capped at 1, monotone


def test_holm_adjust_and_verdicts():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 100)
    better = paired_comparison(base + 0.5 + rng.normal(0, 0.2, 100), base)
    same = paired_comparison(base + rng.normal(0, 0.2, 100), base)
    adjusted = holm_adjust([better, same])
    assert better.p < same.p
    assert adjusted[0].p_holm == pytest.approx(min(1.0, 2 * better.p))
    assert adjusted[1].p_holm == pytest.approx(max(min(1.0, 2 * better.p), same.p))
    assert verdict(adjusted[0], higher_is_better=True) == "better"
    assert verdict(adjusted[0], higher_is_better=False) == "worse"
    assert verdict(adjusted[1], higher_is_better=True) == "inconclusive"  # no margin: no equivalence test
