"""Pure patch / score functions of quantus_saco against explicit formulas (docs/method.md §4)."""

import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from quantus_saco.patches import (
    indices_to_mask,
    patch_grid,
    patch_map,
    pool_patches,
    rank_patches,
    replace_patches,
    sample_subsets,
    split_bounds,
)
from quantus_saco.perturb import batch_patch_replacement_by_indices
from quantus_saco.scores import pearson, pf_auc, removed_counts, saco, spearman


def ref_replace(img: np.ndarray, patches, p: int, value: float) -> np.ndarray:
    """(C, H, W) image with the listed row-major patches set to ``value`` (all channels)."""
    out = img.copy()
    gw = img.shape[2] // p
    for q in patches:
        r, c = divmod(int(q), gw)
        out[:, r * p : (r + 1) * p, c * p : (c + 1) * p] = value
    return out


def ref_saco(s, d) -> float:
    num = den = 0.0
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            w = s[i] - s[j] if d[i] >= d[j] else -(s[i] - s[j])
            num += w
            den += abs(w)
    return num / den


@pytest.mark.parametrize("n,k", [(16, 4), (16, 5), (196, 49), (196, 10), (7, 7)])
def test_split_bounds_matches_array_split(n, k):
    expected = [(int(g[0]), int(g[-1]) + 1) for g in np.array_split(np.arange(n), k)]
    assert split_bounds(n, k) == expected


def test_patch_grid_errors():
    assert patch_grid((32, 48), 8) == (4, 6)
    with pytest.raises(ValueError, match="not divisible by patch_size=8"):
        patch_grid((30, 32), 8)
    with pytest.raises(ValueError, match="patch_size=0"):
        patch_grid((32, 32), 0)


def test_patch_map_and_pool():
    torch.manual_seed(0)
    values = torch.randn(2, 12)
    pix = patch_map(values, (24, 32), 8)
    assert pix.shape == (2, 1, 24, 32)
    for b in range(2):
        for q in range(12):
            r, c = divmod(q, 4)
            assert torch.all(pix[b, 0, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] == values[b, q])
    torch.testing.assert_close(pool_patches(pix, 8), values)
    a = torch.randn(2, 3, 24, 32)  # not constant within patches: mean over channels and pixels
    ref = torch.stack([a[:, :, (q // 4) * 8 : (q // 4 + 1) * 8, (q % 4) * 8 : (q % 4 + 1) * 8].mean(dim=(1, 2, 3)) for q in range(12)], 1)
    torch.testing.assert_close(pool_patches(a, 8), ref)


def test_rank_patches_descending_and_stable():
    attr = torch.tensor([[0.1, 0.5, 0.5, -1.0, 0.5], [3.0, 2.0, 1.0, 0.0, -1.0]])
    assert rank_patches(attr).tolist() == [[1, 2, 4, 0, 3], [0, 1, 2, 3, 4]]
    assert rank_patches(attr).tolist() == np.argsort(-attr.numpy(), axis=1, kind="stable").tolist()


def test_replace_patches_and_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 16, 24)).astype(np.float32)
    idx = torch.tensor([[0, 5], [3, 4]])
    mask = indices_to_mask(idx, 6)
    assert mask.tolist() == [[True, False, False, False, False, True], [False, False, False, True, True, False]]
    baseline = torch.tensor([0.25, -2.0])
    out = replace_patches(torch.from_numpy(x), mask, baseline, 8).numpy()
    for b in range(2):
        np.testing.assert_array_equal(out[b], ref_replace(x[b], idx[b].tolist(), 8, baseline[b].item()))


def test_quantus_contract_perturbation_uses_original_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=3.0, size=(3, 2, 16, 16))
    idx = np.array([[0, 3], [1, 2], [3, 0]])
    out = batch_patch_replacement_by_indices(
        arr=x.reshape(3, -1), indices=idx, perturb_baseline="mean", image_shape=(2, 16, 16), patch_size=8
    )
    assert out.shape == (3, 2 * 16 * 16)
    for b in range(3):
        np.testing.assert_allclose(out[b].reshape(2, 16, 16), ref_replace(x[b], idx[b], 8, x[b].mean()), rtol=0, atol=1e-12)
    out_const = batch_patch_replacement_by_indices(x.reshape(3, -1), idx, 0.5, image_shape=(2, 16, 16), patch_size=8)
    np.testing.assert_array_equal(out_const[0].reshape(2, 16, 16), ref_replace(x[0], idx[0], 8, 0.5))
    with pytest.raises(ValueError, match="perturb_baseline='median'"):
        batch_patch_replacement_by_indices(x.reshape(3, -1), idx, "median", image_shape=(2, 16, 16), patch_size=8)


def test_sample_subsets_seeded_valid_and_per_image():
    a = sample_subsets(range(3), 5, 16, 4, seed=7)
    assert a.shape == (3, 5, 4)
    assert torch.equal(a, sample_subsets(range(3), 5, 16, 4, seed=7))
    assert not torch.equal(a, sample_subsets(range(3), 5, 16, 4, seed=8))
    assert int(a.min()) >= 0 and int(a.max()) < 16
    assert all(len(set(row.tolist())) == 4 for row in a.reshape(-1, 4))  # without replacement
    # an image's subsets depend on its id only, not on the other images of the call
    assert torch.equal(sample_subsets([2], 5, 16, 4, seed=7)[0], a[2])
    assert torch.equal(sample_subsets([9, 1], 5, 16, 4, seed=7)[1], a[1])
    for bad in (0, 16):
        with pytest.raises(ValueError, match=f"subset_size={bad}"):
            sample_subsets(range(3), 5, 16, bad, seed=0)


def test_saco_matches_pairwise_formula():
    torch.manual_seed(0)
    s = torch.randn(6, 7)
    d = torch.randn(6, 7)
    d[0, 3] = d[0, 5]  # tie: concordant
    expected = [ref_saco(s[b].tolist(), d[b].tolist()) for b in range(6)]
    np.testing.assert_allclose(saco(s, d).numpy(), expected, rtol=0, atol=1e-12)
    # concordant ordering -> 1, reversed -> -1
    s_sorted = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert saco(s_sorted, s_sorted * 0.1).item() == pytest.approx(1.0)
    assert saco(s_sorted, -s_sorted).item() == pytest.approx(-1.0)


def test_saco_constant_salience_is_nan_with_warning():
    s = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    d = torch.tensor([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    with pytest.warns(RuntimeWarning, match="undefined .* for 1 of 2"):
        out = saco(s, d)
    assert np.isnan(out[0].item()) and out[1].item() == pytest.approx(-1.0)


def test_correlations_match_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 12))
    b = a + rng.normal(size=(4, 12))
    b[1, :4] = b[1, 0]  # ties for Spearman
    np.testing.assert_allclose(pearson(torch.from_numpy(a), torch.from_numpy(b)).numpy(), [scipy.stats.pearsonr(x, y)[0] for x, y in zip(a, b)], atol=1e-12)
    np.testing.assert_allclose(spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy(), [scipy.stats.spearmanr(x, y)[0] for x, y in zip(a, b)], atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(pearson(torch.ones(1, 5), torch.arange(5.0)[None]).item())


@pytest.mark.parametrize("n_patches,step", [(16, 1), (16, 3), (10, 10)])
def test_pf_auc_is_normalised_trapezoid(n_patches, step):
    counts = removed_counts(n_patches, step)
    expected_counts = sorted({min(k, n_patches) for k in range(0, n_patches + step, step)})
    assert counts.tolist() == expected_counts
    curve = torch.rand(3, len(counts), generator=torch.Generator().manual_seed(0))
    xs = [c / n_patches for c in expected_counts]
    ref = [sum((xs[i + 1] - xs[i]) * (row[i] + row[i + 1]) / 2 for i in range(len(xs) - 1)) for row in curve.tolist()]
    np.testing.assert_allclose(pf_auc(curve, counts, n_patches).numpy(), ref, atol=1e-12)
    assert pf_auc(torch.ones(1, len(counts)), counts, n_patches).item() == pytest.approx(1.0)
