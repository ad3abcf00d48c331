"""Quantus-hosted patch metrics (SaCo, patch FC, patch PF) against explicit per-image loops of docs/method.md §4."""

import warnings

import numpy as np
import pytest
import quantus
from quantus.helpers.enums import DataType, EvaluationCategory, ModelType, ScoreDirection
import scipy.stats
import torch
from captum.attr import Saliency
from timm.models.vision_transformer import VisionTransformer

import quantus_saco
from quantus_saco import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo
from quantus_saco.patches import sample_subsets
from quantus_saco.perturb import batch_patch_replacement_by_indices

P_SIZE = 8  # 32x32 images -> 4x4 = 16 patches
N_PATCHES = 16


# ---------------------------------------------------------------- explicit references (per image)


def ref_replace(img, patches, value):
    out = img.copy()
    for q in patches:
        r, c = divmod(int(q), 32 // P_SIZE)
        out[:, r * P_SIZE : (r + 1) * P_SIZE, c * P_SIZE : (c + 1) * P_SIZE] = value
    return out


def ref_output(model, img, t, prob):
    with torch.no_grad():
        out = model(torch.from_numpy(img)[None].float())[0]
    return float((torch.softmax(out, -1) if prob else out)[t])


def ref_saco(model, img, attr, t, k, baseline=np.mean):
    order = np.argsort(-attr, kind="stable")
    groups = np.array_split(order, k)
    s = [attr[g].sum() for g in groups]
    p0 = ref_output(model, img, t, True)
    d = [p0 - ref_output(model, ref_replace(img, g, baseline(img)), t, True) for g in groups]
    w = [(s[i] - s[j]) * (1 if d[i] >= d[j] else -1) for i in range(k) for j in range(i + 1, k)]
    return sum(w) / sum(abs(v) for v in w)


def ref_pf_curve(model, img, attr, t, step, baseline=np.mean):
    order = np.argsort(-attr, kind="stable")
    counts = [min(n, N_PATCHES) for n in range(0, N_PATCHES + step, step)]
    return counts, [ref_output(model, ref_replace(img, order[:n], baseline(img)), t, True) for n in counts]


def ref_pf_auc(model, img, attr, t, step, baseline=np.mean):
    counts, curve = ref_pf_curve(model, img, attr, t, step, baseline)
    xs = [n / N_PATCHES for n in counts]
    return sum((xs[i + 1] - xs[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(len(xs) - 1))


def ref_fc_terms(model, img, attr, t, subsets, baseline=np.mean):
    y0 = ref_output(model, img, t, False)
    sums = [attr[s].sum() for s in subsets]
    drops = [y0 - ref_output(model, ref_replace(img, s, baseline(img)), t, False) for s in subsets]
    return np.array(sums), np.array(drops)


# ---------------------------------------------------------------- fixtures


class PatchLinear(torch.nn.Module):
    """Two classes, logits (-u, u) with u = sum_p w_p * mean(patch p): removing patch p
    changes the class-1 logit by exactly w_p * (mean(patch p) - image mean)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x):
        m = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), P_SIZE).flatten(1)
        u = m @ self.w
        return torch.stack([-u, u], dim=1)


def true_attribution(x, w, target):
    """(B, P) exact effect on the target logit of replacing each patch by the image mean."""
    m = x.reshape(len(x), 3, 4, P_SIZE, 4, P_SIZE).mean(axis=(1, 3, 5)).reshape(len(x), -1)
    a = w * (m - x.reshape(len(x), -1).mean(1, keepdims=True))
    return np.where(target[:, None] == 1, a, -a)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=P_SIZE, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    a = rng.normal(size=(4, N_PATCHES))
    return x, y, a


def kw():
    return dict(patch_size=P_SIZE, disable_warnings=True)


# ---------------------------------------------------------------- ground truth


def test_ground_truth_model():
    rng = np.random.default_rng(3)
    w = rng.normal(scale=3.0, size=N_PATCHES).astype(np.float32)
    model = PatchLinear(w).eval()
    x = rng.normal(size=(6, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 0, 1, 0, 1, 1])
    a_true = true_attribution(x.astype(np.float64), w, y)
    a_rand = rng.normal(size=a_true.shape)

    for k in (4, 5):
        saco = SaCo(n_groups=k, **kw())
        np.testing.assert_allclose(saco(model=model, x_batch=x, y_batch=y, a_batch=a_true), 1.0, atol=1e-9)
        np.testing.assert_allclose(saco(model=model, x_batch=x, y_batch=y, a_batch=-a_true), -1.0, atol=1e-9)
    fc = PatchFaithfulnessCorrelation(nr_runs=12, subset_size=5, **kw())
    np.testing.assert_allclose(fc(model=model, x_batch=x, y_batch=y, a_batch=a_true), 1.0, atol=1e-5)
    pf = PatchPixelFlipping(**kw())
    auc = {name: np.mean(pf(model=model, x_batch=x, y_batch=y, a_batch=a)) for name, a in
           (("true", a_true), ("random", a_rand), ("reversed", -a_true))}
    assert auc["true"] < auc["random"] < auc["reversed"]


# ---------------------------------------------------------------- random ViT vs explicit loops


@pytest.mark.parametrize("k", [4, 5, 16])
def test_saco_equals_explicit_loop(vit, data, k):
    x, y, a = data
    scores = SaCo(n_groups=k, **kw())(model=vit, x_batch=x, y_batch=y, a_batch=a)
    expected = [ref_saco(vit, x[b], a[b], y[b], k) for b in range(len(x))]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("step", [1, 3])
def test_pixel_flipping_equals_explicit_loop(vit, data, step):
    x, y, a = data
    auc = PatchPixelFlipping(patches_in_step=step, **kw())(model=vit, x_batch=x, y_batch=y, a_batch=a)
    expected = [ref_pf_auc(vit, x[b], a[b], y[b], step) for b in range(len(x))]
    np.testing.assert_allclose(auc, expected, rtol=0, atol=1e-6)

    pf = PatchPixelFlipping(patches_in_step=step, return_auc_per_sample=False, auc_scale="patches", **kw())
    curves = pf(model=vit, x_batch=x, y_batch=y, a_batch=a)
    for b in range(len(x)):
        np.testing.assert_allclose(curves[b], ref_pf_curve(vit, x[b], a[b], y[b], step)[1], rtol=0, atol=1e-6)
    assert curves[0][0] == pytest.approx(ref_output(vit, x[0], y[0], True), abs=1e-6)  # unperturbed point
    assert pf.get_auc_score == pytest.approx(N_PATCHES * np.mean(expected), abs=1e-5)


def test_faithfulness_correlation_terms_equal_explicit_recomputation(vit, data):
    x, y, a = data
    fc = PatchFaithfulnessCorrelation(nr_runs=6, subset_size=3, seed=11, **kw())
    recorded = []
    pearson = fc.similarity_func
    fc.similarity_func = lambda s, d: recorded.append((s.numpy(), d.numpy())) or pearson(s, d)
    scores = fc(model=vit, x_batch=x, y_batch=y, a_batch=a, batch_size=3)  # two Quantus batches

    subsets = sample_subsets(range(len(x)), 6, N_PATCHES, 3, seed=11).numpy()
    sums = np.concatenate([r[0] for r in recorded])
    drops = np.concatenate([r[1] for r in recorded])
    for b in range(len(x)):
        ref_sums, ref_drops = ref_fc_terms(vit, x[b], a[b], y[b], subsets[b])
        np.testing.assert_allclose(sums[b], ref_sums, rtol=0, atol=1e-12)
        np.testing.assert_allclose(drops[b], ref_drops, rtol=0, atol=1e-5)
        assert scores[b] == pytest.approx(scipy.stats.pearsonr(ref_sums, ref_drops)[0], abs=1e-4)

    again = PatchFaithfulnessCorrelation(nr_runs=6, subset_size=3, seed=11, **kw())(model=vit, x_batch=x, y_batch=y, a_batch=a)
    np.testing.assert_allclose(again, scores, rtol=0, atol=1e-5)  # same subsets whatever the batch_size; fp32 batch-size noise in the tiny drops only
    other = PatchFaithfulnessCorrelation(nr_runs=6, subset_size=3, seed=12, **kw())(model=vit, x_batch=x, y_batch=y, a_batch=a)
    assert not np.allclose(other, scores)


def test_spearman_option(vit, data):
    x, y, a = data
    fc = PatchFaithfulnessCorrelation(nr_runs=6, subset_size=3, correlation="spearman", seed=1, **kw())
    scores = fc(model=vit, x_batch=x, y_batch=y, a_batch=a)
    subsets = sample_subsets(range(len(x)), 6, N_PATCHES, 3, seed=1).numpy()
    for b in range(len(x)):
        ref = scipy.stats.spearmanr(*ref_fc_terms(vit, x[b], a[b], y[b], subsets[b]))[0]
        assert scores[b] == pytest.approx(ref, abs=1e-6)


# ---------------------------------------------------------------- input forms and Quantus integration


def test_attribution_forms_agree(vit, data):
    x, y, a = data
    grid = a.reshape(4, 4, 4)
    pixel = np.repeat(np.repeat(grid, P_SIZE, axis=1), P_SIZE, axis=2)  # (B, H, W)
    saco = SaCo(n_groups=4, **kw())
    ref = saco(model=vit, x_batch=x, y_batch=y, a_batch=a)
    for form in (grid, grid[:, None], pixel, pixel[:, None], np.repeat(pixel[:, None], 3, axis=1)):
        assert saco(model=vit, x_batch=x, y_batch=y, a_batch=form) == pytest.approx(ref, abs=1e-12)


def test_predicted_class_when_no_target(vit, data):
    x, _, a = data
    with torch.no_grad():
        pred = vit(torch.from_numpy(x)).argmax(1).numpy()
    pf = PatchPixelFlipping(**kw())
    assert pf(model=vit, x_batch=x, y_batch=None, a_batch=a) == pytest.approx(pf(model=vit, x_batch=x, y_batch=pred, a_batch=a))


def test_registered_with_quantus_metadata():
    faithfulness = quantus.AVAILABLE_METRICS["Faithfulness"]
    assert faithfulness["SaCo"] is SaCo
    assert faithfulness["Patch Faithfulness Correlation"] is PatchFaithfulnessCorrelation
    assert faithfulness["Patch Pixel-Flipping"] is PatchPixelFlipping
    assert "SaCo" in quantus.available_metrics()["Faithfulness"]
    assert issubclass(SaCo, quantus.Metric)
    assert issubclass(PatchFaithfulnessCorrelation, quantus.FaithfulnessCorrelation)
    assert issubclass(PatchPixelFlipping, quantus.PixelFlipping)
    assert SaCo.score_direction == ScoreDirection.HIGHER
    assert PatchPixelFlipping.score_direction == ScoreDirection.LOWER
    assert SaCo.evaluation_category == EvaluationCategory.FAITHFULNESS
    assert SaCo.data_applicability == {DataType.IMAGE}
    assert SaCo.model_applicability == {ModelType.TORCH}

    class Impostor(SaCo):
        name = "SaCo"

    with pytest.raises(ValueError, match="'SaCo' is already taken"):
        quantus_saco.register_metric(Impostor)
    assert faithfulness["SaCo"] is SaCo


def saliency_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs).float().requires_grad_()
    attr = Saliency(model).attribute(x, target=torch.as_tensor(targets).long())
    return attr.sum(1, keepdim=True).detach().numpy()


def test_quantus_evaluate(vit, data):
    x, y, a = data

    def metrics():
        return {
            "SaCo": SaCo(n_groups=4, **kw()),
            "FC": PatchFaithfulnessCorrelation(nr_runs=5, subset_size=4, seed=3, **kw()),
            "PF": PatchPixelFlipping(patches_in_step=2, **kw()),
        }

    results = quantus.evaluate(
        metrics=metrics(),
        xai_methods={"Saliency": saliency_explain, "Grid": a.reshape(4, 4, 4)},
        model=vit,
        x_batch=x,
        y_batch=y,
        explain_func_kwargs={},
    )
    a_saliency = saliency_explain(vit, x, y)
    for method, attribution in (("Saliency", a_saliency), ("Grid", a)):
        for name, metric in metrics().items():
            direct = metric(model=vit, x_batch=x, y_batch=y, a_batch=attribution)
            assert len(results[method][name]) == len(x)
            np.testing.assert_allclose(results[method][name], direct, rtol=0, atol=1e-9)


def test_explain_func_path(vit, data):
    x, y, _ = data
    saco = SaCo(n_groups=4, **kw())
    via_explain = saco(model=vit, x_batch=x, y_batch=y, explain_func=saliency_explain)
    assert via_explain == pytest.approx(saco(model=vit, x_batch=x, y_batch=y, a_batch=saliency_explain(vit, x, y)))


# ---------------------------------------------------------------- errors and degenerate input


def test_constant_attribution_gives_nan_and_count(vit, data):
    x, y, a = data
    a = a.copy()
    a[1] = 0.5
    saco = SaCo(n_groups=4, **kw())
    with pytest.warns(RuntimeWarning, match="SaCo is undefined .* for 1 of 4"):
        scores = saco(model=vit, x_batch=x, y_batch=y, a_batch=a)
    assert np.isnan(scores[1]) and not np.isnan(scores[0]) and saco.n_undefined == 1
    agg = SaCo(n_groups=4, return_aggregate=True, **kw())
    with pytest.warns(RuntimeWarning):
        (mean,) = agg(model=vit, x_batch=x, y_batch=y, a_batch=a)
    assert mean == pytest.approx(np.mean([s for s in scores if not np.isnan(s)]))


@pytest.mark.parametrize(
    "make, call, match",
    [
        (lambda: SaCo(n_groups=0, **kw()), None, "n_groups=0"),
        (lambda: SaCo(n_groups=17, **kw()), {}, "n_groups=17 exceeds the 16 patches"),
        (lambda: SaCo(**kw()), {"a_batch": np.ones((4, 5))}, r"attribution shape \(4, 5\)"),
        (lambda: SaCo(**kw()), {"a_batch": np.ones((4, 3, 3))}, r"attribution shape \(4, 3, 3\)"),
        (lambda: SaCo(patch_size=5, disable_warnings=True), {}, "not divisible by patch_size=5"),
        (lambda: SaCo(patch_size=5, disable_warnings=True), {"a_batch": np.ones((4, 32, 32))}, "not divisible by patch_size=5"),
        (lambda: SaCo(n_groups=4, **kw()), {"x_nan": True}, "x_batch contains NaN"),
        (lambda: SaCo(n_groups=4, **kw()), {"a_nan": True}, "a_batch contains NaN"),
        (lambda: SaCo(n_groups=4, **kw()), {"softmax": False}, "softmax=False"),
        (lambda: PatchFaithfulnessCorrelation(subset_size=16, nr_runs=3, **kw()), {}, "subset_size=16"),
        (lambda: PatchFaithfulnessCorrelation(subset_size=0, **kw()), None, "subset_size=0"),
        (lambda: PatchFaithfulnessCorrelation(correlation="kendall", **kw()), None, "correlation='kendall'"),
        (lambda: PatchFaithfulnessCorrelation(subset_size=2, nr_runs=3, **kw()), {"softmax": True}, "softmax=True"),
        (lambda: PatchPixelFlipping(patches_in_step=17, **kw()), {}, "patches_in_step=17 exceeds"),
        (lambda: PatchPixelFlipping(auc_scale="percent", **kw()), None, "auc_scale='percent'"),
    ],
)
def test_clear_errors(vit, data, make, call, match):
    x, y, a = data
    with pytest.raises(ValueError, match=match):
        metric = make()
        if call is not None:
            call = dict(call)
            xb = x.copy()
            ab = call.pop("a_batch", a).copy()
            if call.pop("x_nan", False):
                xb[0, 0, 0, 0] = np.nan
            if call.pop("a_nan", False):
                ab[2, 3] = np.nan
            metric(model=vit, x_batch=xb, y_batch=y, a_batch=ab, **call)


# ---------------------------------------------------------------- issue 15: no silent wrong class or grid


SMALL = {SaCo: dict(n_groups=4), PatchFaithfulnessCorrelation: dict(nr_runs=4, subset_size=3), PatchPixelFlipping: {}}


@pytest.mark.parametrize("metric_cls", [SaCo, PatchFaithfulnessCorrelation, PatchPixelFlipping])
def test_negative_or_out_of_range_targets_are_refused(vit, data, metric_cls):
    x, y, a = data
    metric = metric_cls(**SMALL[metric_cls], **kw())
    with pytest.raises(ValueError, match=r"negative classes \[-1\]"):
        metric(model=vit, x_batch=x, y_batch=np.array([0, -1, 2, 1]), a_batch=a)
    with pytest.raises(ValueError, match=r"classes \[3\] but the model has 3 outputs"):
        metric(model=vit, x_batch=x, y_batch=np.array([0, 3, 2, 1]), a_batch=a)
    with pytest.raises(ValueError, match="integer class indices"):
        metric(model=vit, x_batch=x, y_batch=np.array([0.5, 1, 2, 1]), a_batch=a)


def test_integer_targets_of_any_numpy_kind_score_the_same(vit, data):
    x, y, a = data
    saco = SaCo(n_groups=4, **kw())
    reference = saco(model=vit, x_batch=x, y_batch=y.astype(np.int64), a_batch=a)
    assert saco(model=vit, x_batch=x, y_batch=y.astype(np.uint8), a_batch=a) == reference
    assert saco(model=vit, x_batch=x, y_batch=y.astype(np.float32), a_batch=a) == reference


@pytest.mark.parametrize("metric_cls", [SaCo, PatchFaithfulnessCorrelation, PatchPixelFlipping])
def test_patch_size_other_than_the_vits_is_refused(vit, data, metric_cls):
    x, y, a = data
    metric = metric_cls(**{**kw(), "patch_size": 16})
    with pytest.raises(ValueError, match="patch_size=16 but the model's patch embedding cuts 8x8 patches"):
        metric(model=vit, x_batch=x, y_batch=y, a_batch=a[:, :4])


def test_patch_size_is_not_checked_for_models_without_a_patch_embedding(data):
    x, y, _ = data
    model = PatchLinear(np.ones(N_PATCHES, dtype=np.float32)).eval()  # 8x8 pooling, no patch embedding
    rng = np.random.default_rng(1)
    scores = SaCo(n_groups=2, **{**kw(), "patch_size": 16})(model=model, x_batch=x, y_batch=y % 2,
                                                            a_batch=rng.normal(size=(4, 4)))
    assert np.isfinite(scores).all()


def test_engine_refuses_negative_targets_and_a_wrong_patch_size(vit, data):
    x, _, a = data
    x, a = torch.from_numpy(x), torch.from_numpy(a)
    with pytest.raises(ValueError, match=r"target holds negative classes \[-1\]"):
        quantus_saco.evaluate_patch_metrics(vit, x, a, torch.tensor([0, 1, -1, 2]), P_SIZE, saco_groups=4,
                                            fc_subset_size=4, fc_runs=4)
    with pytest.raises(ValueError, match="patch_size=16"):
        quantus_saco.evaluate_patch_metrics(vit, x, a[:, :4], None, 16, saco_groups=2, fc_subset_size=2, fc_runs=4)


# ---------------------------------------------------------------- shared Quantus arguments and project defaults


SHARED_OWN = {SaCo: dict(n_groups=4), PatchFaithfulnessCorrelation: dict(nr_runs=5, subset_size=3, seed=2),
              PatchPixelFlipping: dict(patches_in_step=3)}
SHARED_TOL = {SaCo: 1e-6, PatchFaithfulnessCorrelation: 1e-4, PatchPixelFlipping: 1e-6}  # FC: fp32 noise in tiny drops


def ref_scores(metric_cls, model, x, a, y, baseline=np.mean):
    """Per-image explicit references for the ``SHARED_OWN`` metrics; ``baseline(img)`` is the replacement value."""
    if metric_cls is SaCo:
        return [ref_saco(model, x[b], a[b], y[b], 4, baseline) for b in range(len(x))]
    if metric_cls is PatchPixelFlipping:
        return [ref_pf_auc(model, x[b], a[b], y[b], 3, baseline) for b in range(len(x))]
    subsets = sample_subsets(range(len(x)), 5, N_PATCHES, 3, seed=2).numpy()
    return [scipy.stats.pearsonr(*ref_fc_terms(model, x[b], a[b], y[b], subsets[b], baseline))[0] for b in range(len(x))]


def scaled(a, factor):
    return factor * a


@pytest.mark.parametrize("metric_cls", [SaCo, PatchFaithfulnessCorrelation, PatchPixelFlipping])
def test_project_defaults_of_the_shared_quantus_arguments(vit, data, metric_cls):
    x, y, a = data
    for explicit in ({}, dict(aggregate_func=None, perturb_func=None)):  # None also means the project default
        metric = metric_cls(**SHARED_OWN[metric_cls], **explicit, **kw())
        assert metric.normalise is False and metric.abs is False and metric.return_aggregate is False
        assert metric.aggregate_func is np.nanmean
        assert metric.perturb_func.func is batch_patch_replacement_by_indices
        assert metric.perturb_func.keywords == {"perturb_baseline": "mean"}
        assert metric.display_progressbar is False
    # in effect: raw signed attributions, per-sample image mean replaced, one score per image
    scores = metric(model=vit, x_batch=x, y_batch=y, a_batch=a)
    np.testing.assert_allclose(scores, ref_scores(metric_cls, vit, x, a, y), rtol=0, atol=SHARED_TOL[metric_cls])
    (mean,) = metric_cls(**SHARED_OWN[metric_cls], return_aggregate=True, **kw())(model=vit, x_batch=x, y_batch=y,
                                                                                 a_batch=a)
    assert mean == pytest.approx(np.mean(ref_scores(metric_cls, vit, x, a, y)), abs=SHARED_TOL[metric_cls])
    if metric_cls is PatchPixelFlipping:
        return  # PF is defined for every image: nothing to leave out
    # nanmean aggregation: image 0 made undefined (constant attribution: SaCo and FC have no ordering to score) is
    # left out of the aggregate, which is the mean of the other images' explicit references
    flat = a.copy()
    flat[0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SaCo warns about the undefined image
        per_image = metric_cls(**SHARED_OWN[metric_cls], **kw())(model=vit, x_batch=x, y_batch=y, a_batch=flat)
        (mean,) = metric_cls(**SHARED_OWN[metric_cls], return_aggregate=True, **kw())(model=vit, x_batch=x, y_batch=y,
                                                                                     a_batch=flat)
    assert np.isnan(per_image[0]) and not np.isnan(per_image[1:]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the references' own warnings about image 0
        expected = np.mean(ref_scores(metric_cls, vit, x, flat, y)[1:])
    assert mean == pytest.approx(expected, abs=SHARED_TOL[metric_cls])


@pytest.mark.parametrize("metric_cls", [SaCo, PatchFaithfulnessCorrelation, PatchPixelFlipping])
def test_shared_quantus_arguments_are_applied(vit, data, metric_cls):
    x, y, a = data
    tol = SHARED_TOL[metric_cls]

    def run(**quantus_kwargs):
        metric = metric_cls(**SHARED_OWN[metric_cls], **quantus_kwargs, **kw())
        return metric(model=vit, x_batch=x, y_batch=y, a_batch=a)

    def check(scores, expected):
        np.testing.assert_allclose(scores, expected, rtol=0, atol=tol)

    reference = ref_scores(metric_cls, vit, x, a, y)
    check(run(abs=True), ref_scores(metric_cls, vit, x, np.abs(a), y))
    check(run(normalise=True, normalise_func=scaled, normalise_func_kwargs={"factor": -2.0}),
          ref_scores(metric_cls, vit, x, -2.0 * a, y))
    check(run(normalise=False, normalise_func=scaled, normalise_func_kwargs={"factor": -2.0}), reference)
    check(run(normalise=True, normalise_func=scaled, normalise_func_kwargs={"factor": -2.0}, abs=True),
          ref_scores(metric_cls, vit, x, 2.0 * np.abs(a), y))  # Quantus order: normalise, then abs
    check(run(perturb_baseline="black"), ref_scores(metric_cls, vit, x, a, y, baseline=np.min))
    check(run(perturb_baseline=0.25), ref_scores(metric_cls, vit, x, a, y, baseline=lambda img: 0.25))
    check(run(perturb_func_kwargs={"perturb_baseline": "white"}), ref_scores(metric_cls, vit, x, a, y, baseline=np.max))
    assert run(return_aggregate=True, aggregate_func=np.median) == pytest.approx([np.median(reference)], abs=tol)
    assert run(return_aggregate=True) == pytest.approx([np.mean(reference)], abs=tol)

    calls = []

    def recording_perturb(**kwargs):
        calls.append(kwargs["perturb_baseline"])
        return batch_patch_replacement_by_indices(**kwargs)

    check(run(perturb_func=recording_perturb), reference)
    assert calls and set(calls) == {"mean"}
    with pytest.raises(ValueError, match="Unexpected keyword arguments encountered: {'bogus': 1}"):
        run(bogus=1)
