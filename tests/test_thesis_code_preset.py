"""The `thesis-code` metric preset reproduces the thesis author's released code on each of the six points where
it differs from the library's rules; the `paper` preset keeps the definitions (docs/method.md §4, "Metric presets").

Inputs are built by hand: one-channel images of 1 × P pixels cut into 1-pixel patches, so a patch's mean is its
pixel, and a linear model over the patch means, logits = W · v + b. Expected values are written out by hand
(σ(z) = 1 / (1 + e^−z) is the softmax probability of class 0 of a two-class model with logit difference z).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from captum_fgattr.bench.config import MetricConfig
from captum_fgattr.bench.metrics import MetricBatch, metric_spec
from captum_fgattr.gates import exp_tanh_gates, robust_z
from quantus_saco.patches import numpy_global_subsets, rank_patches

PRESETS = ("thesis-code", "paper")


def sigma(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class PatchMeanLinear(nn.Module):
    """logits = W · v + b over the patch means v (here the pixels of a (N, 1, 1, P) image row)."""

    def __init__(self, weight: list[list[float]], bias: list[float]):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.tensor(bias, dtype=torch.float32), requires_grad=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def config(preset: str | None, n_patches: int, **fields) -> MetricConfig:
    """The preset's settings for ``n_patches`` (no preset: the field defaults) with ``fields`` replaced.

    Unchecked (``_preset_values``, not ``resolved``): the toy rows have 2-9 patches, fewer than some preset values
    allow (K = 10), and the one-bin case scores K = 1 on purpose, below what a run's configuration accepts.
    """
    return dataclasses.replace(MetricConfig(preset=preset)._preset_values(n_patches), **fields)


def batch(model: nn.Module, rows: list[list[float]], attr: list[list[float]], metrics: MetricConfig) -> MetricBatch:
    """A benchmark batch of the images ``rows`` (each a 1 × P image) explained for their predicted class."""
    x = torch.tensor(rows, dtype=torch.float32)[:, None, None, :]
    with torch.no_grad():
        logits = model(x)
    return MetricBatch(model, x, torch.tensor(attr, dtype=torch.float32), logits.argmax(dim=1),
                       torch.arange(len(rows)), logits, 1, metrics)


def saco_of(preset: str | None, model: nn.Module, row: list[float], attr: list[float], groups: int) -> float:
    metrics = config(preset, len(row), saco_groups=groups)
    return float(batch(model, [row], [attr], metrics).engine(metrics=("saco",))["saco"][0])


# -- the eight SaCo cases ---------------------------------------------------------------------------------------
# Two classes unless said otherwise; W's first row is class 0's logit.
NORMAL_MODEL = PatchMeanLinear([[3, 1, 2, 0], [0, 0, 0, 0]], [0, 0])
# image [1, 1, 1, -3] (mean 0): z = 3 + 1 + 2 = 6; removing patch j gives z - w_j v_j = 3, 5, 4, 6 (class 0 stays
# on top), so the drops order Δ(patch 0) > Δ(patch 2) > Δ(patch 1) > Δ(patch 3) = 0.
NORMAL_ROW = [1.0, 1.0, 1.0, -3.0]
# K = 4 single-patch groups ranked by a = [4, 3, 2, 1]: s = [4, 3, 2, 1], pairs (i, j) with s_i - s_j and
# Δ_i >= Δ_j?  (0,1): 1 yes, (0,2): 2 yes, (0,3): 3 yes, (1,2): 1 no, (1,3): 2 yes, (2,3): 1 yes
NORMAL_SACO = (1 + 2 + 3 - 1 + 2 + 1) / (1 + 2 + 3 + 1 + 2 + 1)  # 0.8

# ties: class 0's logit reads patch 0 only; image [4, 0, 0, 0] (mean 1): removing the group holding patch 0
# drops p(0) from σ(4) to σ(1) > 0, the other group's drop is 0. a = [1, 1, 1, 0], K = 2 groups of 2 patches,
# s = [2, 1] whatever the tie order: SaCo = +1 if patch 0 is in the first group, else -1.
TIES_MODEL = PatchMeanLinear([[1, 0, 0, 0], [0, 0, 0, 0]], [0, 0])
TIES_ROW, TIES_ATTR = [4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]
AUTHOR_FIRST_GROUP = set(np.argsort(np.array(TIES_ATTR))[::-1][:2].tolist())  # the author's ranking line
TIES_THESIS = 1.0 if 0 in AUTHOR_FIRST_GROUP else -1.0

# tied drops, non-decreasing group sums: a constant model (all drops 0); a = [-1, -1, -1, -1.2, -1.2] split
# 3 + 2 gives s = [-3, -2.4]. Ranking order: Δ_1 >= Δ_2, w = -3 - (-2.4) = -0.6 -> SaCo -1; re-sorted by
# salience, s = [-2.4, -3], w = +0.6 -> +1.
CONSTANT_MODEL = PatchMeanLinear([[0] * 5, [0] * 5], [0, 0])
TIED_DROPS_ATTR = [-1.0, -1.0, -1.0, -1.2, -1.2]

# class flip: class 0 reads patch 0, class 1 is the bias 3; image [4, -4] (mean 0): z = 4 - 3 = 1, p = σ(1).
# Removing patch 0 gives z = -3: class 1 on top with p = σ(3); removing patch 1 changes nothing.
# a = [1, 0.5]: s = [1, 0.5].  Original class: Δ = [σ(1) - σ(-3), 0], concordant -> +1.
# Perturbed top class: Δ = [σ(1) - σ(3), 0] with σ(1) - σ(3) < 0, discordant -> -1.
FLIP_MODEL = PatchMeanLinear([[1, 0], [0, 0]], [0, 3])

# negative attributions: the normal image and model, a = [-1, -3, -2, -4] ranks patches 0, 2, 1, 3 with
# s = [-1, -2, -3, -4]; their drops Δ(0) > Δ(2) > Δ(1) > Δ(3) follow the ranking: every pair concordant -> 1.
NEGATIVE_ATTR = [-1.0, -3.0, -2.0, -4.0]

# saturated softmax: class 0's logit 100 above class 1's whatever the patches: p = 1.0 exactly in float32 for the
# image and every perturbation, so every drop is 0 (tied); a and s as in the tied-drops case.
SATURATED_MODEL = PatchMeanLinear([[0.01] * 5, [0] * 5], [100, 0])
SATURATED_ROW = [1.0, 2.0, 3.0, 4.0, 5.0]

# (name, model, image row, attribution, K, expected under thesis-code, expected under paper; NaN: undefined)
SACO_CASES = [
    ("normal", NORMAL_MODEL, NORMAL_ROW, [4.0, 3.0, 2.0, 1.0], 4, NORMAL_SACO, NORMAL_SACO),
    ("all-equal attributions", NORMAL_MODEL, NORMAL_ROW, [1.0, 1.0, 1.0, 1.0], 4, 0.0, math.nan),  # s all equal
    ("one bin", NORMAL_MODEL, NORMAL_ROW, [4.0, 3.0, 2.0, 1.0], 1, 0.0, math.nan),  # no pairs
    ("ties in attributions", TIES_MODEL, TIES_ROW, TIES_ATTR, 2, TIES_THESIS, 1.0),  # stable: patches 0, 1 first
    ("tied drops, non-decreasing sums", CONSTANT_MODEL, [0.0, 1.0, 2.0, 3.0, 4.0], TIED_DROPS_ATTR, 2, 1.0, 1.0),
    ("class flip", FLIP_MODEL, [4.0, -4.0], [1.0, 0.5], 2, -1.0, 1.0),
    ("negative attributions", NORMAL_MODEL, NORMAL_ROW, NEGATIVE_ATTR, 4, 1.0, 1.0),
    ("saturated softmax", SATURATED_MODEL, SATURATED_ROW, TIED_DROPS_ATTR, 2, 1.0, 1.0),
]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("case", SACO_CASES, ids=[c[0] for c in SACO_CASES])
def test_the_eight_saco_cases(case, preset):
    name, model, row, attr, groups, thesis, paper = case
    expected = thesis if preset == "thesis-code" else paper
    if math.isnan(expected):
        with pytest.warns(RuntimeWarning, match="SaCo is undefined"):
            assert math.isnan(saco_of(preset, model, row, attr, groups))
    else:
        assert saco_of(preset, model, row, attr, groups) == pytest.approx(expected, abs=1e-12)


def test_the_ties_case_separates_the_tie_orders():
    """The author's numpy order puts patch 0 outside the first group here, so the ties case tells the orders apart
    (if a numpy build ordered these ties stably, this input would no longer test point 2)."""
    assert 0 not in AUTHOR_FIRST_GROUP and TIES_THESIS == -1.0


# -- point 1: the scored class ----------------------------------------------------------------------------------
def test_point1_saco_scores_the_perturbed_images_top_class():
    drops_original = [sigma(1) - sigma(-3), 0.0]  # p(class 0) after removing patch 0, patch 1
    drops_top = [sigma(1) - sigma(3), 0.0]  # the top class after removing patch 0 is class 1, p = σ(3)
    assert drops_original[0] >= drops_original[1] and drops_top[0] < drops_top[1]
    metrics = config("thesis-code", 2, saco_groups=2)
    assert metrics.saco_target == "perturbed_top" and config("paper", 2).saco_target == "original"
    assert saco_of("thesis-code", FLIP_MODEL, [4.0, -4.0], [1.0, 0.5], 2) == -1.0  # w = -(1 - 0.5), SaCo = -1
    assert saco_of("paper", FLIP_MODEL, [4.0, -4.0], [1.0, 0.5], 2) == 1.0


# -- point 2: tie order -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("attr", [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [1.0] * 4, [2.0] + [1.0] * 8 + [0.0],
                                  [3.0, 1.0, 1.0, 1.0, 0.0] * 40])
def test_point2_tie_orders_are_the_author_lines(attr):
    a = np.array([attr, attr[::-1]])
    assert rank_patches(torch.from_numpy(a), "numpy_reversed").tolist() == [np.argsort(r)[::-1].tolist() for r in a]
    assert rank_patches(torch.from_numpy(a), "numpy_negated").tolist() == [np.argsort(-r).tolist() for r in a]
    stable = [sorted(range(len(r)), key=lambda i: (-r[i], i)) for r in a]  # descending, lower index first
    assert rank_patches(torch.from_numpy(a), "stable").tolist() == stable


def test_point2_presets_tie_orders():
    thesis, paper = config("thesis-code", 196), config("paper", 196)
    assert (thesis.saco_tie_order, thesis.pf_tie_order) == ("numpy_reversed", "numpy_negated")
    assert (paper.saco_tie_order, paper.pf_tie_order) == ("stable", "stable")
    assert saco_of("thesis-code", TIES_MODEL, TIES_ROW, TIES_ATTR, 2) == TIES_THESIS
    assert saco_of("paper", TIES_MODEL, TIES_ROW, TIES_ATTR, 2) == 1.0


# -- point 3: pairing -------------------------------------------------------------------------------------------
def test_point3_groups_are_resorted_by_salience_before_pairing():
    row = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert saco_of("thesis-code", CONSTANT_MODEL, row, TIED_DROPS_ATTR, 2) == 1.0
    assert saco_of("paper", CONSTANT_MODEL, row, TIED_DROPS_ATTR, 2) == 1.0
    assert saco_of(None, CONSTANT_MODEL, row, TIED_DROPS_ATTR, 2) == -1.0  # no preset: the library's ranking order


# -- point 4: Pixel Flipping ------------------------------------------------------------------------------------
# class 0 reads patches 0 and 1, class 1 is 0: z = v_0 + v_1. Image [4, 0, 2, 2] (mean 2), a = [4, 3, 2, 1].
PF_MODEL = PatchMeanLinear([[1, 1, 0, 0], [0, 0, 0, 0]], [0, 0])
# running mean: x1 = [2, 0, 2, 2] (mean 1.5), x2 = [2, 1.5, 2, 2] (mean 1.875), x3 = [2, 1.5, 1.875, 2], x4 = ...
RUNNING_CURVE = [sigma(4), sigma(2 + 0), sigma(2 + 1.5), sigma(2 + 1.5), sigma(2 + 1.5)]
# original mean 2 every step: x1 = [2, 0, 2, 2], then all 2
ORIGINAL_CURVE = [sigma(4), sigma(2), sigma(4), sigma(4), sigma(4)]


def trapezoid_over_fraction(curve: list[float]) -> float:
    """Σ_k (1/P)·(s_{k-1} + s_k)/2 for one patch per step."""
    P = len(curve) - 1
    return sum((curve[k - 1] + curve[k]) / 2 / P for k in range(1, P + 1))


@pytest.mark.parametrize("preset, curve", [("thesis-code", RUNNING_CURVE), ("paper", ORIGINAL_CURVE)])
def test_point4_pixel_flipping_replacement(preset, curve):
    out = batch(PF_MODEL, [[4.0, 0.0, 2.0, 2.0]], [[4.0, 3.0, 2.0, 1.0]], config(preset, 4)).engine(metrics=("pf",))
    np.testing.assert_allclose(out["pf_curve"][0].numpy(), curve, rtol=0, atol=1e-6)
    assert float(out["pf_auc"][0]) == pytest.approx(trapezoid_over_fraction(curve), abs=1e-6)


def test_point4_pixel_flipping_tie_order():
    """Image [2, 2, 4, 0] (mean 2), a = [0, 0, 1, 1]; class 0 reads patch 2, class 1 is the bias 3: z = v_2 - 3."""
    model = PatchMeanLinear([[0, 0, 1, 0], [0, 0, 0, 0]], [0, 3])
    out = {p: batch(model, [[2.0, 2.0, 4.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]], config(p, 4)).engine(metrics=("pf",))
           for p in PRESETS}
    # paper, stable order 2, 3, 0, 1: patch 2 goes first, replaced by 2: z = -1 from then on
    np.testing.assert_allclose(out["paper"]["pf_curve"][0].numpy(), [sigma(1)] + [sigma(-1)] * 4, atol=1e-6)
    author_order = np.argsort(-np.array([0.0, 0.0, 1.0, 1.0]))
    if author_order[0] == 3:  # patch 3 first (by 2: mean 2.5), then patch 2 by 2.5: z = -0.5 from then on
        thesis = [sigma(1), sigma(1)] + [sigma(-0.5)] * 3
    else:  # patch 2 first, by 2: z = -1 from then on
        thesis = [sigma(1)] + [sigma(-1)] * 4
    np.testing.assert_allclose(out["thesis-code"]["pf_curve"][0].numpy(), thesis, atol=1e-6)


# -- point 5: Faithfulness Correlation ---------------------------------------------------------------------------
def test_point5_subset_sizes():
    assert [config("thesis-code", p).fc_subset_size for p in (196, 49)] == [20, 10]
    assert [config("paper", p).fc_subset_size for p in (196, 49)] == [20, 20]


def test_point5_subsets_are_the_authors_numpy_draws():
    state = np.random.get_state()
    try:
        np.random.seed(43)
        draws = np.stack([np.random.choice(9, 4, replace=False) for _ in range(3 * 20)]).reshape(20, 3, 4)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(numpy_global_subsets(3, 20, 9, 4, 43).numpy(), draws.transpose(1, 0, 2))


# class 0's logit Σ_j w_j v_j, class 1's -100 (class 0 always predicted): replacing S by the image mean m lowers
# the logit by Σ_{j∈S} w_j (v_j - m), an integer here
FC_W = [1, 2, 3, 4, 5, 6, 7, 8, 9]
FC_MODEL = PatchMeanLinear([FC_W, [0] * 9], [0, -100])
FC_ROWS = [[9.0, 0.0, 3.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 5.0, 0.0, 2.0, 7.0, 0.0, 3.0, 0.0, 0.0]]  # means 2, 2
FC_ATTR = [[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0], [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0]]


def test_point5_thesis_code_fc_is_the_authors_spearman_over_three_seeds():
    metrics = config("thesis-code", 9)
    assert (metrics.fc_subset_size, metrics.fc_runs, metrics.fc_repeats, metrics.seed) == (4, 20, 3, 42)  # 20·√(9/196)
    expected = np.zeros(2)
    for trial in range(3):
        state = np.random.get_state()
        try:
            np.random.seed(42 + trial)
            draws = np.stack([np.random.choice(9, 4, replace=False) for _ in range(20 * 2)]).reshape(20, 2, 4)
        finally:
            np.random.set_state(state)
        for i, (row, attr) in enumerate(zip(FC_ROWS, FC_ATTR)):
            sums = [sum(attr[j] for j in s) for s in draws[:, i]]
            drops = [sum(FC_W[j] * (row[j] - 2.0) for j in s) for s in draws[:, i]]
            expected[i] += spearmanr(sums, drops).statistic / 3
    scores = metric_spec("fc").compute(batch(FC_MODEL, FC_ROWS, FC_ATTR, metrics))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_point5_constant_row(preset):
    """Equal attributions: every subset's sum is the same, the correlation undefined: 0 (thesis-code), NaN (paper).
    (SaCo, computed in the same call, is undefined for that image too: a warning under paper.)"""
    metrics = config(preset, 9, saco_groups=3)
    with pytest.warns(RuntimeWarning, match="SaCo is undefined") if preset == "paper" else contextlib.nullcontext():
        scores = metric_spec("fc").compute(batch(FC_MODEL, FC_ROWS, [[1.0] * 9, FC_ATTR[1]], metrics))
    assert (float(scores[0]) == 0.0) if preset == "thesis-code" else math.isnan(float(scores[0]))
    assert not math.isnan(float(scores[1]))


# -- point 6: gate normalisation --------------------------------------------------------------------------------
def test_point6_mad_epsilon_placement():
    """Scores [0, 0, 0, 0, 3e-8]: median 0, MAD 0. The library divides by 1.4826·0 + 1e-8 (z = 3), the author's code
    by 1.4826·(0 + 1e-8) (z = 3 / 1.4826); the gates (κ = 0.5, c_max = 10) differ by more than 0.5."""
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0, 3e-8]], dtype=torch.float64)
    z_library, z_author = robust_z(scores), robust_z(scores, mad_eps="in_mad")
    assert float(z_library[0, 4]) == pytest.approx(3.0, rel=1e-12)
    assert float(z_author[0, 4]) == pytest.approx(3.0 / 1.4826, rel=1e-12)
    gates = [float(exp_tanh_gates(z, 0.5, 10.0)[0, 4]) for z in (z_library, z_author)]
    assert gates == pytest.approx([math.exp(math.log(10) * math.tanh(1.5)),
                                   math.exp(math.log(10) * math.tanh(0.5 * 3.0 / 1.4826))], rel=1e-12)
    assert gates[0] - gates[1] > 0.5
    normal = torch.tensor([[1.0, 2.0, 4.0, 7.0, 11.0]], dtype=torch.float64)  # MAD 3: the placements agree to 1e-8
    torch.testing.assert_close(robust_z(normal, mad_eps="in_mad"), robust_z(normal), rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match="mad_eps='inside'"):
        robust_z(normal, mad_eps="inside")


def test_point6_the_thesis_code_preset_reaches_fg_gates(vit, monkeypatch):
    """thesis-code makes the protocol's FG methods use the author's scale; FeatureGradientTransMM's gates are then
    exp(ln c_max · tanh(κ (s − median) / (1.4826 (MAD + 1e-8)))) of its own scores, written out here per image.
    The two placements differ only where the MAD is about 0 (test_point6_mad_epsilon_placement), so the scale a
    benchmark-built method hands to robust_z is also recorded."""
    from captum_fgattr import FeatureGradientTransMM, attr, gates
    from captum_fgattr.bench.config import Protocol
    from captum_fgattr.bench.experiments import fg_spec, gate_mad_eps
    from captum_fgattr.bench.methods import build_method
    from captum_fgattr.sae import SAEConfig, SparseAutoencoder

    placements: list[str] = []

    def recorded_robust_z(scores, mad_eps="after_scale"):
        placements.append(mad_eps)
        return gates.robust_z(scores, mad_eps)

    monkeypatch.setattr(attr, "robust_z", recorded_robust_z)

    assert gate_mad_eps(Protocol(), MetricConfig(preset="thesis-code")) == "in_mad"
    assert gate_mad_eps(Protocol(), MetricConfig(preset="paper")) == "after_scale"
    assert gate_mad_eps(Protocol(), MetricConfig()) == "after_scale"
    assert gate_mad_eps(Protocol(gate_mad_eps="after_scale"), MetricConfig(preset="thesis-code")) == "after_scale"
    assert fg_spec([1], "combined", 0.5, 10.0).params == {"layers": [1], "variant": "combined", "kappa": 0.5,
                                                           "c_max": 10.0}  # keys of stored runs unchanged
    assert fg_spec([1], "combined", 0.5, 10.0, mad_eps="in_mad").params["mad_eps"] == "in_mad"
    with pytest.raises(ValueError, match="gate_mad_eps='inside'"):
        Protocol(gate_mad_eps="inside")

    sae = SparseAutoencoder(SAEConfig(d_in=32, n_features=64, k=4), seed=0)
    images = torch.randn(3, 3, 32, 32)
    for placement in ("in_mad", "after_scale"):
        method = build_method(fg_spec([1], "combined", 0.5, 10.0, mad_eps=placement), vit, {1: sae})
        method(images, torch.zeros(3, dtype=torch.long), torch.arange(3))
        assert placements[-1] == placement
    method = FeatureGradientTransMM(vit, {1: sae}, kappa=0.5, c_max=10.0, mad_eps="in_mad")
    method.attribute(images, target=0)
    assert placements[-1] == "in_mad"
    scores, gated = method.last_gated_layers[1].scores.double(), method.last_gated_layers[1].gates.double()
    for s, g in zip(scores, gated):
        values = sorted(s.tolist())
        median = values[(len(values) - 1) // 2]  # lower middle value
        deviations = sorted(abs(v - median) for v in values)
        mad = deviations[(len(deviations) - 1) // 2]
        expected = [math.exp(math.log(10.0) * math.tanh(0.5 * (v - median) / (1.4826 * (mad + 1e-8)))) for v in s.tolist()]
        assert g.tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="mad_eps='inside'"):
        FeatureGradientTransMM(vit, {1: sae}, mad_eps="inside")
