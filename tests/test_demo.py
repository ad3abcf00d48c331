"""`fgattr demo --quick` end to end: default data, a briefly trained model, SAEs, protocol, report."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
import sqlite3

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.config import RunConfig
from captum_fgattr.bench.default.demo import QUICK, REPLICATION, demo_config


def test_quick_demo_runs_end_to_end_and_reports_every_method(tmp_path, demo_cache, capsys):
    run_dir = tmp_path / "run"
    assert main(["demo", "--quick", "--output", str(run_dir), "--cache-dir", str(demo_cache), "--quiet"]) == 0
    printed = capsys.readouterr().out
    table = (run_dir / "report" / "test.md").read_text()
    assert table in printed and "report.md" in printed
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels[0] == "TransMM"
    assert any(lab.startswith("FG") and lab.endswith("combined κ=0.5 c=10") for lab in labels)
    for control in ("shuffled decoder s0", "shuffled decoder s1", "permuted gates s0", "permuted gates s1"):
        assert any(lab.startswith("FG") and lab.endswith(control) for lab in labels)
    for control in ("grad_input", "grad_input_centered", "bias_projection"):
        assert any(lab.startswith("FG") and f" {control} " in lab for lab in labels)
    assert "Selected on validation" in printed and "### Paired comparisons (test)" in printed
    assert "### Verdicts" in printed and " vs TransMM: SaCo " in printed
    outcomes = re.findall(r" vs [^:]+: SaCo (\w+) \(Δ", printed)  # one four-outcome verdict per claim
    assert len(outcomes) == 2 * 6 and set(outcomes) <= {"better", "worse", "equivalent", "inconclusive"}
    assert "permuted gates (2 seeds): SaCo " in printed and "Conclusion for FG L" in printed
    assert "### Rankings the tests support" in printed and "The claims family" in printed
    assert set(QUICK.protocol.baselines) <= set(labels)
    assert all(row.count("±") == 4 for row in rows)  # SaCo, FC, PF and the extra SRG as mean ± SE
    header = table.splitlines()[2]
    assert header.count("p Welch") == 4 and header.count("p paired") == 4 and "| SRG ↑ |" in header
    report = (run_dir / "report" / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Setup") < report.index("## Metric validity")
    assert f"Checks on a seeded subset of {QUICK.protocol.validity_images} test images" in report
    assert (run_dir / "validity.json").is_file()
    # the selected configuration replicated with the shipped SAEs of SAE seeds 1 and 2, pooled with the run's own
    replication = report.split("## Replication")[1]
    assert "on 3 replicates (run, sae-seed-1, sae-seed-2" in replication and "![forest plot](forest_test.png)" in replication
    assert (run_dir / "report" / "forest_test.png").is_file()
    for name in ("report.md", "single_layer.png", "multi_layer.png", "kappa_cmax.png"):
        assert (run_dir / "report" / name).is_file()
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        n_test = db.execute("SELECT COUNT(DISTINCT image_id) FROM results WHERE split = 'test'").fetchone()[0]
        duplicates = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM results GROUP BY split, method_key, image_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    assert n_test == QUICK.protocol.test_images and duplicates == 0
    # the run description is stored like fgattr run's: config.json reruns the demo with `fgattr run --config`
    stored = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert stored == demo_config(run_dir, preset="quick", cache_dir=demo_cache, progress=False)
    # a second run finds everything cached and stored: nothing is recomputed, the table is the same
    assert main(["demo", "--quick", "--output", str(run_dir), "--cache-dir", str(demo_cache), "--quiet"]) == 0
    assert (run_dir / "report" / "test.md").read_text() == table
    # fgattr run with the stored description writes the demo's report, its setup section (data, model, SAEs) included
    setup = (run_dir / "report" / "report.md").read_text().split("## Setup")[1].split("## Selections")[0]
    assert "* **data**: Br35H brain MRI" in setup and "* **model**: timm ViT" in setup and "* **SAEs**: TopK" in setup
    assert main(["run", "--config", str(run_dir / "config.json")]) == 0
    rerun = (run_dir / "report" / "report.md").read_text().split("## Setup")[1].split("## Selections")[0]
    assert rerun == setup
    assert "* **replicates**: sae-seed-1: the run's model, SAEs shipped-seed1 (held-out EV 0.9" in setup
    # a model replicate of the replication preset (model seed 1, its own SAEs) joins the stored run: only it is computed
    model_seed = next(r for r in REPLICATION.replicates if r.name == "model-seed-1")
    with_model = stored.merged({"replicates": [*map(asdict, stored.replicates), asdict(model_seed)]})
    (tmp_path / "with_model.json").write_text(json.dumps(with_model.to_dict()))
    assert main(["run", "--config", str(tmp_path / "with_model.json")]) == 0
    report = (run_dir / "report" / "report.md").read_text()
    assert "model-seed-1: fgattr:br35h-vit-seed1 (64 patch tokens), test accuracy 0." in report.split("## Setup")[1]
    assert "on 4 replicates (run, sae-seed-1, sae-seed-2, model-seed-1" in report.split("## Replication")[1]
    assert (run_dir / "report" / "test.md").read_text() == table  # the run's own results are kept as they were
