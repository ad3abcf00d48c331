"""Feature case studies on a constructed case with a known answer: a planted SAE feature that fires only on a
marked patch and whose decoder direction is (anti-)aligned with the target gradient there."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from captum_fgattr import SparseAutoencoder
from captum_fgattr.adapters import capture, get_adapter
from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.config import RunConfig
from captum_fgattr.bench.experiments import fg_spec, transmm_spec
from captum_fgattr.bench.features import prototypes as features_prototypes
from captum_fgattr.bench.features.study import (
    CACHE_FOLDER, analyze_features, composite_improvement, rank_cases, select_fg_method,
)
from captum_fgattr.bench.store import ResultRow, ResultStore
from captum_fgattr.sae import SAEConfig
from tests.conftest import make_vit

MARK = 6  # marked patch (row 1, col 2 of the 4 x 4 grid)
PLANTED, WEAKER, LOUD = 5, 9, 2  # planted feature; a weaker one on the same patch; one active everywhere, no effect
LAYER, DECOY_LAYER = 1, 0
N_MARKED, N_IMAGES = 4, 6  # images 0..3 carry the mark (analysed), 4..5 do not (reference only)


def _tokens_and_grads(vit, images, targets, layer):
    """(B, T, D) patch tokens of block ``layer`` and the target logit's gradient there."""
    adapter = get_adapter(vit)
    with torch.enable_grad(), capture(adapter, attention=False, resid_layers=[layer]) as cap:
        logits = vit(images)
        cap.backward(logits.gather(1, targets[:, None]).sum())
        p = adapter.num_prefix_tokens
        return cap.resid[layer][:, p:].detach(), cap.resid_grad[layer][:, p:].detach()


def _relu_sae(d_in, n_features=16):
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, n_features=n_features, activation="relu", k=None), seed=0)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)  # every feature off unless set below
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


def build_case(sign: float):
    """Tiny ViT, images with a bright marked patch, SAEs for blocks 0 (decoy) and 1 (planted feature)."""
    vit = make_vit()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(N_IMAGES, 3, 32, 32, generator=gen)
    r, c = divmod(MARK, 4)
    images[:N_MARKED, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 4.0
    with torch.no_grad():
        targets = vit(images).argmax(1)
    x, g = _tokens_and_grads(vit, images, targets, LAYER)
    D = x.shape[-1]
    marked = x[:N_MARKED, MARK]
    others = torch.cat([x[:N_MARKED, :MARK].reshape(-1, D), x[:N_MARKED, MARK + 1:].reshape(-1, D),
                        x[N_MARKED:].reshape(-1, D)])
    u = marked.mean(0) - others.mean(0)
    u = u / u.norm()
    lo, hi = float((others @ u).max()), float((marked @ u).min())
    assert lo < hi, "the marked patch's tokens are not separable: the constructed case is broken"
    direction = g[:N_MARKED, MARK].mean(0)
    direction = direction / direction.norm()
    assert (g[:N_MARKED, MARK] @ direction > 0).all(), "gradients at the mark disagree in direction"

    sae = _relu_sae(D)
    decoy = _relu_sae(D)
    with torch.no_grad():
        for feature in (PLANTED, WEAKER):
            sae.W_enc[:, feature] = u / (hi - lo)
            sae.b_enc[feature] = -(lo + hi) / 2 / (hi - lo)
        sae.W_dec[PLANTED] = sign * direction
        orthogonal = torch.randn(D, generator=gen)
        orthogonal -= (orthogonal @ direction) * direction
        sae.W_dec[WEAKER] = sign * (0.3 * direction + orthogonal / orthogonal.norm())
        for s in (sae, decoy):  # strongly active everywhere, but zero decoder: contributes nothing
            s.b_enc[LOUD] = 5.0
    return vit, images, targets, {DECOY_LAYER: decoy, LAYER: sae}


def fill_store(run_dir, targets, fg_delta):
    """Store TransMM and FG rows of images 0..3 with FG − TransMM SaCo differences ``fg_delta``."""
    spec = fg_spec([DECOY_LAYER, LAYER], "combined", 0.5, 10.0)
    store = ResultStore(run_dir)
    ids = list(range(N_MARKED))
    store.register_experiment("test", "test", [transmm_spec(), spec], ids)
    rows = []
    for i in ids:
        t = int(targets[i])
        rows.append(ResultRow("test", transmm_spec().key, i, str(i), t, t, t, {"saco": 0.2, "fc": 0.3, "pf_auc": 0.5}, 16))
        rows.append(ResultRow("test", spec.key, i, str(i), t, t, t, {"saco": 0.2 + fg_delta[i], "fc": 0.3, "pf_auc": 0.5},
                              16))
    store.add_batch(rows)
    return store, spec


@pytest.mark.parametrize("sign, role", [(1.0, "booster"), (-1.0, "suppressor")])
def test_planted_feature_is_found(tmp_path, sign, role):
    vit, images, targets, saes = build_case(sign)
    store, spec = fill_store(tmp_path / "run", targets, [0.5, 0.3, -0.2, -0.4])
    dataset = torch.utils.data.TensorDataset(images[:N_MARKED], targets[:N_MARKED])
    reference = torch.utils.data.TensorDataset(images, targets)
    with store:
        assert select_fg_method(store).key == spec.key
        result = analyze_features(vit, dataset, saes, None, store, "test", n_images=2, n_patches=3, reference=reference,
                                  reference_split="ref", prototypes=10, class_names=["a", "b", "c", "d", "e"],
                                  out_dir=tmp_path / "out", progress=False)
    assert [(c.group, c.image_id) for c in result.cases] == [("improved", 0), ("improved", 1), ("degraded", 3),
                                                              ("degraded", 2)]
    for image_id in range(N_MARKED):
        first = result.findings[image_id][0]  # the largest |Δ| patch
        assert (first.patch, first.layer, first.feature, first.sign) == (MARK, LAYER, PLANTED, role)
        assert (first.delta > 0) == (role == "booster")
        assert first.gate == pytest.approx(10.0 if role == "booster" else 0.1, rel=1e-4)
        assert all(row.layer == -1 for row in result.findings[image_id][1:])  # no feature acts elsewhere
    assert [(s.layer, s.feature) for s in result.features] == [(LAYER, PLANTED)]
    stats = result.features[0]
    assert stats.role == role and stats.share == 1.0 and stats.cases == N_MARKED and stats.images == N_MARKED
    assert result.top(role)[0] is stats and result.top("booster" if role == "suppressor" else "suppressor") == []

    proto = result.prototypes[(LAYER, PLANTED)]
    assert sorted(proto.image_ids.tolist()) == list(range(N_MARKED))  # unmarked reference images never fire
    assert (np.diff(proto.activations) <= 0).all() and (proto.activations > 0).all()
    assert all(int(m.argmax()) == MARK and (m.ravel()[np.arange(16) != MARK] == 0).all() for m in proto.maps)

    out = tmp_path / "out"
    for name in ("case_improved.png", "case_degraded.png", f"prototypes_L{LAYER}_f{PLANTED}.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "features.md").read_text()
    assert f"## Top {role}s" in text and f"| {PLANTED} | {LAYER} | {role} |" in text
    with (out / "features.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 3 and {r["patch"] for r in rows if r["rank"] == "1"} == {str(MARK)}


def test_prototype_cache_is_used(tmp_path, monkeypatch):
    vit, images, targets, saes = build_case(1.0)
    reference = torch.utils.data.TensorDataset(images, targets)
    first = features_prototypes.feature_prototypes(vit, reference, saes, [(LAYER, PLANTED), (LAYER, LOUD)], top=3,
                                                   split="ref", batch_size=4, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("prototypes_*.safetensors"))) == 1
    assert len(first[(LAYER, LOUD)].image_ids) == 3  # top-3 of 6 images, streamed in batches of 4

    def no_stream(*args, **kwargs):
        raise AssertionError("the cached prototypes were recomputed")

    monkeypatch.setattr(features_prototypes, "iter_patch_activations", no_stream)
    again = features_prototypes.feature_prototypes(vit, reference, saes, [(LAYER, LOUD), (LAYER, PLANTED)], top=3,
                                                   split="ref", cache_dir=tmp_path, progress=False)
    for key in first:
        np.testing.assert_array_equal(first[key].image_ids, again[key].image_ids)
        np.testing.assert_array_equal(first[key].maps, again[key].maps)
    with pytest.raises(AssertionError, match="recomputed"):  # another split is another cache entry
        features_prototypes.feature_prototypes(vit, reference, saes, [(LAYER, LOUD)], top=3, split="val",
                                               cache_dir=tmp_path, progress=False)


def test_composite_and_ranking():
    base = {"saco": np.array([0.1, 0.1, np.nan, 0.1]), "fc": np.array([0.2, 0.2, 0.2, 0.2]),
            "pf_auc": np.array([0.5, 0.5, 0.5, 0.5])}
    fg = {"saco": np.array([0.3, 0.1, np.nan, 0.1]), "fc": np.array([0.2, 0.2, 0.2, 0.0]),
          "pf_auc": np.array([0.5, 0.3, 0.5, 0.5])}
    composite, deltas = composite_improvement(fg, base)
    assert deltas["pf_auc"][1] == pytest.approx(0.2)  # lower PF is better: sign flipped
    spread = {m: np.nanstd(np.concatenate([fg[m], base[m]])) for m in base}
    assert composite[0] == pytest.approx(0.2 / spread["saco"] / 3)
    assert composite[1] == pytest.approx(0.2 / spread["pf_auc"] / 3)
    assert composite[2] == 0.0  # SaCo undefined: mean over FC and PF only
    assert composite[3] == pytest.approx(-0.2 / spread["fc"] / 3)
    assert rank_cases([10, 11, 12, 13], composite, 5) == {"improved": [1, 0] if composite[1] > composite[0] else [0, 1],
                                                          "degraded": [3]}


def test_features_cli_on_a_configured_run(tmp_path):
    """A run made by `fgattr sweep/evaluate`: the command rebuilds model, data and SAEs from its configuration."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / split / name / f"{i}.png")
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", num_classes=2, img_size=64).state_dict(), str(tmp_path / "vit.safetensors"))
    for layer in (1, 2):
        SparseAutoencoder(SAEConfig(d_in=64, n_features=32, k=4), seed=layer).save(str(tmp_path / "saes" / f"layer_{layer}"))
    config = RunConfig.from_dict({
        "run_dir": str(tmp_path / "run"), "saes": str(tmp_path / "saes"),
        "model": {"name": "test_vit", "checkpoint": str(tmp_path / "vit.safetensors"), "num_classes": 2, "img_size": 64},
        "data": {"val": str(tmp_path / "val"), "test": str(tmp_path / "test")}})
    spec = fg_spec([1, 2], "combined", 0.5, 10.0)
    with ResultStore(tmp_path / "run") as store:
        store.log_invocation("evaluate", config.to_dict())
        store.register_experiment("test", "test", [transmm_spec(), spec], range(4))
        store.add_batch([ResultRow("test", key, i, str(i), 0, 0, 0, {"saco": 0.1 + d * i, "fc": 0.2, "pf_auc": 0.5}, 16)
                         for i in range(4) for key, d in ((transmm_spec().key, 0.0), (spec.key, 0.1 * (i - 1.5)))])
    assert main(["features", "--run-dir", str(tmp_path / "run"), "--images", "1", "--patches", "2",
                 "--prototypes", "3", "--quiet"]) == 0
    out = tmp_path / "run" / "features"
    assert (out / "features.md").stat().st_size > 0 and (out / "case_improved.png").is_file()
    assert len(list(out.glob("prototypes_L*_f*.png"))) >= 1
    assert len(list((tmp_path / "run" / CACHE_FOLDER).glob("*.safetensors"))) == 1


def test_features_cli_errors(tmp_path, capsys):
    assert main(["features", "--run-dir", str(tmp_path / "missing")]) == 2
    spec = fg_spec([1], "combined", 0.5, 10.0)
    with ResultStore(tmp_path / "run") as store:
        store.register_experiment("test", "test", [transmm_spec(), fg_spec([1], "combined", 0.5, 10.0, shuffle_seed=0)], [0])
    assert main(["features", "--run-dir", str(tmp_path / "run")]) == 2
    assert "no real-SAE FG-TransMM" in capsys.readouterr().err
    with ResultStore(tmp_path / "run") as store:
        store.register_experiment("test", "test", [spec], [0])
    assert main(["features", "--run-dir", str(tmp_path / "run")]) == 2
    assert "stores no `fgattr sweep/evaluate/run/demo` configuration" in capsys.readouterr().err
    with ResultStore(tmp_path / "run") as store:
        with pytest.raises(ValueError, match="n_images=0"):
            analyze_features(make_vit(), torch.utils.data.TensorDataset(torch.zeros(1, 3, 32, 32), torch.zeros(1)),
                             {}, spec, store, n_images=0)
