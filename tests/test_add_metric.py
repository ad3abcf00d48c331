"""The metric extension point, used from a test module only: one MetricSpec with its own compute function,
registered here, is computed per image, stored, resumed and reported through the benchmark."""
from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import Tensor

from captum_fgattr.bench.analysis.comparisons import claim_comparisons, verdict_lines
from captum_fgattr.bench.config import Protocol
from captum_fgattr.bench.evaluate import evaluate_methods
from captum_fgattr.bench.experiments import TEST, transmm_spec
from captum_fgattr.bench.metrics import MetricBatch, MetricSpec, metric_names, register_metric, unregister_metric
from captum_fgattr.bench.stats import verdict
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import run_study
from tests.test_bench_evaluate import CFG, tiny_setup

K = 3  # patches deleted


def top_k_deletion_drop(batch: MetricBatch) -> Tensor:
    """(B,) drop of the target logit when the K most attributed patches of each image are set to 0."""
    b, _, h, w = batch.images.shape
    ps = batch.patch_size
    deleted = torch.zeros_like(batch.attributions, dtype=torch.bool)
    deleted.scatter_(1, batch.attributions.topk(K, dim=1).indices, True)
    pixels = deleted.view(b, 1, h // ps, w // ps).repeat_interleave(ps, 2).repeat_interleave(ps, 3)
    with torch.no_grad():
        logits = batch.model(batch.images.masked_fill(pixels, 0.0)).float()
    target = batch.targets[:, None]
    return (batch.logits.gather(1, target) - logits.gather(1, target))[:, 0].double()


TOP_K_DROP = MetricSpec("topk_drop", f"Top-{K} drop", True, top_k_deletion_drop,
                        f"**Top-{K} drop**: target-logit drop when the {K} most attributed patches are set to 0.")


@pytest.fixture
def topk_drop_registered():
    register_metric(TOP_K_DROP)
    yield TOP_K_DROP
    unregister_metric(TOP_K_DROP.name)


def expected_drop(model, image: Tensor, attribution: np.ndarray, target: int, patch_size: int = 8) -> float:
    """The metric written out for one image: its K highest-attribution patches zeroed, one patch at a time."""
    gw = attribution.shape[1]
    flat = attribution.reshape(-1)
    top = sorted(range(len(flat)), key=lambda p: -flat[p])[:K]
    perturbed = image.clone()
    for p in top:
        r, c = divmod(p, gw)
        perturbed[:, r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size] = 0.0
    with torch.no_grad():
        before, after = model(image[None])[0, target], model(perturbed[None])[0, target]
    return float(before - after)


def test_a_metric_is_one_spec_with_its_compute_function(tmp_path, topk_drop_registered):
    assert metric_names() == ("saco", "fc", "pf_auc", "topk_drop")
    model, data, saes = tiny_setup(6)
    protocol = Protocol(layers=(1,), variants=("combined",), multi_layers=(), controls=(), baselines=(),
                        val_images=None, test_images=4)
    config = replace(CFG, gallery=4)  # keep every test image's attributions, to recompute the metric from them
    run_dir = run_study(model, data, data, saes, tmp_path / "run", protocol, config)

    images = data.tensors[0]
    with ResultStore(run_dir) as store:
        specs = store.experiment_methods(TEST, "test")
        assert [s.name for s in specs] == ["transmm", "fg"]
        stored = {}
        for spec in specs:
            columns = store.scores("test", spec.key)
            assert columns["image_id"].tolist() == store.experiment_ids(TEST, "test") and len(columns["image_id"]) == 4
            expected = [expected_drop(model, images[i], store.attribution("test", spec.key, i), t)
                        for i, t in zip(columns["image_id"].tolist(), columns["target"].tolist())]
            np.testing.assert_allclose(columns["topk_drop"], expected, rtol=1e-5, atol=1e-5)
            stored[spec.key] = columns["topk_drop"]
        counts = dict(store._conn.execute("SELECT metric, COUNT(*) FROM scores GROUP BY metric").fetchall())
        assert counts["topk_drop"] == counts["saco"] == store.count_rows()  # every image of every experiment
        comparisons = [c for c in claim_comparisons(store, TEST, "test") if c.metric == "topk_drop"]
    assert [c.against for c in comparisons] == ["transmm"]
    delta = stored[specs[1].key] - stored[specs[0].key]
    assert comparisons[0].result.delta == pytest.approx(delta.mean())

    report = run_dir / "report"
    table = (report / "test.md").read_text()
    assert f"| {TOP_K_DROP.title} | % | p Welch | p paired |" in table and TOP_K_DROP.title == "Top-3 drop ↑"
    with (report / "test.csv").open() as f:
        rows = list(csv.DictReader(f))
    base, fg = (float(row["topk_drop_mean"]) for row in rows)
    assert base == pytest.approx(stored[specs[0].key].mean()) and fg == pytest.approx(stored[specs[1].key].mean())
    pct = 100 * (fg - base) / base if base >= 0.05 else float("nan")  # higher is better; "–" below a 0.05 baseline
    assert float(rows[1]["topk_drop_pct"]) == pytest.approx(pct, nan_ok=True)
    paired = (report / "comparisons_test.md").read_text()
    assert f"| TransMM | {TOP_K_DROP.short} | 4 |" in paired
    assert f"SaCo, FC and {TOP_K_DROP.short}: positive Δ is better; PF: negative Δ is better" in paired
    said = verdict(comparisons[0].result, higher_is_better=True)
    assert f"{TOP_K_DROP.short} {said} (Δ {comparisons[0].result.delta:+.3f}" in verdict_lines(comparisons)[0]
    assert f"| d_z {TOP_K_DROP.short} |" in (report / "report.md").read_text()  # the validation summary
    assert f"highest mean over SaCo, FC, PF and {TOP_K_DROP.short} of the standardised" in \
        (report / "report.md").read_text()  # the selection rule names it
    assert f"* {TOP_K_DROP.definition}" in (report / "report.md").read_text()  # defined in the setup section


def test_a_resumed_run_computes_a_newly_registered_metric(tmp_path):
    model, data, saes = tiny_setup(6)
    with ResultStore(tmp_path) as store:
        assert evaluate_methods(model, data, [transmm_spec()], store, experiment="e", split="val", config=CFG) == 6
        before = store.scores("val", transmm_spec().key)
        register_metric(TOP_K_DROP)
        try:
            assert store.done_ids("val", transmm_spec().key) == set()
            assert np.isnan(store.scores("val", transmm_spec().key)["topk_drop"]).all()
            added = evaluate_methods(model, data, [transmm_spec()], store, experiment="e", split="val", config=CFG)
            after = store.scores("val", transmm_spec().key)
            assert store.done_ids("val", transmm_spec().key) == set(range(6))
        finally:
            unregister_metric(TOP_K_DROP.name)
    assert added == 6 and np.isfinite(after["topk_drop"]).all()
    for metric in ("saco", "fc", "pf_auc"):
        np.testing.assert_array_equal(after[metric], before[metric])
