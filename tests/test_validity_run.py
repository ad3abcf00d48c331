"""The metric-validity additions inside a run: SRG as an extra metric of the test experiment (equal to the Quantus
path on the same maps, kept out of the selection and the Holm families), the validity checks on a seeded subset
(resumable per method, a map that ignores the model flagged) and their report section; and a control whose scores
are rounding noise at its layer, reported once beside TransMM with the reason."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from captum_fgattr.bench.analysis.comparisons import claim_comparisons
from captum_fgattr.bench.config import EvalConfig, MetricConfig, Protocol
from captum_fgattr.bench.evaluate import evaluate_methods, select_ids
from captum_fgattr.bench.methods import MethodSpec, build_method
from captum_fgattr.bench.metrics import MetricBatch, metric_spec
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import run_study
from captum_fgattr.bench.validity import VALIDITY_FILE, run_validity
from quantus_saco import PatchSRG
from quantus_saco.forwards import PerturbedForwards
from quantus_saco.region import evaluate_road
from tests.conftest import make_vit
from tests.test_bench_evaluate import tiny_setup
from tests.test_fg_transmm import make_sae

METRICS = MetricConfig(saco_groups=4, fc_subset_size=4, fc_runs=8, seed=3, pf_patches_per_step=2, extra=("srg",))
CFG = EvalConfig(batch_size=4, progress=False, gallery=0, metrics=METRICS)
PROTOCOL = Protocol(layers=(1,), variants=("combined",), multi_layers=(), controls=("bias_projection",),
                    baselines=("random", "saliency"), val_images=None, test_images=6, validity_images=4,
                    black_input=(-1.0, -1.0, -1.0))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model, data, saes = tiny_setup(8)
    images, labels = data.tensors
    run_dir = run_study(model, (images, labels), (images, labels), saes, tmp_path_factory.mktemp("v") / "run",
                        PROTOCOL, CFG)
    return run_dir, model, images, labels, saes


def test_srg_is_computed_on_the_test_experiment_only_and_equals_the_quantus_path(run):
    run_dir, model, images, _, saes = run
    with ResultStore(run_dir) as store:
        ids = store.experiment_ids("test", "test")
        specs = store.experiment_methods("test", "test")
        for spec in specs:
            stored = store.scores("test", spec.key, ids)
            x = images[ids]
            attr = build_method(spec, model, saes)(x, torch.as_tensor(stored["target"]), torch.tensor(ids)).detach()
            expected = PatchSRG(patch_size=8, patches_in_step=2, disable_warnings=True)(
                model=model, x_batch=x.numpy(), y_batch=stored["target"], a_batch=attr.numpy(), device="cpu")
            np.testing.assert_allclose(stored["srg"], expected, atol=1e-6, err_msg=spec.label)
        sweep = store.scores("val", specs[0].key, store.experiment_ids("single_layer", "val"))
        assert np.isnan(sweep["srg"]).all() and np.isfinite(sweep["saco"]).all()  # not in the selection's experiments
        assert {c.metric for c in claim_comparisons(store, "test", "test")} == {"saco", "fc", "pf_auc"}
    table = (run_dir / "report" / "test.md").read_text()
    assert "| SRG ↑ | % | p Welch | p paired |" in table
    assert "SRG" not in (run_dir / "report" / "single_layer.md").read_text()


def test_validity_checks_are_stored_per_method_resumable_and_reported(run):
    run_dir, model, images, labels, saes = run
    results = json.loads((run_dir / VALIDITY_FILE).read_text())
    with ResultStore(run_dir) as store:
        test_ids = store.experiment_ids("test", "test")
        ranked = [s for s in store.experiment_methods("test", "test") if not s.label.startswith("FG L1 bias")]
    assert results["images"] == [test_ids[i] for i in select_ids(6, 4, PROTOCOL.subset_seed)]
    assert [results["methods"][s.key]["label"] for s in ranked] == [s.label for s in ranked]  # controls left out
    random_key = next(s.key for s in ranked if s.name == "random")
    assert results["methods"][random_key]["mprt"] == pytest.approx([1.0] * 4)  # a map that ignores the model
    assert results["methods"][random_key]["random_logit"] == pytest.approx([1.0] * 4)
    for spec in ranked:
        entry = results["methods"][spec.key]
        assert len(entry["fc_retest"]) == len(entry["mprt"]) == 4
        assert all(len(entry[fill][m]) == 4 for fill in ("black", "blur") for m in ("saco", "fc", "pf_auc"))
    removed = results["methods"].pop(ranked[0].key)  # an interrupted run: one method missing
    (run_dir / VALIDITY_FILE).write_text(json.dumps(results))
    with ResultStore(run_dir) as store:
        run_validity(model, torch.utils.data.TensorDataset(images, labels), saes, store, PROTOCOL,
                     replace(CFG, progress=False))
    again = json.loads((run_dir / VALIDITY_FILE).read_text())
    assert again["methods"][ranked[0].key] == removed  # recomputed alike
    assert again["methods"][random_key] == results["methods"][random_key]  # kept
    report = (run_dir / "report" / "report.md").read_text()
    section = report.split("## Metric validity", 1)[1].split("\n## ", 1)[0]
    assert "| random | 1.00 | **no** | 1.00 | **no** |" in section
    assert "MPRT flags 1 method whose map hardly changes" in section and "random (MPRT ρ 1.00; ranks" in section
    assert "| SaCo – SRG |" in section and "Replacing the removed patches by a blurred copy" in section


def test_an_undefined_randomisation_rho_is_left_out_of_the_mean_and_counted(run, tmp_path):
    """A constant map (e.g. Grad-CAM's all-zero map for the other class) has no ρ: NaN, not in the mean, counted."""
    import shutil

    from captum_fgattr.bench.report.study_report import write_report

    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    results = json.loads((copy / VALIDITY_FILE).read_text())
    entry = next(e for e in results["methods"].values() if e["label"] == "saliency")
    entry["random_logit"] = [0.2, float("nan"), -0.4, float("nan")]
    (copy / VALIDITY_FILE).write_text(json.dumps(results))
    section = write_report(copy).read_text().split("## Metric validity", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| saliency |"))
    assert row.split(" | ")[3] == "-0.10 (2 of 4 undefined: constant map)"  # (0.2 − 0.4) / 2


def test_a_constant_map_gives_an_undefined_rho_without_numpy_warnings():
    import warnings

    from quantus_saco.randomisation import weight_dependence

    model = make_vit(img_size=16, patch_size=8, depth=1, num_classes=3).eval()

    def first_constant(model, inputs, targets, **_):  # the first image's map is the same number everywhere
        maps = np.random.default_rng(len(inputs)).normal(size=(len(inputs), 4)).astype(np.float32)
        maps[0] = 0.5
        return maps

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        checks = weight_dependence(model, np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32),
                                   np.array([0, 1, 2]), first_constant, 8, batch_size=3)
    for rho in (checks.mprt, checks.random_logit):
        assert np.isnan(rho[0]) and np.isfinite(rho[1:]).all()


def test_road_is_selectable_and_computed_with_the_runs_seed_and_sample_ids(tmp_path):
    model, data, saes = tiny_setup(6)
    spec = MethodSpec("saliency")
    config = replace(CFG, metrics=replace(METRICS, extra=("road",)))
    with ResultStore(tmp_path) as store:
        evaluate_methods(model, data, [spec], store, experiment="test", split="test", image_ids=[1, 3, 4], config=config)
        stored = store.scores("test", spec.key, [1, 3, 4])
    x = data.tensors[0][[1, 3, 4]]
    ids = torch.tensor([1, 3, 4])
    attr = build_method(spec, model)(x, torch.as_tensor(stored["target"]), ids).detach()
    expected = evaluate_road(model, x, attr, torch.as_tensor(stored["target"]), 8, seed=METRICS.seed, sample_ids=ids)
    np.testing.assert_allclose(stored["road"], expected["road_srg"].numpy(), atol=1e-9)
    assert np.isnan(stored["srg"]).all()  # not selected


def test_srg_takes_its_own_step_and_reuses_pixel_flippings_images(tmp_path):
    """SRG at 4 patches per step beside PF at 2: equal to the Quantus path at 4, and its MoRF images are PF's, so only
    its LeRF images are forwarded anew (counted by the shared outputs)."""
    model, data, _ = tiny_setup(4)
    x = data.tensors[0]
    metrics = replace(METRICS, settings={"srg": {"patches_per_step": 4}})
    attr = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    forwards = PerturbedForwards(model, x, 8)
    batch = MetricBatch(model, x, attr, target, torch.arange(4), logits, 8, metrics, forwards=forwards)
    batch.engine(("pf",))
    before = forwards.forwarded
    srg = metric_spec("srg").compute(batch)
    expected = PatchSRG(patch_size=8, patches_in_step=4, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(), device="cpu")
    np.testing.assert_allclose(srg.numpy(), expected, atol=1e-6)
    assert forwards.forwarded - before == 4 * 3  # per image LeRF's 4 steps, the last (all removed) one PF's


def test_extra_metrics_are_checked():
    with pytest.raises(ValueError, match=r"extra=\['saco'\]; expected distinct names of the extra metrics \['srg', 'road'\]"):
        MetricConfig(extra=("saco",))
    with pytest.raises(ValueError, match="extra="):
        MetricConfig(extra=("srg", "srg"))
    assert "extra" not in MetricConfig(extra=("srg",)).fingerprint()  # adds columns, changes no stored number


def test_a_control_whose_scores_are_rounding_noise_is_reported_once_beside_transmm(tmp_path):
    """grad_input at the last block's input of a 6-block ViT: ⟨g, x⟩ is rounding noise, its gates are neutral, its
    scores TransMM's: the claims family compares it once (merged into the TransMM row) and says why."""
    model = make_vit(depth=6, embed_dim=64, num_heads=4, num_classes=3)
    gen = torch.Generator().manual_seed(2)
    images, labels = torch.randn(6, 3, 32, 32, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    saes = {4: make_sae(64, seed=4)}
    protocol = Protocol(layers=(4,), variants=("combined",), multi_layers=(), controls=("grad_input",), baselines=(),
                        val_images=None, test_images=None)
    config = replace(CFG, metrics=replace(METRICS, extra=()))
    run_dir = run_study(model, (images, labels), (images, labels), saes, tmp_path / "run", protocol, config)
    with ResultStore(run_dir) as store:
        specs = store.experiment_methods("test", "test")
        transmm, grad_input = specs[0], next(s for s in specs if "grad_input" in s.label)
        a, b = store.scores("test", transmm.key, None), store.scores("test", grad_input.key, None)
        assert all(np.array_equal(a[m], b[m], equal_nan=True) for m in ("saco", "fc", "pf_auc"))
        claims = claim_comparisons(store, "test", "test")
    assert {c.against for c in claims} == {"transmm"} and all(c.same_as == ("grad_input",) for c in claims)
    text = (run_dir / "report" / "comparisons_test.md").read_text()
    assert "grad_input ⟨g, x⟩ scored exactly as TransMM on every image (its gates were all neutral" in text
    assert not math.isnan(claims[0].result.delta)
