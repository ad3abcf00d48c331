"""Four-outcome verdicts: equivalence by TOST at a margin, random controls at the level of their seeds, the MDE and
the stars at the verdict's α (Holm) — each against an explicit computation (scipy's one-sample t-tests, written-out
formulas)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from captum_fgattr.bench.stats import (
    holm, holm_adjust, minimum_detectable_dz, paired_comparison, seed_comparison, tost_p, verdict,
)


def explicit_tost(d: np.ndarray, margin: float) -> float:
    """TOST from scipy's one-sided one-sample tests: H0 mean <= -margin and H0 mean >= +margin."""
    lower = sps.ttest_1samp(d + margin, 0.0, alternative="greater").pvalue
    upper = sps.ttest_1samp(d - margin, 0.0, alternative="less").pvalue
    return max(float(lower), float(upper))


def test_tost_matches_two_explicit_one_sided_tests():
    rng = np.random.default_rng(0)
    for n, shift, sd, margin in [(30, 0.01, 0.1, 0.05), (300, -0.02, 0.3, 0.04), (8, 0.2, 0.5, 0.1)]:
        a = rng.normal(shift, sd, n)
        b = np.zeros(n)
        c = paired_comparison(a, b, margin=margin)
        assert c.p_tost == pytest.approx(explicit_tost(a - b, margin), rel=1e-10)
        assert c.margin == margin
    assert math.isnan(paired_comparison(np.ones(5), np.zeros(5)).p_tost)  # no margin, no equivalence test
    assert tost_p(0.01, 0.0, 10, 0.05) == 0.0 and tost_p(0.1, 0.0, 10, 0.05) == 1.0  # zero spread


def test_inside_the_margin_with_a_wide_ci_is_inconclusive_and_with_a_tight_ci_equivalent():
    rng = np.random.default_rng(1)
    base = rng.normal(0.3, 0.3, 300)
    margin = 0.05
    wide = base + 0.01 + rng.normal(0, 0.6, 300)  # Δ ≈ 0.01, SE ≈ 0.035: the 90 % CI leaves ±0.05
    tight = base + 0.01 + rng.normal(0, 0.05, 300)  # SE ≈ 0.003: well inside ±0.05
    wide_c, tight_c = holm_adjust([paired_comparison(wide, base, margin), paired_comparison(tight, base, margin)])
    assert abs(wide_c.delta) < margin and abs(tight_c.delta) < margin
    for c, d in ((wide_c, wide - base), (tight_c, tight - base)):
        expected = explicit_tost(d, margin)
        assert c.p_tost == pytest.approx(expected, rel=1e-10)
        assert c.p_tost_holm == pytest.approx(holm([explicit_tost(wide - base, margin),
                                                    explicit_tost(tight - base, margin)])[int(c is tight_c)])
    assert wide_c.p_tost_holm > 0.05 and tight_c.p_tost_holm < 0.05
    assert verdict(wide_c, higher_is_better=True) == "inconclusive"
    assert verdict(tight_c, higher_is_better=True) == "equivalent"
    # a clear difference stays a difference whatever the margin
    far = holm_adjust([paired_comparison(base + 0.3 + rng.normal(0, 0.05, 300), base, margin)])[0]
    assert verdict(far, True) == "better" and verdict(far, False) == "worse"


def test_seed_level_inference_is_a_t_test_on_the_per_seed_effects():
    rng = np.random.default_rng(2)
    n, seeds = 300, 5
    real = rng.normal(0.45, 0.5, n)
    offsets = np.array([0.35, -0.05, 0.30, -0.10, 0.25])  # seed means vary widely around a gain of 0.15
    table = real[None, :] - offsets[:, None] + rng.normal(0, 0.1, (seeds, n))
    table[2, 7] = np.nan  # a pair dropped for one seed only
    c = seed_comparison(real, table)
    effects = []
    for s in range(seeds):  # written out: per seed, the mean paired difference over its defined pairs
        keep = [i for i in range(n) if not np.isnan(table[s, i])]
        effects.append(sum(real[i] - table[s, i] for i in keep) / len(keep))
    ref = sps.ttest_1samp(effects, 0.0)
    assert (c.n, c.n_dropped, c.unit) == (5, 1, "seeds")
    np.testing.assert_allclose(c.per_seed, effects, rtol=1e-12)
    assert c.t == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue)
    half = sps.t.ppf(0.975, 4) * np.std(effects, ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == (pytest.approx(np.mean(effects) - half), pytest.approx(np.mean(effects) + half))
    assert c.mde == pytest.approx(minimum_detectable_dz(5) * np.std(effects, ddof=1))
    # the image-level paired test on the per-image mean over the seeds treats the seeds as fixed: tiny p
    fixed = paired_comparison(real, np.nanmean(table, axis=0))
    assert fixed.p < 1e-10 and c.p > 0.05
    assert verdict(holm_adjust([c])[0], True) == "inconclusive"
    # one seed: no seed-level inference at all (never the image-level test in disguise)
    single = seed_comparison(real, table[:1])
    assert single.n == 1 and math.isnan(single.p) and verdict(single, True) == "inconclusive"


def test_mde_and_stars_at_the_verdicts_alpha():
    rng = np.random.default_rng(3)
    comparisons = [paired_comparison(rng.normal(0.1 * k, 1, 200), np.zeros(200)) for k in range(6)]
    comparisons.append(paired_comparison(np.full(200, np.nan), np.zeros(200)))  # undefined: not in the family
    family = holm_adjust(comparisons)
    m = 6
    for c in family[:6]:
        df, crit = c.n - 1, sps.t.ppf(1 - 0.05 / m / 2, c.n - 1)  # two-sided at α/m
        dz = c.mde_holm / c.sd
        power = sps.nct.sf(crit, df, dz * math.sqrt(c.n)) + sps.nct.cdf(-crit, df, dz * math.sqrt(c.n))
        assert power == pytest.approx(0.8, abs=1e-6)
        assert c.mde_holm > c.mde
    assert math.isnan(family[6].mde_holm)


def test_report_stars_read_holm_p_only():
    from captum_fgattr.bench.analysis.comparisons import format_p
    assert format_p(0.0004) == "0.0004***" and format_p(0.0004, marks=False) == "0.0004"
    assert format_p(math.nan) == "–"


def test_the_report_names_the_alpha_and_family_and_stars_only_holm_p(tmp_path):
    """The written tables: stars only on Holm-adjusted p-values, the family and α named, a random control's seeds
    beneath its seed-level row, the margins with their origin, and the ranking family in a file of its own."""
    import csv

    from captum_fgattr.bench.config import Protocol
    from captum_fgattr.bench.experiments import control_specs, fg_spec, transmm_spec
    from captum_fgattr.bench.report.study_report import write_report
    from captum_fgattr.bench.store import ResultStore
    from captum_fgattr.bench.methods import MethodSpec
    from tests.test_protocol_planted import N, store_scores

    rng = np.random.default_rng(5)
    protocol = Protocol(layers=(1,), multi_layers=(), controls=("permuted_gates", "bias_projection"),
                        permute_seeds=(0, 1, 2))
    real = fg_spec([1], "combined", 0.5, 10.0)
    controls = control_specs(real, protocol)
    base = (rng.normal(0.1, 0.2, N), rng.normal(0.2, 0.1, N), rng.normal(0.6, 0.1, N))
    fg = (base[0] + 0.3 + rng.normal(0, 0.05, N), base[1] + rng.normal(0, 0.05, N), base[2] + rng.normal(0, 0.02, N))
    columns = {transmm_spec(): base, real: fg, MethodSpec("random"): base,
               controls["bias_projection"][0]: tuple(f + rng.normal(0, 0.01, N) for f in fg)}
    columns.update({spec: tuple(b + rng.normal(0, 0.05, N) for b in base) for spec in controls["permuted_gates"]})
    with ResultStore(tmp_path) as store:
        store_scores(store, "single_layer", "val", {transmm_spec(): base, real: fg})
        store_scores(store, "test", "test", columns)
        store.log_invocation("run", {"protocol": {"layers": [1], "multi_layers": [],
                                                  "controls": ["permuted_gates", "bias_projection"],
                                                  "permute_seeds": [0, 1, 2]}})
    write_report(tmp_path)
    report = tmp_path / "report"
    claims = (report / "comparisons_test.md").read_text()
    n_claims = 3 * 3  # (TransMM, permuted gates, bias_projection) × 3 metrics
    assert f"**The claims family**: one Holm family of {n_claims} tests at family-wise α = 0.05" in claims
    assert f"α/m = 0.05/{n_claims}" in claims
    assert "| FG L1 combined κ=0.5 c=10 | permuted gates (3 seeds) | SaCo | 3 seeds (SD " in claims
    assert claims.count("| ↳ s") == 3 * 3  # each seed beneath, per metric
    assert "FG L1 combined κ=0.5 c=10, SaCo: ±" in claims and "× |validation gain over TransMM|" in claims
    with (report / "comparisons_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["family"] for r in rows} == {"claims"} and {r["alpha"] for r in rows} == {"0.05"}
    rows_with_p = [cells for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in claims.splitlines())
                   if len(cells) == 13 and cells[6] not in ("p", "–", "---")]
    assert len(rows_with_p) == n_claims  # every comparison row (the seeds' rows have no p)
    assert not [cells for cells in rows_with_p if "*" in cells[6]]  # the unadjusted p has no stars
    assert any("*" in cells[7] for cells in rows_with_p)  # the Holm-adjusted p does where it is small
    bias = next(r for r in rows if r["against"] == "bias_projection" and r["metric"] == "saco")
    assert bias["outcome"] == "equivalent" and abs(float(bias["delta"])) < float(bias["margin"])
    ranking = (report / "ranking_test.md").read_text()
    assert "**The ranking family**" in ranking and "### Rankings the tests support" in ranking
    table = (report / "test.md").read_text()
    assert "*" not in "".join(line for line in table.splitlines() if line.startswith("| FG"))
