"""The report's generated parts on synthetic stores: the Findings section follows the stored results, the κ × c_max
heatmap marks the selected cell and flags a grid corner with one "better" direction, a selection worse than TransMM
is said so, and references that score identically are reported once with the reason."""
from __future__ import annotations

import re

import numpy as np
import pytest

from captum_fgattr.bench.config import Protocol
from captum_fgattr.bench.experiments import control_specs, fg_spec, select_best, transmm_spec
from captum_fgattr.bench.report.study_report import grid_cells, is_grid_corner, summary_text, write_report
from captum_fgattr.bench.store import ResultStore
from tests.test_protocol_planted import N, store_scores

PROTOCOL = {"layers": [1], "multi_layers": [], "controls": ["bias_projection", "grad_input"],
            "equivalence_margins": {"saco": 0.05, "fc": 0.05, "pf_auc": 0.02}}


def _study(path, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A test experiment where FG = TransMM + ``shift`` on SaCo (+ noise), equal elsewhere; its controls drawn around
    TransMM. Returns TransMM's and FG's SaCo columns."""
    rng = np.random.default_rng(seed)
    real = fg_spec([1], "combined", 0.5, 10.0)
    controls = control_specs(real, Protocol.from_dict(PROTOCOL))
    base = (rng.normal(0.3, 0.2, N), rng.normal(0.2, 0.1, N), rng.normal(0.6, 0.1, N))
    fg = (base[0] + shift + rng.normal(0, 0.05, N), base[1] + rng.normal(0, 0.05, N), base[2] + rng.normal(0, 0.02, N))
    columns = {transmm_spec(): base, real: fg}
    columns.update({specs[0]: tuple(b + rng.normal(0, 0.05, N) for b in base) for specs in controls.values()})
    with ResultStore(path) as store:
        store_scores(store, "test", "test", columns)
        store.log_invocation("run", {"protocol": PROTOCOL})
    return base[0], fg[0]


def _findings(report: str) -> str:
    return report.split("## Findings", 1)[1].split("\n## ", 1)[0]


def test_findings_open_the_report_and_follow_the_stored_results(tmp_path):
    texts = {}
    for case, shift in (("gain", 0.2), ("loss", -0.2)):
        base, fg = _study(tmp_path / case, shift)
        report = write_report(tmp_path / case).read_text()
        assert report.index("## Findings") < report.index("## Setup")  # the summary comes first
        texts[case] = _findings(report)
        delta = float(np.mean(fg - base))  # the paired mean difference, written out
        assert f"SaCo **{'better' if shift > 0 else 'worse'}** (Δ {delta:+.3f}" in texts[case]
    assert texts["gain"] != texts["loss"]
    assert "better than TransMM on SaCo; better than every control on SaCo: the gain is attributable" in texts["gain"]
    assert "no improvement over TransMM shown (SaCo worse" in texts["loss"]  # and what every control showed
    assert "FG vs bias_projection −⟨g, b_dec⟩: SaCo worse" in texts["loss"]
    assert "FG vs grad_input ⟨g, x⟩: SaCo worse" in texts["loss"]
    for text in texts.values():  # the rankings and the limits, in every case
        assert "**Most faithful methods as tested** (ranking family):" in text
        assert f"**Limits:** {N} test images" in text and "one model and one SAE per gated layer" in text
        assert "Holm-adjusted at family-wise α = 0.05 (claims family: 9 tests" in text
    # an outcome cites the test it rests on: the equivalence test for "equivalent", the difference test otherwise
    evidence = re.findall(r"\*\*(\w+)\*\* \(Δ [^)]*\], (p_[\w,]+) ", texts["gain"])
    assert ("equivalent", "p_TOST,Holm") in evidence and ("better", "p_Holm") in evidence
    assert all((outcome == "equivalent") == (p == "p_TOST,Holm") for outcome, p in evidence)


def test_a_control_identical_to_transmm_is_reported_once_with_the_reason(tmp_path):
    """Neutral gates make a control's map TransMM's: its scores equal TransMM's on every image; it is merged into
    the TransMM row (one test fewer in the family) and the report says why."""
    rng = np.random.default_rng(1)
    real = fg_spec([1], "combined", 0.5, 10.0)
    controls = control_specs(real, Protocol.from_dict(PROTOCOL))
    base = (rng.normal(0.3, 0.2, N), rng.normal(0.2, 0.1, N), rng.normal(0.6, 0.1, N))
    columns = {transmm_spec(): base, real: tuple(b + rng.normal(0.05, 0.05, N) for b in base),
               controls["bias_projection"][0]: tuple(b + rng.normal(0, 0.05, N) for b in base),
               controls["grad_input"][0]: base}  # identical to TransMM
    with ResultStore(tmp_path) as store:
        store_scores(store, "test", "test", columns)
        store.log_invocation("run", {"protocol": PROTOCOL})
    write_report(tmp_path)
    claims = (tmp_path / "report" / "comparisons_test.md").read_text()
    assert "one Holm family of 6 tests" in claims  # (TransMM = grad_input, bias_projection) × 3 metrics
    assert "| TransMM (= grad_input ⟨g, x⟩: identical scores) | SaCo |" in claims
    assert "grad_input ⟨g, x⟩ scored exactly as TransMM on every image (its gates were all neutral" in claims
    assert "| grad_input ⟨g, x⟩ |" not in claims


def _grid(path, best: tuple[float, float], pf_better: tuple[float, float] | None = None) -> dict:
    """A 3 × 3 κ × c_max validation experiment where the candidate ``best`` gains most on every metric (and
    ``pf_better``, if given, gains on PF only: a lower PF AUC); the selection stored. Returns the specs by cell."""
    rng = np.random.default_rng(2)
    base = (rng.normal(0.3, 0.2, N), rng.normal(0.2, 0.1, N), rng.normal(0.6, 0.1, N))
    specs = {(k, c): fg_spec([1, 2], "combined", k, c) for k in (0.1, 0.5, 1.0) for c in (2.0, 10.0, 50.0)}
    columns = {transmm_spec(): base}
    for cell, spec in specs.items():
        gain = 0.1 if cell == best else 0.0
        pf = -0.05 if cell == pf_better else 0.0
        columns[spec] = (base[0] + gain + rng.normal(0, 0.05, N), base[1] + gain + rng.normal(0, 0.05, N),
                         base[2] - gain + pf + rng.normal(0, 0.02, N))
    with ResultStore(path) as store:
        store_scores(store, "kappa_cmax", "val", columns)
        select_best(store, "kappa_cmax", "kappa_cmax", "val", list(specs.values()), list(range(N)))
    return specs


@pytest.mark.parametrize("best, corner", [((0.5, 10.0), False), ((1.0, 50.0), True), ((0.1, 10.0), False)])
def test_heatmap_marks_the_selected_cell_and_flags_a_corner(tmp_path, best, corner):
    _grid(tmp_path, best, pf_better=(0.1, 2.0))
    with ResultStore(tmp_path) as store:
        cells = grid_cells(store, "kappa_cmax", "val")
    assert [(c.kappa, c.c_max) for c in cells if c.selected] == [best]
    assert is_grid_corner(cells) is corner
    pf = {(c.kappa, c.c_max): c.effects["pf_auc"] for c in cells}
    assert pf[(0.1, 2.0)] > 0.5 and pf[best] > 0.5  # a lower PF AUC reads as positive (better), as SaCo / FC gains do
    assert all(c.effects["saco"] > 0.5 for c in cells if c.selected)
    write_report(tmp_path)
    report = (tmp_path / "report" / "report.md").read_text()
    caption = report.split("![kappa_cmax](kappa_cmax.png)", 1)[1].split("\n\n", 2)[1]
    assert "the framed cell is the selected one" in caption and "blue = better on every panel" in caption
    assert ("is a corner of the grid" in caption) is corner


def test_a_selection_worse_than_transmm_is_said_so(tmp_path):
    rng = np.random.default_rng(3)
    base = (rng.normal(0.3, 0.2, N), rng.normal(0.2, 0.1, N), rng.normal(0.6, 0.1, N))
    candidates = [fg_spec([layer], "combined", 0.5, 10.0) for layer in (1, 2)]
    columns = {transmm_spec(): base}
    columns.update({spec: (base[0] - 0.1 * (i + 1) + rng.normal(0, 0.05, N), base[1] - 0.05 + rng.normal(0, 0.05, N),
                           base[2] + 0.05 + rng.normal(0, 0.02, N)) for i, spec in enumerate(candidates)})
    with ResultStore(tmp_path) as store:
        store_scores(store, "single_layer", "val", columns)
        selection = select_best(store, "single_layer", "single_layer", "val", candidates, list(range(N)))
    effect = selection.details["candidates"][selection.method_key]["mean_dz"]
    assert effect < 0
    write_report(tmp_path)
    said = f"the best candidate is worse than TransMM on validation (mean d_z {effect:.2f})"
    assert said in summary_text(tmp_path)
    assert said in (tmp_path / "report" / "report.md").read_text().split("## Selections on validation")[1]
