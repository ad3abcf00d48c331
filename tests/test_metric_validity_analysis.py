"""Agreement between metrics, read from a store, against explicit computations: Kendall τ between the methods'
rankings by mean (PF negated so that higher is better), and the median per-method Spearman ρ over images."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from captum_fgattr.bench.analysis.validity import metric_agreement
from captum_fgattr.bench.experiments import transmm_spec
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.store import ResultStore
from tests.test_protocol_planted import N, store_scores


def _kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b written out: (concordant − discordant) / √((n0 − ties x)(n0 − ties y))."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    n0 = len(x) * (len(x) - 1) / 2
    return (concordant - discordant) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v)
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    return ranks  # the synthetic scores have no ties


def test_metric_agreement_matches_explicit_computations(tmp_path):
    rng = np.random.default_rng(4)
    methods = [transmm_spec(), MethodSpec("saliency"), MethodSpec("rollout"), MethodSpec("random", {"seed": 1}),
               MethodSpec("raw_attention")]
    quality = np.array([0.0, 0.3, 0.1, -0.4, 0.2])  # a method's true faithfulness
    columns = {}
    for spec, q in zip(methods, quality):
        latent = rng.normal(0, 1, N)  # per image: SaCo and PF agree on it, FC ignores it
        columns[spec] = (q + latent + rng.normal(0, 0.3, N), -q + rng.normal(0, 0.1, N),  # FC ranks methods reversed
                         0.6 - 0.1 * q - 0.1 * latent + rng.normal(0, 0.03, N))
    with ResultStore(tmp_path) as store:
        store_scores(store, "test", "test", columns)
        found = {(r.a, r.b): r for r in metric_agreement(store, "test", "test", ("saco", "fc", "pf_auc"), methods)}
    oriented = {spec: (cols[0], cols[1], -cols[2]) for spec, cols in columns.items()}  # PF negated: higher = better
    index = {"saco": 0, "fc": 1, "pf_auc": 2}
    for (a, b), result in found.items():
        means_a = [float(np.mean(oriented[s][index[a]])) for s in methods]
        means_b = [float(np.mean(oriented[s][index[b]])) for s in methods]
        assert result.kendall_tau == pytest.approx(_kendall_tau_b(means_a, means_b))
        rhos = [np.corrcoef(_ranks(oriented[s][index[a]]), _ranks(oriented[s][index[b]]))[0, 1] for s in methods]
        assert result.image_rho_median == pytest.approx(np.median(rhos))
        assert (result.image_rho_min, result.image_rho_max) == pytest.approx((min(rhos), max(rhos)))
        assert result.n_methods == len(methods)
    assert found[("saco", "pf_auc")].kendall_tau == pytest.approx(1.0)
    assert found[("saco", "fc")].kendall_tau == pytest.approx(-1.0)
    assert found[("saco", "pf_auc")].image_rho_median > 0.5 > abs(found[("saco", "fc")].image_rho_median)
