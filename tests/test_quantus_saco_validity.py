"""Region perturbation (MoRF / LeRF), SRG and ROAD at patch level: Quantus classes and batched functions
against explicit per-image loops, against each other, against Pixel Flipping, and on a model whose truth is known."""

import copy

import numpy as np
import pytest
import quantus
import torch
from quantus.helpers.enums import EvaluationCategory, ScoreDirection
from timm.models.vision_transformer import VisionTransformer

import quantus_saco
from quantus_saco import (
    PatchPixelFlipping, PatchRegionPerturbation, PatchROAD, PatchSRG, evaluate_patch_metrics,
    evaluate_region_perturbation, evaluate_road,
)
from quantus_saco.forwards import PerturbedForwards
from tests.test_quantus_saco import N_PATCHES, P_SIZE, PatchLinear, ref_output, ref_replace, true_attribution

KW = dict(patch_size=P_SIZE, disable_warnings=True)
GRID = 32 // P_SIZE


# ---------------------------------------------------------------- explicit references (one image at a time)


def ref_ranking(attr, order):
    """MoRF: descending attribution, LeRF: ascending; equal values: lower patch index first."""
    return np.argsort(-attr if order == "morf" else attr, kind="stable")


def ref_auc(counts, curve):
    """Trapezoid area over the removed fraction, divided by the last removed fraction."""
    xs = [n / N_PATCHES for n in counts]
    area = sum((xs[i + 1] - xs[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / xs[-1]


def ref_region_curve(model, img, attr, t, order, step, baseline=np.mean):
    ranking = ref_ranking(attr, order)
    counts = [min(n, N_PATCHES) for n in range(0, N_PATCHES + step, step)]
    return counts, [ref_output(model, ref_replace(img, ranking[:n], baseline(img)), t, True) for n in counts]


def ref_region_auc(model, img, attr, t, order, step, baseline=np.mean):
    return ref_auc(*ref_region_curve(model, img, attr, t, order, step, baseline))


NEIGHBOURS = [((dr, dc), 1 / 12 if dr and dc else 1 / 6) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]


def ref_linear_imputation(img, removed):
    """Each removed pixel = weighted mean of its in-image 8 neighbours (1/6 direct, 1/12 diagonal), every
    channel; one dense linear system over the removed pixels. img (C, H, W) float64, removed (H, W) bool."""
    C, H, W = img.shape
    unknown = list(zip(*np.nonzero(removed)))
    column = {pixel: k for k, pixel in enumerate(unknown)}
    A, b = np.zeros((len(unknown), len(unknown))), np.zeros((len(unknown), C))
    for k, (r, c) in enumerate(unknown):
        for (dr, dc), w in NEIGHBOURS:
            rr, cc = r + dr, c + dc
            if 0 <= rr < H and 0 <= cc < W:
                A[k, k] += w
                if removed[rr, cc]:
                    A[k, column[(rr, cc)]] -= w
                else:
                    b[k] += w * img[:, rr, cc]
    out = img.copy()
    for (r, c), value in zip(unknown, np.linalg.solve(A, b)):
        out[:, r, c] = value
    return out


def ref_noise(seed, sample_id, shape):
    """Standard-normal draws of one image: a torch generator seeded by numpy's SeedSequence([seed, id])."""
    state = int(np.random.SeedSequence([seed, sample_id]).generate_state(1, dtype=np.uint64)[0])
    return torch.randn(shape, generator=torch.Generator().manual_seed(state)).numpy().astype(np.float64)


def ref_road_curve(model, img, attr, t, order, fractions, noise, seed, sample_id):
    ranking = ref_ranking(attr, order)
    draws = ref_noise(seed, sample_id, img.shape)
    counts = [0] + [round(f * N_PATCHES) for f in fractions]
    curve, correct = [ref_output(model, img, t, True)], []
    for n in counts:
        removed = np.zeros((32, 32), dtype=bool)
        for q in ranking[:n]:
            r, c = divmod(int(q), GRID)
            removed[r * P_SIZE:(r + 1) * P_SIZE, c * P_SIZE:(c + 1) * P_SIZE] = True
        imputed = ref_linear_imputation(img.astype(np.float64), removed) + noise * draws * removed
        with torch.no_grad():
            logits = model(torch.from_numpy(imputed.astype(np.float32))[None])[0]
        if n:
            curve.append(float(torch.softmax(logits, -1)[t]))
        correct.append(float(logits.argmax() == t))
    return counts, curve, correct


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=P_SIZE, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    a = rng.normal(size=(4, N_PATCHES))
    a[1, :4] = a[1, 4]  # ties: the tie rule matters for MoRF and LeRF
    return x, y, a


def numpy_global_state():
    _, keys, position, *_ = np.random.get_state()
    return keys.tobytes(), position


def tensors(*arrays):
    return [torch.from_numpy(np.asarray(a)) for a in arrays]


# ---------------------------------------------------------------- region perturbation, SRG


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("step", [1, 3])
def test_region_perturbation_equals_explicit_loop(vit, data, order, step):
    x, y, a = data
    metric = PatchRegionPerturbation(order=order, patches_in_step=step, **KW)
    aucs = metric(model=vit, x_batch=x, y_batch=y, a_batch=a)
    curves = PatchRegionPerturbation(order=order, patches_in_step=step, return_auc_per_sample=False, **KW)(
        model=vit, x_batch=x, y_batch=y, a_batch=a)
    out = evaluate_region_perturbation(vit, *tensors(x, a, y), P_SIZE, orders=(order,), patches_per_step=step)
    for b in range(len(x)):
        counts, ref_curve = ref_region_curve(vit, x[b], a[b], y[b], order, step)
        np.testing.assert_allclose(curves[b], ref_curve, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[f"{order}_curve"][b].numpy(), ref_curve, rtol=0, atol=1e-6)
        assert aucs[b] == pytest.approx(ref_auc(counts, ref_curve), abs=1e-6)
        assert out[f"{order}_auc"][b].item() == pytest.approx(ref_auc(counts, ref_curve), abs=1e-6)
    assert metric.get_auc_score == pytest.approx(np.mean(aucs), abs=1e-12)
    assert sorted(out) == [f"{order}_auc", f"{order}_curve"]  # SRG only with both orders


@pytest.mark.parametrize("baseline, ref_baseline", [("black", np.min), ("white", np.max), (0.25, lambda img: 0.25)])
def test_srg_equals_explicit_loop_for_each_baseline(vit, data, baseline, ref_baseline):
    x, y, a = data
    srg = PatchSRG(patches_in_step=2, perturb_baseline=baseline, **KW)(model=vit, x_batch=x, y_batch=y, a_batch=a)
    out = evaluate_region_perturbation(vit, *tensors(x, a, y), P_SIZE, patches_per_step=2, perturb_baseline=baseline)
    expected = [ref_region_auc(vit, x[b], a[b], y[b], "lerf", 2, ref_baseline)
                - ref_region_auc(vit, x[b], a[b], y[b], "morf", 2, ref_baseline) for b in range(len(x))]
    np.testing.assert_allclose(srg, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["srg"].numpy(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["srg"], out["lerf_auc"] - out["morf_auc"], rtol=0, atol=0)


@pytest.mark.parametrize("step", [1, 3])
def test_morf_equals_pixel_flipping_and_shares_its_forwards(vit, data, step):
    x, y, a = data
    call = dict(model=vit, x_batch=x, y_batch=y, a_batch=a)
    assert PatchRegionPerturbation(patches_in_step=step, **KW)(**call) == PatchPixelFlipping(patches_in_step=step, **KW)(**call)

    X, A, Y = tensors(x, a, y)
    forwards = PerturbedForwards(vit, X, P_SIZE)
    pf = evaluate_patch_metrics(vit, X, A, Y, P_SIZE, metrics=("pf",), pf_patches_per_step=step, forwards=forwards)
    before = forwards.forwarded
    shared = evaluate_region_perturbation(vit, X, A, Y, P_SIZE, patches_per_step=step, forwards=forwards)
    assert torch.equal(shared["morf_curve"], pf["pf_curve"]) and torch.equal(shared["morf_auc"], pf["pf_auc"])
    n_points = len(range(0, N_PATCHES + step, step)) - 1
    # MoRF's images are all Pixel-Flipping's; LeRF's too where all patches are removed (its last point)
    assert forwards.forwarded - before == len(x) * (n_points - 1)
    alone = evaluate_region_perturbation(vit, X, A, Y, P_SIZE, patches_per_step=step)
    for name, value in alone.items():
        assert torch.equal(shared[name], value), name


def test_batched_function_options(vit, data):
    x, y, a = data
    X, A, Y = tensors(x, a, y)
    with torch.no_grad():
        logits = vit(X)
    default = evaluate_region_perturbation(vit, X, A, Y, P_SIZE, max_batch=5)
    for name, value in evaluate_region_perturbation(vit, X, A, Y, P_SIZE, logits=logits, max_batch=1000).items():
        torch.testing.assert_close(value, default[name], rtol=0, atol=1e-6)
    predicted = evaluate_region_perturbation(vit, X, A, None, P_SIZE)
    torch.testing.assert_close(predicted["srg"], evaluate_region_perturbation(vit, X, A, logits.argmax(1), P_SIZE)["srg"])
    # tie order: numpy's unstable argsort of -a (MoRF) and of a (LeRF), as Quantus's RegionPerturbation ranks
    numpy_ties = evaluate_region_perturbation(vit, X, A, Y, P_SIZE, tie_order="numpy_negated")
    quantus_ties = PatchRegionPerturbation(order="lerf", tie_order="numpy_negated", **KW)(model=vit, x_batch=x,
                                                                                          y_batch=y, a_batch=a)
    np.testing.assert_allclose(numpy_ties["lerf_auc"].numpy(), quantus_ties, rtol=0, atol=1e-6)
    ranking = np.argsort(a[1])  # image 1 has tied attributions
    counts = list(range(N_PATCHES + 1))
    curve = [ref_output(vit, ref_replace(x[1], ranking[:n], x[1].mean()), y[1], True) for n in counts]
    assert quantus_ties[1] == pytest.approx(ref_auc(counts, curve), abs=1e-6)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_batched_functions_equal_the_quantus_classes_on_the_device(vit, data, device):
    x, y, a = data
    model = copy.deepcopy(vit).to(device)
    X, A, Y = (t.to(device) for t in tensors(x, a, y))
    call = dict(model=model, x_batch=x, y_batch=y, a_batch=a, device=device, batch_size=3)
    region = evaluate_region_perturbation(model, X, A, Y, P_SIZE, patches_per_step=3, max_batch=7)
    road = evaluate_road(model, X, A, Y, P_SIZE, fractions=(0.3, 0.6), noise=0.1, seed=4, max_batch=7)
    expected = {
        "morf_auc": PatchRegionPerturbation(order="morf", patches_in_step=3, **KW)(**call),
        "lerf_curve": PatchRegionPerturbation(order="lerf", patches_in_step=3, return_auc_per_sample=False, **KW)(**call),
        "srg": PatchSRG(patches_in_step=3, **KW)(**call),
        "road_morf_auc": PatchROAD(fractions=(0.3, 0.6), noise=0.1, seed=4, **KW)(**call),
        "road_lerf_curve": PatchROAD(order="lerf", fractions=(0.3, 0.6), noise=0.1, seed=4, return_auc_per_sample=False,
                                     **KW)(**call),
    }
    for name, value in expected.items():
        out = (region if name in region else road)[name]
        assert out.device.type == device and out.dtype == torch.float64, name
        np.testing.assert_allclose(out.cpu().numpy(), np.asarray(value), rtol=0, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------- ROAD


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_road_equals_explicit_loop(vit, data, order, noise):
    x, y, a = data
    fractions = (0.2, 0.5, 0.7)
    road = PatchROAD(order=order, fractions=fractions, noise=noise, seed=3, **KW)
    aucs = road(model=vit, x_batch=x, y_batch=y, a_batch=a, batch_size=3)  # two Quantus batches, one noise draw each image
    curves = PatchROAD(order=order, fractions=fractions, noise=noise, seed=3, return_auc_per_sample=False, **KW)(
        model=vit, x_batch=x, y_batch=y, a_batch=a)
    out = evaluate_road(vit, *tensors(x, a, y), P_SIZE, orders=(order,), fractions=fractions, noise=noise, seed=3)
    for b in range(len(x)):
        counts, ref_curve, ref_correct = ref_road_curve(vit, x[b], a[b], y[b], order, fractions, noise, 3, b)
        np.testing.assert_allclose(curves[b], ref_curve, rtol=0, atol=1e-5)
        np.testing.assert_allclose(out[f"road_{order}_curve"][b].numpy(), ref_curve, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(out[f"road_{order}_correct"][b].numpy(), ref_correct)
        assert aucs[b] == pytest.approx(ref_auc(counts, ref_curve), abs=1e-5)
        assert out[f"road_{order}_auc"][b].item() == pytest.approx(ref_auc(counts, ref_curve), abs=1e-5)
    assert road.score_direction == (ScoreDirection.LOWER if order == "morf" else ScoreDirection.HIGHER)


def test_road_noise_is_seeded_and_leaves_the_global_state(vit, data):
    x, y, a = data
    X, A, Y = tensors(x, a, y)
    kw = dict(fractions=(0.25, 0.5), noise=0.5)
    state = numpy_global_state()
    first = evaluate_road(vit, X, A, Y, P_SIZE, seed=1, **kw)
    assert numpy_global_state() == state  # Quantus's imputation draws from it; restored
    for name, value in evaluate_road(vit, X, A, Y, P_SIZE, seed=1, **kw).items():
        assert torch.equal(value, first[name]), name
    other = evaluate_road(vit, X, A, Y, P_SIZE, seed=2, **kw)
    assert not torch.allclose(other["road_morf_curve"][:, 1:], first["road_morf_curve"][:, 1:])
    # the noise of an image follows its id, not its position: image 2 alone, with id 2, scores as in the batch
    alone = evaluate_road(vit, X[2:3], A[2:3], Y[2:3], P_SIZE, seed=1, sample_ids=torch.tensor([2]), **kw)
    torch.testing.assert_close(alone["road_srg"], first["road_srg"][2:3], rtol=0, atol=1e-6)
    quantus_path = PatchROAD(seed=1, order="lerf", **kw, **KW)(model=vit, x_batch=x, y_batch=y, a_batch=a)
    np.testing.assert_allclose(quantus_path, first["road_lerf_auc"].numpy(), rtol=0, atol=1e-6)
    assert numpy_global_state() == state


# ---------------------------------------------------------------- a model whose truth is known


def test_correct_map_ranks_above_random_and_reversed():
    """PatchLinear: removing patch p changes the class-1 logit by w_p (mean(p) − image mean), so ``true_attribution``
    orders the patches by their effect. MoRF AUC: lower is better; LeRF AUC, SRG and the ROAD gap: higher is better."""
    rng = np.random.default_rng(3)
    w = rng.normal(scale=3.0, size=N_PATCHES).astype(np.float32)
    model = PatchLinear(w).eval()
    x = rng.normal(size=(8, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    a_true = true_attribution(x.astype(np.float64), w, y)
    maps = {"true": a_true, "random": rng.normal(size=a_true.shape), "reversed": -a_true}
    X, Y = tensors(x, y)
    score = {}
    for name, a in maps.items():
        call = dict(model=model, x_batch=x, y_batch=y, a_batch=a)
        score[name] = dict(
            morf=np.mean(PatchRegionPerturbation(order="morf", **KW)(**call)),
            lerf=np.mean(PatchRegionPerturbation(order="lerf", **KW)(**call)),
            srg=np.mean(PatchSRG(**KW)(**call)),
            road_morf=np.mean(PatchROAD(order="morf", **KW)(**call)),
            road_lerf=np.mean(PatchROAD(order="lerf", **KW)(**call)),
        )
        batched = evaluate_road(model, X, torch.from_numpy(a), Y, P_SIZE)
        score[name]["road_srg"] = batched["road_srg"].mean().item()
        assert score[name]["road_srg"] == pytest.approx(score[name]["road_lerf"] - score[name]["road_morf"], abs=1e-6)
    for metric in ("morf", "road_morf"):
        assert score["true"][metric] < score["random"][metric] < score["reversed"][metric], metric
    for metric in ("lerf", "srg", "road_lerf", "road_srg"):
        assert score["true"][metric] > score["random"][metric] > score["reversed"][metric], metric
    # with no ties, LeRF of a map is MoRF of its reverse: SRG(-a) = -SRG(a)
    assert score["reversed"]["srg"] == pytest.approx(-score["true"]["srg"], abs=1e-9)


# ---------------------------------------------------------------- Quantus integration and errors


def test_registered_with_quantus_metadata():
    faithfulness = quantus.AVAILABLE_METRICS["Faithfulness"]
    for cls, name in ((PatchRegionPerturbation, "Patch Region Perturbation"), (PatchSRG, "Patch SRG"),
                      (PatchROAD, "Patch ROAD")):
        assert faithfulness[name] is cls and cls.evaluation_category == EvaluationCategory.FAITHFULNESS
    assert issubclass(PatchRegionPerturbation, quantus.RegionPerturbation) and issubclass(PatchROAD, quantus.ROAD)
    assert PatchRegionPerturbation(**KW).score_direction == ScoreDirection.LOWER
    assert PatchRegionPerturbation(order="lerf", **KW).score_direction == ScoreDirection.HIGHER
    assert PatchSRG(**KW).score_direction == PatchSRG.score_direction == ScoreDirection.HIGHER
    assert PatchROAD(order="lerf", **KW).score_direction == ScoreDirection.HIGHER
    assert PatchROAD(**KW).perturb_func.func is quantus_saco.imputation.batch_patch_noisy_linear_imputation


def test_quantus_evaluate(vit, data):
    x, y, a = data
    results = quantus.evaluate(
        metrics={"SRG": PatchSRG(**KW), "ROAD": PatchROAD(fractions=(0.5,), **KW)},
        xai_methods={"Grid": a.reshape(4, GRID, GRID)}, model=vit, x_batch=x, y_batch=y, explain_func_kwargs={},
    )
    out = evaluate_region_perturbation(vit, *tensors(x, a, y), P_SIZE)
    np.testing.assert_allclose(results["Grid"]["SRG"], out["srg"].numpy(), rtol=0, atol=1e-6)
    road = evaluate_road(vit, *tensors(x, a, y), P_SIZE, orders=("morf",), fractions=(0.5,))
    np.testing.assert_allclose(results["Grid"]["ROAD"], road["road_morf_auc"].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "make, call, match",
    [
        (lambda: PatchRegionPerturbation(order="random", **KW), None, "order='random'; expected one of"),
        (lambda: PatchRegionPerturbation(regions_evaluation=10, **KW), None, "regions_evaluation is not used"),
        (lambda: PatchRegionPerturbation(patches_in_step=0, **KW), None, "patches_in_step=0"),
        (lambda: PatchRegionPerturbation(patches_in_step=17, **KW), {}, "patches_in_step=17 exceeds the 16 patches"),
        (lambda: PatchRegionPerturbation(tie_order="random", **KW), None, "tie_order='random'"),
        (lambda: PatchRegionPerturbation(perturb_baseline="blur", **KW), {}, "perturb_baseline='blur'; expected one of"),
        (lambda: PatchSRG(patch_size=5, disable_warnings=True), {}, "not divisible by patch_size=5"),
        (lambda: PatchSRG(patch_size=16, disable_warnings=True), {"a_batch": np.ones((4, 4))},
         "patch_size=16 but the model's patch embedding cuts 8x8 patches"),
        (lambda: PatchSRG(order="lerf", **KW), None, "order does not apply to PatchSRG"),
        (lambda: PatchSRG(**KW), {"softmax": False}, "softmax=False"),
        (lambda: PatchROAD(fractions=(0.5, 0.2), **KW), None, r"fractions=\(0.5, 0.2\); expected a non-empty"),
        (lambda: PatchROAD(fractions=(0.0, 0.5), **KW), None, "strictly increasing sequence in \\(0, 1\\)"),
        (lambda: PatchROAD(fractions=(0.01, 0.5), **KW), {}, r"remove \[0, 8\] of 16 patches"),
        (lambda: PatchROAD(fractions=(0.5, 0.99), **KW), {}, r"remove \[8, 16\] of 16 patches"),
        (lambda: PatchROAD(noise=-0.1, **KW), None, "noise=-0.1"),
        (lambda: PatchROAD(perturb_baseline="black", **KW), None, "perturb_baseline does not apply to PatchROAD"),
        (lambda: PatchROAD(percentages=[10, 20], **KW), None, "percentages does not apply to PatchROAD"),
        (lambda: PatchROAD(order="both", **KW), None, "order='both'"),
        (lambda: PatchROAD(**KW), {"y_batch": np.array([0, 1, 3, 1])}, r"classes \[3\] but the model has 3 outputs"),
    ],
)
def test_clear_errors(vit, data, make, call, match):
    x, y, a = data
    with pytest.raises(ValueError, match=match):
        metric = make()
        if call is not None:
            call = {"model": vit, "x_batch": x, "y_batch": y, "a_batch": a, **call}
            metric(**call)


@pytest.mark.parametrize(
    "function, change, match",
    [
        (evaluate_region_perturbation, dict(orders=("morf", "random")), r"orders=\('morf', 'random'\)"),
        (evaluate_region_perturbation, dict(orders=("morf", "morf")), "expected distinct values"),
        (evaluate_region_perturbation, dict(perturb_baseline="blur"), "perturb_baseline='blur'"),
        (evaluate_region_perturbation, dict(perturb_baseline=True), "perturb_baseline=True"),
        (evaluate_region_perturbation, dict(patches_per_step=0), "patches_per_step=0"),
        (evaluate_region_perturbation, dict(patch_size=5), "not divisible by patch_size=5"),
        (evaluate_region_perturbation, dict(patch_attr=torch.zeros(4, 15)), r"patch_attr has shape \(4, 15\)"),
        (evaluate_region_perturbation, dict(target=torch.tensor([0, 1, -1, 2])), r"negative classes \[-1\]"),
        (evaluate_region_perturbation, dict(logits=torch.zeros(3, 3)), r"logits has shape \(3, 3\)"),
        (evaluate_region_perturbation, dict(max_batch=0), "max_batch=0"),
        (evaluate_region_perturbation, dict(tie_order="random"), "tie_order='random'"),
        (evaluate_road, dict(fractions=(0.5, 1.0)), r"fractions=\(0.5, 1.0\)"),
        (evaluate_road, dict(noise=float("nan")), "noise=nan"),
        (evaluate_road, dict(sample_ids=torch.tensor([0, 1, -2, 3])), "sample ids must be non-negative"),
        (evaluate_road, dict(x=torch.full((4, 3, 32, 32), float("inf"))), "x contains NaN or Inf"),
    ],
)
def test_batched_errors(vit, data, function, change, match):
    x, y, a = data
    X, A, Y = tensors(x, a, y)
    kwargs = {**dict(model=vit, x=X, patch_attr=A, target=Y, patch_size=P_SIZE), **change}
    with pytest.raises(ValueError, match=match):
        function(**kwargs)


def test_batched_functions_refuse_training_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(), torch.nn.Linear(3 * 16 * 16, 2))
    for function in (evaluate_region_perturbation, evaluate_road):
        with pytest.raises(ValueError, match="training mode"):
            function(model, torch.randn(2, 3, 16, 16), torch.randn(2, 4), None, 8)
    assert model.training
