"""Replicates as a protocol dimension: the selected configuration evaluated on further (model, SAEs) pairs, each
claim pooled over the replicates by a random-effects meta-analysis (against the formulas written out), the pooled
family Holm-adjusted, and the report's Replication section with its forest plot."""
from __future__ import annotations

import numpy as np
import pytest

from captum_fgattr.bench.analysis.replication import pooled_comparisons, replicate_splits
from captum_fgattr.bench.config import EvalConfig, MetricConfig, Protocol, RunConfig
from captum_fgattr.bench.experiments import Replicate, control_specs, fg_spec, replicate_specs, transmm_spec
from captum_fgattr.bench.report.study_report import write_report
from captum_fgattr.bench.stats import holm
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import run_study
from tests.test_bench_evaluate import tiny_setup
from tests.test_fg_transmm import make_sae
from tests.test_protocol_planted import N, store_scores
from tests.test_replication_stats import explicit_pooled

PROTOCOL = {"layers": [1], "multi_layers": [], "controls": ["bias_projection"],
            "equivalence_margins": {"saco": 0.05, "fc": 0.05, "pf_auc": 0.02}}


def test_claims_are_pooled_over_replicates_with_a_random_effects_model(tmp_path):
    rng = np.random.default_rng(7)
    real = fg_spec([1], "combined", 0.5, 10.0)
    bias = control_specs(real, Protocol.from_dict(PROTOCOL))["bias_projection"][0]
    shifts = {"test": 0.20, "test@sae-seed-1": 0.15, "test@sae-seed-2": -0.10}  # one replicate reverses the gain
    differences = []
    with ResultStore(tmp_path) as store:
        for split, shift in shifts.items():
            base = (rng.normal(0.3, 0.2, N), rng.normal(0.2, 0.1, N), rng.normal(0.6, 0.1, N))
            fg = (base[0] + shift + rng.normal(0, 0.05, N), base[1] + rng.normal(0, 0.05, N),
                  base[2] + rng.normal(0, 0.02, N))
            store_scores(store, "test", split, {transmm_spec(): base, real: fg,
                                                bias: tuple(b + rng.normal(0, 0.05, N) for b in base)})
            differences.append(fg[0] - base[0])
        store.log_invocation("run", {"protocol": PROTOCOL})
        assert replicate_splits(store) == [("run", "test"), ("sae-seed-1", "test@sae-seed-1"),
                                           ("sae-seed-2", "test@sae-seed-2")]
        pooled = pooled_comparisons(store)
    assert len(pooled) == 2 * 3  # (TransMM, bias_projection) × 3 metrics, present in every replicate
    saco = next(p for p in pooled if p.first.against == "transmm" and p.metric == "saco")
    mu, low, high, p, tau = explicit_pooled(differences)
    c = saco.pooled.comparison
    assert (c.delta, c.ci_low, c.ci_high, c.p, saco.pooled.tau) == pytest.approx((mu, low, high, p, tau), rel=1e-9)
    assert c.p_holm == pytest.approx(holm([q.pooled.comparison.p for q in pooled])[pooled.index(saco)])
    assert [r.outcome for r in saco.per_replicate] == ["better", "better", "worse"]
    assert saco.outcome == "inconclusive" and saco.pooled.agree_in_sign == 2 and saco.agree_in_outcome == 0
    assert all(c.ci_high - c.ci_low > r.result.ci_high - r.result.ci_low for r in saco.per_replicate)

    write_report(tmp_path)
    report = (tmp_path / "report" / "report.md").read_text()
    section = report.split("## Replication", 1)[1].split("\n## ", 1)[0]
    assert "| claim | metric | run | sae-seed-1 | sae-seed-2 | pooled Δ [95 % CI] |" in section
    assert (f"FG L1 combined κ=0.5 c=10 vs TransMM, SaCo: pooled **inconclusive** (Δ {mu:+.3f} [{low:+.3f}, "
            f"{high:+.3f}]") in section and "do not all agree (2 of 3)" in section
    assert (tmp_path / "report" / "forest_test.png").read_bytes()[:4] == b"\x89PNG"
    findings = report.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert "**Replicated over 3 replicates**" in findings and "2 of 3 replicates agree in sign" in findings
    assert "tested on 3 replicates (run, sae-seed-1, sae-seed-2)" in findings
    assert "### test (test@" not in report  # the replicates' rows only in the Replication section


def test_a_run_evaluates_the_selected_configuration_in_every_replicate(tmp_path):
    model, data, saes = tiny_setup(8)
    images, labels = data.tensors
    protocol = Protocol(layers=(1,), variants=("combined",), multi_layers=(), controls=("bias_projection", "grad_input"),
                        baselines=("random",), val_images=None, test_images=5)
    config = EvalConfig(batch_size=4, progress=False, gallery=0,
                        metrics=MetricConfig(saco_groups=4, fc_subset_size=4, fc_runs=8))
    replicates = [Replicate(f"sae-seed-{seed}", model, data, {layer: make_sae(32, seed=10 * seed + layer)
                                                              for layer in range(3)}) for seed in (1, 2)]
    run_dir = run_study(model, (images, labels), (images, labels), saes, tmp_path / "run", protocol, config,
                        replicates=replicates)
    with ResultStore(run_dir) as store:
        specs = replicate_specs(store, protocol)
        assert [s.label for s in specs] == ["TransMM", "FG L1 combined κ=0.5 c=10",
                                            "FG L1 bias_projection κ=0.5 c=10"]  # grad_input: not a replicate control
        test_ids = store.experiment_ids("test", "test")
        for seed in (1, 2):
            assert store.experiment_ids("test", f"test@sae-seed-{seed}") == test_ids
            assert [s.key for s in store.experiment_methods("test", f"test@sae-seed-{seed}")] == [s.key for s in specs]
        real = specs[1]
        run_fc = store.scores("test", real.key)["fc"]
        other = store.scores("test@sae-seed-1", real.key)["fc"]
        assert not np.allclose(run_fc, other)  # another SAE: another FG map
        assert np.array_equal(store.scores("test", specs[0].key)["fc"], store.scores("test@sae-seed-1", specs[0].key)["fc"])
        assert len(pooled_comparisons(store)) == 2 * 3
    assert "## Replication" in (run_dir / "report" / "report.md").read_text()


def test_replicates_in_a_run_description_are_checked():
    config = RunConfig.from_dict({"replicates": [{"name": "sae-seed-1", "saes": "saes/seed_1"},
                                                 {"name": "model-seed-1", "saes": "m1/saes", "model": {"name": "test_vit"}}]})
    assert [r.name for r in config.replicates] == ["sae-seed-1", "model-seed-1"]
    assert config.replicates[1].model.name == "test_vit" and RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="expected distinct names"):
        RunConfig.from_dict({"replicates": [{"name": "a", "saes": "x"}, {"name": "a", "saes": "y"}]})
    with pytest.raises(ValueError, match="replicate name 'Seed 1'"):
        RunConfig.from_dict({"replicates": [{"name": "Seed 1", "saes": "x"}]})
    with pytest.raises(ValueError, match="names no SAEs"):
        RunConfig.from_dict({"replicates": [{"name": "a"}]})
    with pytest.raises(ValueError, match="replicate_controls"):
        Protocol(replicate_controls=("nope",))
