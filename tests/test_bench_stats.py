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
    assert percent_improvement(-0.1, -0.2) == pytest.approx(50.0)  # moving up from a negative baseline is better
    assert math.isnan(percent_improvement(1.0, 0.0))


@pytest.mark.parametrize("p, mark", [(0.0009, "***"), (0.001, "**"), (0.009, "**"), (0.01, "*"), (0.049, "*"),
                                     (0.05, ""), (math.nan, "")])
def test_stars(p, mark):
    assert stars(p) == mark
