"""End to end through the ``fgattr`` CLI: train-sae -> sweep -> evaluate -> report, and a 2-rank torchrun."""
from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml  # comes with timm
from PIL import Image
from safetensors.torch import save_file
from scipy import stats as sps

from captum_fgattr.bench.cli.main import build_parser, main
from captum_fgattr.bench.cli.run import resolve_config
from captum_fgattr.bench.report.study_report import write_report
from captum_fgattr.bench.store import ResultStore
from tests.test_bench_evaluate import ROOT, stored_rows


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Image folders (3 classes), a random test_vit checkpoint (64 px, 16 patches, 6 blocks), SAEs, config."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    for split, per_class in (("val", 3), ("test", 2)):
        for c, name in enumerate(("cat", "dog", "lung")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                pixels[16 * c:16 * c + 16] = 255  # a class-dependent bright band
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=64)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(6.0)  # attention far from uniform
    save_file(model.state_dict(), str(root / "vit.safetensors"))
    model_args = ["--model", "test_vit", "--checkpoint", str(root / "vit.safetensors"), "--num-classes", "3",
                  "--img-size", "64"]
    assert main(["train-sae", *model_args, "--data", str(root / "val"), "--layers", "1", "2", "3", "--expansion", "2",
                 "--k", "8", "--lr", "1e-3", "--epochs", "1", "--batch-tokens", "64", "--warmup-steps", "2",
                 "--output", str(root / "saes"), "--quiet", "--device", "cpu"]) == 0
    config = {
        "model": {"name": "test_vit", "checkpoint": str(root / "vit.safetensors"), "num_classes": 3, "img_size": 64},
        "data": {"val": str(root / "val"), "test": str(root / "test")},
        "saes": str(root / "saes"),
        "protocol": {"layers": [1, 2], "variants": ["combined", "gradient"], "multi_layers": [[1, 2], [2, 3]],
                     "kappas": [0.5, 1.0], "c_maxes": [10.0], "baselines": ["random", "rollout"], "val_images": None},
        "evaluation": {"batch_size": 4, "progress": False, "gallery": 2,
                       "metrics": {"saco_groups": 4, "fc_subset_size": 4, "fc_runs": 8}},
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_train_sweep_evaluate_report(study, tmp_path):
    run = tmp_path / "run"
    cfg = ["--config", str(study / "config.json"), "--run-dir", str(run)]
    assert main(["sweep", *cfg]) == 0
    assert main(["evaluate", *cfg]) == 0
    assert main(["report", "--run-dir", str(run)]) == 0
    out = run / "report"
    for name in ("single_layer", "multi_layer", "kappa_cmax", "test"):
        assert (out / f"{name}.md").stat().st_size > 0
    for name in ("single_layer", "multi_layer", "kappa_cmax", "overlays_test"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["evaluation"]["batch_size"] == 4

    conn = sqlite3.connect(run / "results.sqlite")
    assert [c for c, in conn.execute("SELECT command FROM invocations ORDER BY id")] == ["sweep", "evaluate"]
    selected = dict(conn.execute("SELECT name, method_key FROM selections").fetchall())
    assert set(selected) == {"single_layer", "multi_layer", "kappa_cmax"}
    test_keys = [k for k, in conn.execute("SELECT method_key FROM experiment_methods WHERE experiment = 'test' "
                                          "ORDER BY position")]
    # TransMM, per configuration FG real + 5 shuffled + 3 residual + 5 permuted, 2 baselines
    assert len(test_keys) == 1 + 2 * (1 + 5 + 3 + 5) + 2 and selected["single_layer"] in test_keys

    def column(key: str, metric: str) -> np.ndarray:  # straight from SQLite, NULL = NaN
        rows = conn.execute("SELECT value FROM scores WHERE split = 'test' AND method_key = ? AND metric = ? "
                            "ORDER BY image_id", (key, metric)).fetchall()
        return np.array([np.nan if v is None else v for v, in rows], dtype=float)

    with (out / "test.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["method_key"] for row in table] == test_keys
    base = {m: column(test_keys[0], m) for m in ("saco", "fc", "pf_auc")}
    for row in table:
        assert int(row["n_images"]) == 6
        for metric in ("saco", "fc", "pf_auc"):
            values = column(row["method_key"], metric)
            kept = values[~np.isnan(values)]
            assert float(row[f"{metric}_mean"]) == pytest.approx(kept.mean(), rel=1e-9)
            assert float(row[f"{metric}_se"]) == pytest.approx(sps.sem(kept), rel=1e-9)
            assert int(row[f"{metric}_n_nan"]) == int(np.isnan(values).sum())
            if row["method_key"] != test_keys[0]:
                both = ~(np.isnan(values) | np.isnan(base[metric]))
                p = sps.ttest_rel(values[both], base[metric][both]).pvalue
                assert float(row[f"{metric}_p_paired"]) == pytest.approx(p, rel=1e-6)
                delta = kept.mean() - np.nanmean(base[metric])
                sign = -1 if metric == "pf_auc" else 1
                reference = np.nanmean(base[metric])  # % only over a baseline mean >= 0.05 (else "–", NaN)
                pct = sign * 100 * delta / reference if reference >= 0.05 else float("nan")
                assert float(row[f"{metric}_pct"]) == pytest.approx(pct, nan_ok=True)
    write_report(run, tmp_path / "thesis_scale", pf_scale="patches")
    with (tmp_path / "thesis_scale" / "test.csv").open() as f:
        scaled = list(csv.DictReader(f))
    assert float(scaled[0]["pf_auc_mean"]) == pytest.approx(16 * float(table[0]["pf_auc_mean"]))
    md = (out / "test.md").read_text()
    first = table[1]
    assert f"{float(first['saco_mean']):.3f} ± {float(first['saco_se']):.3f}" in md
    assert main(["evaluate", *cfg]) == 0  # rerun: resumes, nothing to add
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == len(stored_rows(run))
    conn.close()


def test_cli_reports_bad_configuration(study, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"protocol": {"layer": [1]}}))
    assert main(["sweep", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "unknown keys ['layer']" in capsys.readouterr().err
    assert main(["evaluate", "--config", str(study / "config.json"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "no 'single_layer' selection" in capsys.readouterr().err
    assert main(["sweep", "--config", str(study / "config.json"), "--run-dir", str(tmp_path / "r3"),
                 "--layers", "4"]) == 2
    assert "no SAE for layers [4]" in capsys.readouterr().err
    other = resolve_config(build_parser().parse_args(["sweep", "--config", str(study / "config.json"),
                                                      "--checkpoint", "other.safetensors"]))
    with ResultStore(tmp_path / "r4") as store:
        store.check_fingerprint(asdict(other.model), "model")
    assert main(["evaluate", "--config", str(study / "config.json"), "--run-dir", str(tmp_path / "r4")]) == 2
    assert "different settings for ['checkpoint']" in capsys.readouterr().err


def test_yaml_config_flags_and_help(study, tmp_path, capsys):
    values = json.loads((study / "config.json").read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    from_yaml = resolve_config(build_parser().parse_args(["sweep", "--config", str(tmp_path / "c.yaml")]))
    from_json = resolve_config(build_parser().parse_args(["sweep", "--config", str(study / "config.json"),
                                                          "--batch-size", "2", "--multi-layers", "1,3"]))
    assert from_yaml.protocol.multi_layers == ((1, 2), (2, 3)) and from_yaml.evaluation.batch_size == 4
    assert from_json.protocol.multi_layers == ((1, 3),) and from_json.evaluation.batch_size == 2
    assert from_json.evaluation.metrics.saco_groups == 4 and from_yaml.saes == str(study / "saes")
    for command in ("sweep", "evaluate", "run", "report"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "--run-dir" in capsys.readouterr().out


def test_torchrun_two_ranks_match_one_process(study, tmp_path):
    methods = json.dumps([{"name": "fg", "params": {"layers": [2], "variant": "combined"}},
                          {"name": "random"}])
    args = ["evaluate", "--config", str(study / "config.json"), "--methods", methods, "--split", "val",
            "--experiment", "dist"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "captum_fgattr.bench.cli.main", *args, "--run-dir", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*args, "--run-dir", str(tmp_path / "one")]) == 0
    two, one = stored_rows(tmp_path / "two"), stored_rows(tmp_path / "one")
    assert len(one) == 3 * 9 and len({r[:3] for r in two}) == len(two)
    # Same images, methods, labels, predictions and targets: exactly (batches and FC subsets do not depend on
    # the sharding). The scores only to fp32 round-off: the ranks run with OMP_NUM_THREADS=1 and this process
    # with torch's default thread count, which changes the reduction order inside the forward passes (both on
    # one thread gives identical numbers; 2 vs 1 threads differ by <= 5e-7, 2e-6 relative). A wrong image,
    # subset or target moves SaCo / FC / PF-AUC by far more than 1e-5.
    assert [r[:6] for r in two] == [r[:6] for r in one]
    np.testing.assert_allclose(np.array([r[6:] for r in two], dtype=float), np.array([r[6:] for r in one], dtype=float),
                               rtol=1e-5, atol=1e-6)


def test_a_run_on_an_own_model_and_folder_data_reports_its_setup(study, tmp_path):
    """`fgattr run` on class folders with an own checkpoint: the report opens with the data (kind, folders, classes,
    split sizes, normalisation), the model (checkpoint, patch grid, depth, classes), the SAEs (size and the held-out
    quality train-sae saved), the evaluated images with the model's accuracy on them, and the metric settings."""
    run = tmp_path / "own"
    protocol = ["--layers", "1", "--variants", "combined", "--multi-layers", "--kappas", "--c-maxes",
                "--controls", "bias_projection", "--baselines"]
    assert main(["run", "--config", str(study / "config.json"), "--run-dir", str(run), *protocol]) == 0
    report = (run / "report" / "report.md").read_text()
    setup = report.split("## Setup", 1)[1].split("\n## ", 1)[0]
    assert f"* **data**: folder (val {study / 'val'}, test {study / 'test'}); classes cat / dog / lung; splits val 9, " \
           "test 6 images" in setup
    assert f"* **model**: timm:test_vit ({study / 'vit.safetensors'}), 64×64 input, 4×4 = 16 patch tokens + 1 prefix, " \
           "6 blocks, 3 classes" in setup
    conn = sqlite3.connect(run / "results.sqlite")
    facts = conn.execute("SELECT DISTINCT image_id, label, prediction FROM results WHERE split = 'test'").fetchall()
    accuracy = np.mean([label == prediction for _, label, prediction in facts])  # counted from the stored rows
    assert len(facts) == 6 and f"test 6 images (cat 2, dog 2, lung 2), model accuracy {accuracy:.3f}" in setup
    assert "* **SAEs**: block 1: 128 features, k = 8, held-out EV " in setup  # --expansion 2 × width 64
    assert "* **metric settings**: " in setup and "saco_groups = 4" in setup and "preset = None" not in setup
