"""The benchmark's core functions on a tiny model with minimal sizes: fields and agreement, no timings asserted."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's benchmarks/ folder

from benchmarks import core, run  # noqa: E402
from conftest import make_vit  # noqa: E402


@pytest.fixture
def tiny() -> core.BenchModel:
    vit = make_vit(num_classes=3)
    return core.BenchModel("tiny", vit, img_size=32, patch_size=8, num_classes=3, width=32, depth=3, weights="random init (test)")


def test_run_model_and_report_fields(tiny):
    sizes = core.Sizes(attr_batch=3, reps=1, eval_images=2, quantus=True, saco_groups=4, fc_runs=4, n_gated=2, sae_expansion=4)
    result = core.run_model(tiny, sizes, autocast=True)
    report = json.loads(json.dumps(run.report(torch.device("cpu"), True, True, [result], None, 1.0)))

    for ratio in ("transmm_batched_over_loop", "fg_over_transmm", "fast_eval_over_quantus"):
        assert ratio in report["definitions"]
        assert report[ratio]["tiny"] > 0
    assert report["device"] == "cpu" and report["device_name"]
    timings = report["models"]["tiny"]["timings"]
    for name in ("transmm_batched", "transmm_loop", "fg_transmm", "fast_eval", "quantus_eval", "fast_eval_autocast"):
        assert set(timings[name]) == {"seconds", "images", "images_per_s", "peak_mib"}
    assert timings["fast_eval"]["images"] == 2 and timings["transmm_loop"]["images"] == 3
    assert report["max_abs_diff_fast_vs_quantus"]["tiny"] <= 1e-5
    assert result["max_abs_diff_transmm_batched_vs_loop"] <= 1e-5
    assert set(result["autocast_mean_abs_diff"]) == {"saco", "fc", "pf_auc"}
    assert result["gated_layers"] == [1, 2] and result["sae"] == {"n_features": 128, "k": 5}
    assert "| tiny" in run.attribution_table([result]) and "| tiny" in run.evaluation_table([result])
    assert 0 < report["fg_encode_share"]["tiny"] < 1
    assert report["eval_fraction_of_forward_bound"]["tiny"] > 0
    settings = result["settings"]
    bound = result["bound"]
    assert bound["forwards_per_image"] == settings["saco_groups"] + settings["fc_runs"] + 16 // settings["pf_step"] + 1
    fraction = bound["forwards_per_image"] * bound["best_forward_s_per_image"] / (timings["fast_eval"]["seconds"] / 2)
    assert report["eval_fraction_of_forward_bound"]["tiny"] == pytest.approx(fraction)


def test_quantus_skipped_is_reported(tiny):
    sizes = core.Sizes(attr_batch=2, reps=1, eval_images=1, quantus=False, saco_groups=2, fc_runs=2, n_gated=1, sae_expansion=2)
    result = core.run_model(tiny, sizes)
    report = run.report(torch.device("cpu"), True, False, [result], None, 1.0)
    assert report["fast_eval_over_quantus"]["tiny"] is None
    assert any("skipped" in note for note in report["notes"])
    assert "skipped" in run.evaluation_table([result])


def test_scaling_point_fields(tiny):
    row = core._sweep_point(tiny, batch=2, n_gated=1, expansion=2, reps=1, eval_fc_runs=2)
    assert set(row) == {"transmm_ms_per_image", "fg_ms_per_image", "eval_ms_per_image", "fg_over_transmm"}
    assert "| batch" in run.scaling_table([{"axis": "batch", "value": 2, **row}])


def test_gated_layers_and_sizes():
    assert core.gated_layers(12) == (4, 6, 7) and core.gated_layers(6) == (2, 3, 4)
    assert core.gated_layers(3, 3) == (0, 1, 2) and core.sae_k(768) == 128 and core.sae_k(128) == 21
    with pytest.raises(ValueError, match="eval_images=4 > attr_batch=2"):
        core.Sizes(attr_batch=2, reps=1, eval_images=4, quantus=False)
    with pytest.raises(ValueError, match="model='resnet'"):
        core.build_model("resnet", torch.device("cpu"))
