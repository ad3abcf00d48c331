"""Pooling a comparison over replicates (SAEs or models from other seeds) with a random-effects meta-analysis,
against the DerSimonian–Laird / Hartung–Knapp formulas written out per replicate."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from captum_fgattr.bench.stats import paired_comparison, random_effects, verdict


def explicit_pooled(per_image_differences: list[np.ndarray]) -> tuple[float, float, float, float, float]:
    """(μ̂, CI low, CI high, p, τ̂) with every step a loop over the replicates."""
    k = len(per_image_differences)
    y, v = [], []
    for d in per_image_differences:
        y.append(sum(d) / len(d))
        v.append(sum((x - y[-1]) ** 2 for x in d) / (len(d) - 1) / len(d))  # the squared standard error
    w = [1 / vi for vi in v]
    fixed = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
    q = sum(wi * (yi - fixed) ** 2 for wi, yi in zip(w, y))
    c = sum(w) - sum(wi ** 2 for wi in w) / sum(w)
    tau2 = max(0.0, (q - (k - 1)) / c)
    ws = [1 / (vi + tau2) for vi in v]
    mu = sum(wi * yi for wi, yi in zip(ws, y)) / sum(ws)
    hk = max(1.0, sum(wi * (yi - mu) ** 2 for wi, yi in zip(ws, y)) / (k - 1))
    se = math.sqrt(hk / sum(ws))
    t = scipy_stats.t.ppf(0.975, k - 1)
    p = 2 * scipy_stats.t.sf(abs(mu / se), k - 1)
    return mu, mu - t * se, mu + t * se, p, math.sqrt(tau2)


def test_replicates_that_differ_in_sign_give_a_wide_pooled_ci_and_no_better_verdict():
    rng = np.random.default_rng(0)
    base = [rng.normal(0.3, 0.2, 300) for _ in range(3)]
    shifts = (0.10, 0.06, -0.05)  # two replicates gain, one loses: each alone is clearly decided
    fg = [b + s + rng.normal(0, 0.05, 300) for b, s in zip(base, shifts)]
    replicates = [paired_comparison(f, b) for f, b in zip(fg, base)]
    assert [verdict(r, True) for r in replicates] == ["better", "better", "worse"]
    pooled = random_effects(replicates)
    mu, low, high, p, tau = explicit_pooled([f - b for f, b in zip(fg, base)])
    c = pooled.comparison
    assert (c.delta, c.ci_low, c.ci_high, c.p) == pytest.approx((mu, low, high, p), rel=1e-9)
    assert pooled.tau == pytest.approx(tau, rel=1e-9) and tau > 0.05
    assert c.unit == "replicates" and c.n == 3
    assert all(c.ci_high - c.ci_low > r.ci_high - r.ci_low for r in replicates)
    assert c.ci_low < 0 < c.ci_high and verdict(c, True) != "better"
    assert pooled.agree_in_sign == 2


def test_consistent_replicates_pool_to_their_common_effect():
    rng = np.random.default_rng(1)
    base = [rng.normal(0.3, 0.2, 300) for _ in range(4)]
    fg = [b + 0.08 + rng.normal(0, 0.05, 300) for b in base]
    pooled = random_effects([paired_comparison(f, b) for f, b in zip(fg, base)], margin=0.02)
    mu, low, high, p, tau = explicit_pooled([f - b for f, b in zip(fg, base)])
    assert (pooled.comparison.delta, pooled.comparison.p) == pytest.approx((mu, p), rel=1e-9)
    assert pooled.tau == pytest.approx(tau, abs=1e-12) and low > 0.05
    assert verdict(pooled.comparison, True) == "better" and pooled.agree_in_sign == 4


def test_fewer_than_two_replicates_give_no_pooled_test():
    one = paired_comparison(np.arange(5.0), np.zeros(5))
    pooled = random_effects([one])
    assert pooled.comparison.delta == pytest.approx(2.0) and math.isnan(pooled.comparison.p)
    assert verdict(pooled.comparison, True) == "inconclusive"
