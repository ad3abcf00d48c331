"""Store, batched evaluation (vs the Quantus metric path), resume after SIGKILL, protocol selection, errors."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from captum_fgattr.bench.config import EvalConfig, MetricConfig, Protocol, RunConfig
from captum_fgattr.bench.distributed import Shard
from captum_fgattr.bench.evaluate import evaluate_methods, select_ids
from captum_fgattr.bench.experiments import fg_spec, run_sweep, selection_rule, transmm_spec
from captum_fgattr.bench.study import run_study
from captum_fgattr.bench.methods import MethodSpec, build_method
from captum_fgattr.bench.metrics import metric_names
from captum_fgattr.bench.store import ResultRow, ResultStore
from quantus_saco import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo
from tests.conftest import make_vit
from tests.test_fg_transmm import make_sae

ROOT = Path(__file__).resolve().parents[1]
METRIC_CFG = MetricConfig(saco_groups=4, fc_subset_size=4, fc_runs=8, seed=3)
CFG = EvalConfig(batch_size=4, progress=False, gallery=2, metrics=METRIC_CFG)
SPECS = [transmm_spec(), fg_spec([1], "combined", 0.5, 10.0), MethodSpec("random", {"seed": 1})]


def tiny_setup(n_images: int = 10):
    """Tiny random ViT (3 blocks, 16 patches), (image, label) dataset, SAEs for every block."""
    model = make_vit(depth=3, num_classes=3)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n_images, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 3, (n_images,), generator=gen)
    return model, TensorDataset(images, labels), {layer: make_sae(32, seed=layer) for layer in range(3)}


def stored_rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "results.sqlite") as conn:
        return conn.execute(
            "SELECT r.split, r.method_key, r.image_id, r.label, r.prediction, r.target, "
            + ", ".join(f"(SELECT value FROM scores s WHERE s.split = r.split AND s.method_key = r.method_key AND "
                        f"s.image_id = r.image_id AND s.metric = '{m}')" for m in ("saco", "fc", "pf_auc"))
            + " FROM results r ORDER BY r.split, r.method_key, r.image_id").fetchall()


def assert_same_rows(a: list[tuple], b: list[tuple]) -> None:
    assert [r[:6] for r in a] == [r[:6] for r in b]
    np.testing.assert_allclose(np.array([r[6:] for r in a], dtype=float), np.array([r[6:] for r in b], dtype=float),
                               rtol=1e-6, atol=1e-9)


def test_store_primary_key_nan_and_fingerprint(tmp_path):
    row = ResultRow("val", transmm_spec().key, 3, "a.png", 1, 2, 2, {"saco": float("nan"), "fc": 0.5, "pf_auc": 0.25}, 16)
    with ResultStore(tmp_path) as store:
        store.register_experiment("e", "val", [transmm_spec()], [3])
        assert store.add_batch([row]) == 1
        assert store.add_batch([row]) == 0  # no duplicate
        columns = store.scores("val", transmm_spec().key)
        assert np.isnan(columns["saco"][0]) and columns["fc"][0] == 0.5 and store.count_rows() == 1
        store.check_fingerprint({"batch_size": 4})
        store.check_fingerprint({"batch_size": 4})
        with pytest.raises(ValueError, match="batch_size"):
            store.check_fingerprint({"batch_size": 8})
        view = store._conn.execute("SELECT DISTINCT experiment, method_label, image_id FROM experiment_results").fetchall()
        assert view == [("e", "TransMM", 3)]


def test_rows_match_quantus_metrics_and_model(tmp_path):
    model, data, saes = tiny_setup(6)
    with ResultStore(tmp_path) as store:
        added = evaluate_methods(model, data, SPECS[:2], store, experiment="e", split="val", saes=saes, config=CFG)
        assert added == 12
        columns = store.scores("val", SPECS[1].key)
        stored_attr = store.attribution("val", SPECS[1].key, 0)
    images, labels = data.tensors
    x = images[:4]  # the first batch, as evaluated (FC subsets are drawn per position in the batch)
    predictions = model(x).argmax(1)
    np.testing.assert_array_equal(columns["label"][:4], labels[:4].numpy())
    np.testing.assert_array_equal(columns["prediction"][:4], predictions.numpy())
    np.testing.assert_array_equal(columns["target"], columns["prediction"])
    attr = build_method(SPECS[1], model, saes)(x, predictions, torch.arange(4)).detach()
    np.testing.assert_allclose(stored_attr.reshape(-1), attr[0].numpy(), rtol=1e-6)
    kwargs = dict(model=model, x_batch=x.numpy(), y_batch=predictions.numpy(), a_batch=attr.numpy(), device="cpu")
    saco = SaCo(patch_size=8, n_groups=4)(**kwargs)
    fc = PatchFaithfulnessCorrelation(patch_size=8, nr_runs=8, subset_size=4, seed=3)(**kwargs)
    pf = PatchPixelFlipping(patch_size=8)(**kwargs)
    np.testing.assert_allclose(columns["saco"][:4], np.asarray(saco, dtype=float), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(columns["fc"][:4], np.asarray(fc, dtype=float), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(columns["pf_auc"][:4], np.asarray(pf, dtype=float).reshape(4), rtol=1e-5, atol=1e-7)


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)  # as the resumed and the clean run in the test's process (one_torch_thread)
from tests.test_bench_evaluate import CFG, SPECS, tiny_setup
from captum_fgattr.bench.evaluate import evaluate_methods
from captum_fgattr.bench.store import ResultStore

def kill(committed):
    if committed == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

model, data, saes = tiny_setup()
with ResultStore(sys.argv[1]) as store:
    evaluate_methods(model, data, SPECS, store, experiment="e", split="val", saes=saes, config=CFG, on_batch=kill)
"""


def test_resume_after_sigkill_gives_each_image_once_and_same_numbers(tmp_path, one_torch_thread):
    """Every run on one thread: a matmul's reduction order depends on the thread count, and FC's correlation over
    8 subsets amplified that float32 rounding to 4e-6 relative when the killed run used two."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(killed), "4"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = stored_rows(killed)
    # 3 batches (10 images, batch 4) x 3 methods; killed right after the 4th commit: batch 1 done, batch 2 started
    assert len(partial) == 4 + 4 + 4 + 4
    model, data, saes = tiny_setup()
    with ResultStore(killed) as store:
        added = evaluate_methods(model, data, SPECS, store, experiment="e", split="val", saes=saes, config=CFG)
    assert added == 30 - len(partial)
    with ResultStore(clean) as store:
        evaluate_methods(model, data, SPECS, store, experiment="e", split="val", saes=saes, config=CFG)
    resumed = stored_rows(killed)
    assert len(resumed) == 30 and len({r[:3] for r in resumed}) == 30
    assert_same_rows(resumed, stored_rows(clean))
    with ResultStore(killed) as store:  # a rerun of a finished evaluation does nothing
        assert evaluate_methods(model, data, SPECS, store, experiment="e", split="val", saes=saes, config=CFG) == 0


def test_shards_are_disjoint_and_complete(tmp_path):
    model, data, saes = tiny_setup()
    with ResultStore(tmp_path / "shards") as store:
        for rank in (1, 0):
            evaluate_methods(model, data, SPECS[:1], store, experiment="e", split="val", config=CFG,
                             shard=Shard(rank, 2))
    with ResultStore(tmp_path / "one") as store:
        evaluate_methods(model, data, SPECS[:1], store, experiment="e", split="val", config=CFG)
    assert_same_rows(stored_rows(tmp_path / "shards"), stored_rows(tmp_path / "one"))


def test_sweep_selection_follows_the_stated_rule(tmp_path):
    model, data, saes = tiny_setup(8)
    protocol = Protocol(layers=(0, 2), variants=("combined", "gradient"), multi_layers=((0, 1), (1, 2)),
                        kappas=(0.5, 2.0), c_maxes=(10.0,), val_images=None)
    with ResultStore(tmp_path) as store:
        selected = run_sweep(model, data, saes, store, protocol, CFG)
        ids = list(range(8))
        base = store.scores("val", transmm_spec().key, ids)

        def score(spec):  # mean over metrics of mean(Δ)/SD(Δ), pairs with a NaN dropped, PF flipped
            cols = store.scores("val", spec.key, ids)
            effects = []
            for m in metric_names():
                d = cols[m] - base[m]
                d = d[~np.isnan(d)]
                sd = d.std(ddof=1)
                effects.append((1 if m != "pf_auc" else -1) * d.mean() / sd if sd > 0 else np.nan)
            mean = np.mean(effects)
            return mean if np.isfinite(mean) else -np.inf

        singles = [fg_spec([layer], "combined", 0.5, 10.0) for layer in (0, 2)]  # the ablation is never selected
        best = max(singles, key=score)
        assert selected["single_layer"].method_key == best.key
        assert set(selected["single_layer"].details["candidates"]) == {s.key for s in singles}
        assert store.selection("single_layer").rule == selection_rule() == (
            "highest mean over SaCo, FC and PF of the standardised paired effect vs TransMM on the same validation "
            "images (mean delta / SD delta, PF sign flipped so positive is better); ties: first candidate")
        multis = [fg_spec(layers, "combined", 0.5, 10.0) for layers in ((0, 1), (1, 2))]
        assert selected["multi_layer"].method_key == max(multis, key=score).key
        grid = [fg_spec(selected["multi_layer"].details["chosen"]["params"]["layers"], "combined", k, 10.0)
                for k in (0.5, 2.0)]
        assert selected["kappa_cmax"].method_key == max(grid, key=score).key
        assert [e for e, _ in store.experiments()] == ["single_layer", "multi_layer", "kappa_cmax"]
        assert len(store.experiment_methods("single_layer", "val")) == 1 + 4  # the ablation is evaluated


def test_clear_errors(tmp_path):
    model, data, saes = tiny_setup(4)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        MethodSpec("nope")
    with ResultStore(tmp_path) as store:
        with pytest.raises(ValueError, match=r"no SAE for gated layers \[2\]"):
            evaluate_methods(model, data, [fg_spec([2], "combined", 0.5, 10.0)], store, experiment="e", split="val",
                             saes={0: saes[0]}, config=CFG)
        with pytest.raises(ValueError, match="empty"):
            run_sweep(model, TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0)), saes, store,
                      Protocol(layers=(0,), multi_layers=()), CFG)
        with pytest.raises(ValueError, match=r"no SAE for layers \[5\]|out of range"):
            run_sweep(model, data, saes, store, Protocol(layers=(0,), multi_layers=((1, 5),)), CFG)
    with pytest.raises(ValueError, match="empty"):
        select_ids(0)
    with pytest.raises(ValueError, match=r"unknown keys \['batchsize'\]"):
        RunConfig.from_dict({"evaluation": {"batchsize": 3}})
    with pytest.raises(ValueError, match=r"unknown keys \['modle'\]"):
        RunConfig.from_dict({"modle": {}})
    with pytest.raises(ValueError, match="target='truth'"):
        EvalConfig(target="truth")
    with pytest.raises(ValueError, match="variants"):
        Protocol(variants=("combined", "mixed"))


def test_run_study_python_api_on_tensors(tmp_path, capsys):
    model, data, saes = tiny_setup(8)
    images, labels = data.tensors
    protocol = Protocol(layers=(1,), variants=("combined", "activation"), multi_layers=((0, 2),), kappas=(0.5,),
                        c_maxes=(2.0,), baselines=("random",), shuffle_seeds=(0, 1), permute_seeds=(3,), val_images=None,
                        test_images=3)
    run_dir = run_study(model, (images, labels), (images[:6], labels[:6]), saes, tmp_path / "run", protocol, CFG)
    with ResultStore(run_dir) as store:
        assert store.experiment_ids("test", "test") == select_ids(6, 3, protocol.subset_seed)
        labels_in_test = [s.label for s in store.experiment_methods("test", "test")]
        assert store.invocations()[0][2]["protocol"]["test_images"] == 3
    controls = lambda cfg, layers: [  # noqa: E731
        f"FG {cfg} combined κ=0.5 c={layers} shuffled decoder s0", f"FG {cfg} combined κ=0.5 c={layers} shuffled decoder s1",
        f"FG {cfg} grad_input κ=0.5 c={layers}", f"FG {cfg} grad_input_centered κ=0.5 c={layers}",
        f"FG {cfg} bias_projection κ=0.5 c={layers}", f"FG {cfg} combined κ=0.5 c={layers} permuted gates s3"]
    assert labels_in_test == ["TransMM", "FG L1 combined κ=0.5 c=10", *controls("L1", 10),
                              "FG L[0,2] combined κ=0.5 c=2", *controls("L[0,2]", 2), "random"]
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Selections on validation" in report and "FG L[0,2] combined κ=0.5 c=2" in report
    assert report.index("## Selections on validation") < report.index("### test (test")
    assert "### Paired comparisons (test)" in report and "### Verdicts" in report
    assert "FG L1 combined κ=0.5 c=10 vs shuffled decoder (2 seeds): SaCo" in report
    assert (run_dir / "report" / "comparisons_test.png").is_file()
    assert "FG L1 activation" in (run_dir / "report" / "single_layer.md").read_text()  # ablation reported
    progress = capsys.readouterr().err.splitlines()
    lines = [line for line in progress if line.startswith("fgattr: ") and " finished (" in line]
    assert [line.split()[1] for line in lines] == ["single_layer", "multi_layer", "kappa_cmax", "test"]
    with ResultStore(run_dir) as store:
        rows = store.count_rows()
    assert f"({rows:,} of ~{rows:,} evaluations)" in lines[-1] and lines[-1].endswith("ETA 0s")
    run_study(model, (images, labels), (images[:6], labels[:6]), saes, tmp_path / "run", protocol, CFG)
    again = [line for line in capsys.readouterr().err.splitlines() if " finished (" in line]
    assert again[-1].endswith("ETA 0s") and f"({rows:,} of ~{rows:,}" in again[-1]  # resumed: all stored


def test_a_non_combined_method_variant_refuses_the_shuffled_control():
    with pytest.raises(ValueError, match="shuffled-decoder control cannot differ"):
        Protocol(variants=("combined", "gradient"), method_variant="gradient")
    Protocol(variants=("combined", "gradient"), method_variant="gradient", controls=("grad_input",))
    with pytest.raises(ValueError, match="method_variant"):
        Protocol(variants=("combined",), method_variant="activation", controls=())


def test_metric_presets_resolve_per_patch_count():
    thesis = MetricConfig(preset="thesis-code", seed=5)  # the author's seed 42 replaces the given one
    assert thesis.resolved(196) == MetricConfig(
        49, 20, 20, "spearman", 3, 1, "patches", 42, saco_target="perturbed_top", saco_tie_order="numpy_reversed",
        saco_pairing="salience", fc_sampling="numpy_global", pf_tie_order="numpy_negated",
        pf_replacement="running_mean", undefined_score="zero", preset="thesis-code")
    assert (thesis.resolved(49).saco_groups, thesis.resolved(49).fc_subset_size) == (13, 10)
    # the field defaults, but SaCo's pairs in descending salience as the definition presumes
    assert MetricConfig(preset="paper").resolved(196) == MetricConfig(saco_pairing="salience", preset="paper")
    assert MetricConfig(preset="paper").resolved(16).fc_subset_size == 8
    assert MetricConfig(saco_groups=3).resolved(196) == MetricConfig(saco_groups=3)  # no preset: as given
    with pytest.raises(ValueError, match="metric preset 'thesis'"):
        MetricConfig(preset="thesis")
    for name in ("saco_target", "saco_tie_order", "saco_pairing", "fc_sampling", "pf_tie_order", "pf_replacement",
                 "undefined_score"):
        with pytest.raises(ValueError, match=f"{name}='other'; expected one of"):
            MetricConfig(**{name: "other"})
    # run folders written before the variant options keep their fingerprint
    assert MetricConfig(seed=3).fingerprint() == dict(saco_groups=10, fc_subset_size=20, fc_runs=100,
                                                      fc_correlation="pearson", fc_repeats=1, pf_patches_per_step=1,
                                                      pf_scale="unit", seed=3, preset=None)
    assert MetricConfig(pf_replacement="running_mean").fingerprint()["pf_replacement"] == "running_mean"


def test_fc_repeats_average_the_seeds(tmp_path):
    from quantus_saco.engine import evaluate_patch_metrics

    model, data, _ = tiny_setup(4)
    metrics = MetricConfig(saco_groups=4, fc_subset_size=4, fc_runs=8, fc_repeats=3, seed=3)
    with ResultStore(tmp_path) as store:
        evaluate_methods(model, data, [transmm_spec()], store, experiment="e", split="val",
                         config=EvalConfig(batch_size=4, progress=False, metrics=metrics))
        stored = store.scores("val", transmm_spec().key)["fc"]
    images, _ = data.tensors
    targets = model(images).argmax(dim=1)
    attr = build_method(transmm_spec(), model)(images, targets, torch.arange(4))
    per_seed = [evaluate_patch_metrics(model, images, attr, targets, 8, metrics=("fc",), fc_subset_size=4, fc_runs=8,
                                       seed=3 + r, sample_ids=torch.arange(4))["fc"] for r in range(3)]
    np.testing.assert_allclose(stored, torch.stack(per_seed).mean(0).numpy(), rtol=1e-6)
    assert not np.allclose(stored, per_seed[0].numpy())
