"""The extension points CONTRIBUTING.md describes, each used from a test module only: a dataset layout (one
entry in LAYOUTS), a baseline (one Captum class plus one registry entry), a metric with a setting (one
MetricSpec) and a ViT adapter (one ADAPTERS entry) run through the benchmark."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from captum_fgattr.adapters import ADAPTERS, AdapterEntry, TimmViTAdapter, get_adapter, supported
from captum_fgattr.attr import TransMM
from captum_fgattr.bench.config import DataConfig, MetricConfig, Protocol, RunConfig
from captum_fgattr.bench.data.layouts import LAYOUTS, Layout, Preprocess
from captum_fgattr.bench.experiments import TEST
from captum_fgattr.bench.methods import METHODS, CaptumPatchMethod, MethodSpec, build_method, register_method
from captum_fgattr.bench.metrics import MetricBatch, MetricSpec, metric_spec, register_metric, unregister_metric
from captum_fgattr.bench.resolve import load_split
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import run_study
from captum_fgattr.patch_attribution import PatchAttribution
from tests.test_bench_data_models import save_images
from tests.test_bench_evaluate import CFG, tiny_setup


def test_a_dataset_layout_is_one_entry(tmp_path):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for c, cls in enumerate(("normal", "pneumonia")):
            save_images(tmp_path / "chestx" / split / cls, count + c, value=60 + 80 * c)
    LAYOUTS.add("chestx-folders", Layout(
        name="ChestX folders", class_dirs=("{split}/{cls}",), classes=("normal", "pneumonia"), image_dirs=("",),
        split_dirs={"train": "train", "val": "val", "test": "test"},
        preprocess=Preprocess(img_size=8, resize=8, mean=0.5, std=0.25), example="test/normal/img_00.png"))
    try:
        val = load_split(DataConfig(kind="chestx-folders", root=str(tmp_path)), "val")
    finally:
        LAYOUTS.remove("chestx-folders")
    assert len(val) == 2 + 3 and val.classes == ["normal", "pneumonia"]
    image, label = val[4]
    assert image.shape == (3, 8, 8) and label == 1
    torch.testing.assert_close(image, torch.full((3, 8, 8), (140 / 255 - 0.5) / 0.25), atol=1e-5, rtol=0)


class CenterPrior(PatchAttribution):
    """A baseline for the test: relevance = minus the patch's distance to the grid centre."""

    def _patch_relevance(self, images, target, extra):
        gh, gw = self.adapter.grid_size(images)
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        distance = ((rows - (gh - 1) / 2) ** 2 + (cols - (gw - 1) / 2) ** 2).flatten().float()
        return (-distance).expand(images.shape[0], -1).to(images.device)


@pytest.fixture
def center_prior_registered():
    register_method("center_prior")(lambda model, saes, params: CaptumPatchMethod(CenterPrior(model)))
    yield
    METHODS.remove("center_prior")


def test_a_baseline_is_one_class_and_one_registry_entry(tmp_path, center_prior_registered):
    model, data, saes = tiny_setup(6)
    maps = build_method(MethodSpec("center_prior"), model)(torch.randn(2, 3, 32, 32), torch.zeros(2), torch.arange(2))
    assert maps.shape == (2, 16) and maps[0].argmax() in (5, 6, 9, 10)  # a centre patch of the 4×4 grid
    protocol = Protocol(layers=(1,), variants=("combined",), multi_layers=(), controls=(), baselines=("center_prior",),
                        val_images=None, test_images=4)
    run_dir = run_study(model, data, data, saes, tmp_path / "run", protocol, CFG)
    with ResultStore(run_dir) as store:
        assert [s.name for s in store.experiment_methods("test", "test")] == ["transmm", "fg", "center_prior"]
    assert "| center_prior |" in (run_dir / "report" / "test.md").read_text()


def top_k_drop(batch: MetricBatch) -> Tensor:
    """(B,) target-logit drop when each image's ``k`` most attributed patches are set to 0 (``k``: its setting)."""
    k = batch.metrics.settings_of("topk_drop")["k"]
    b, _, h, w = batch.images.shape
    ps = batch.patch_size
    top = torch.zeros_like(batch.attributions, dtype=torch.bool).scatter_(1, batch.attributions.topk(k).indices, True)
    pixels = top.view(b, 1, h // ps, w // ps).repeat_interleave(ps, 2).repeat_interleave(ps, 3)
    with torch.no_grad():
        logits = batch.model(batch.images.masked_fill(pixels, 0.0)).float()
    t = batch.targets[:, None]
    return (batch.logits.gather(1, t) - logits.gather(1, t))[:, 0].double()


TOP_K_DROP = MetricSpec("topk_drop", "Top-k drop", True, top_k_drop, settings={"k": 3})
PROTOCOL = Protocol(layers=(1,), variants=("combined",), multi_layers=(), controls=(), baselines=(),
                    val_images=None, test_images=4)


@pytest.fixture
def topk_drop_registered():
    register_metric(TOP_K_DROP)
    try:
        yield TOP_K_DROP
    finally:
        unregister_metric(TOP_K_DROP.name)


def expected_drop(model: nn.Module, image: Tensor, attribution: np.ndarray, target: int, k: int) -> float:
    """The metric written out for one image: its ``k`` highest-attribution 8×8 patches zeroed one at a time."""
    gw, flat = attribution.shape[1], attribution.reshape(-1)
    perturbed = image.clone()
    for p in sorted(range(len(flat)), key=lambda p: -flat[p])[:k]:
        r, c = divmod(p, gw)
        perturbed[:, 8 * r:8 * (r + 1), 8 * c:8 * (c + 1)] = 0.0
    with torch.no_grad():
        return float(model(image[None])[0, target] - model(perturbed[None])[0, target])


def test_a_metric_setting_is_declared_once_in_its_spec(topk_drop_registered):
    config = RunConfig.from_dict({"evaluation": {"metrics": {"saco_groups": 4, "settings": {"topk_drop": {"k": 5}}}}})
    assert config.evaluation.metrics.settings_of("topk_drop") == {"k": 5}
    assert MetricConfig().settings_of("topk_drop") == {"k": 3}  # the declared default
    paper = MetricConfig(preset="paper", settings={"topk_drop": {"k": 5}})
    assert paper.resolved(16).settings_of("topk_drop") == {"k": 5}  # presets keep a metric's own settings
    # a setting at its default leaves the fingerprint as before the metric existed: the run folder resumes
    assert MetricConfig(settings={"topk_drop": {"k": 3}}).fingerprint() == MetricConfig().fingerprint()
    assert config.evaluation.fingerprint()["metrics"]["settings"] == {"topk_drop": {"k": 5}}
    with pytest.raises(ValueError, match=r"settings.topk_drop: unknown settings \['kk'\]; expected some of \['k'\]"):
        MetricConfig(settings={"topk_drop": {"kk": 5}})
    with pytest.raises(ValueError, match=r"settings for 'saco'; expected registered metrics with settings: \["):
        MetricConfig(settings={"saco": {"k": 5}})


def test_a_metric_with_a_setting_is_one_spec(tmp_path, topk_drop_registered):
    model, data, saes = tiny_setup(6)
    config = replace(CFG, gallery=4, metrics=replace(CFG.metrics, settings={"topk_drop": {"k": 5}}))
    run_dir = run_study(model, data, data, saes, tmp_path / "run", PROTOCOL, config)
    images = data.tensors[0]
    with ResultStore(run_dir) as store:
        for spec in store.experiment_methods(TEST, "test"):
            columns = store.scores("test", spec.key)
            expected = [expected_drop(model, images[i], store.attribution("test", spec.key, i), t, k=5)
                        for i, t in zip(columns["image_id"].tolist(), columns["target"].tolist())]
            np.testing.assert_allclose(columns["topk_drop"], expected, rtol=1e-5, atol=1e-5)


def test_a_run_resumes_after_a_metric_with_a_setting_is_added(tmp_path):
    model, data, saes = tiny_setup(6)
    run_study(model, data, data, saes, tmp_path / "run", PROTOCOL, CFG)

    def stored() -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
        with ResultStore(tmp_path / "run") as store:
            scores = {spec.key: store.scores("test", spec.key) for spec in store.experiment_methods(TEST, "test")}
            counts = dict(store._conn.execute("SELECT metric, COUNT(*) FROM scores GROUP BY metric").fetchall())
        return scores, counts

    before, counts_before = stored()
    register_metric(TOP_K_DROP)
    try:  # the setting at its default, given or not: the run's fingerprint is unchanged, so it resumes
        config = replace(CFG, metrics=replace(CFG.metrics, settings={"topk_drop": {"k": 3}}))
        run_study(model, data, data, saes, tmp_path / "run", PROTOCOL, config)
        after, counts_after = stored()
    finally:
        unregister_metric(TOP_K_DROP.name)
    assert counts_after == {**counts_before, "topk_drop": counts_before["saco"]}  # only the new metric was added
    for key, columns in after.items():
        assert np.isfinite(columns["topk_drop"]).all()
        for metric in ("saco", "fc", "pf_auc"):
            np.testing.assert_array_equal(columns[metric], before[key][metric])


class ScaledInputViT(VisionTransformer):
    """A wrapper ViT class: a timm ViT that doubles its input first."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(2 * x)


class ScaledInputViTAdapter(TimmViTAdapter):
    """Its adapter: timm's (same blocks and tokens), registered for the class."""


def test_an_adapter_is_one_registry_entry():
    torch.manual_seed(0)
    vit = ScaledInputViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3).eval()
    model = nn.Sequential(nn.Identity(), vit)
    ADAPTERS.add("scaled_input_vit", AdapterEntry(ScaledInputViT, ScaledInputViTAdapter))
    try:
        adapter = get_adapter(model)
        assert type(adapter) is ScaledInputViTAdapter and adapter.vit is vit and adapter.model is model
        assert supported().endswith(" ScaledInputViT")
        maps = TransMM(model).attribute(torch.randn(2, 3, 32, 32), target=[0, 1], return_patches=True)
        assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all()
    finally:
        ADAPTERS.remove("scaled_input_vit")
    assert type(get_adapter(model)) is TimmViTAdapter  # a subclass of a registered class: its adapter


def test_a_duplicate_registration_is_refused():
    saco = metric_spec("saco")
    with pytest.raises(ValueError, match="metric 'saco' is already registered"):
        register_metric(MetricSpec("saco", "SaCo", True, top_k_drop))
    assert metric_spec("saco") is saco
    with pytest.raises(ValueError, match="ViT adapter 'timm' is already registered"):
        ADAPTERS.add("timm", AdapterEntry(ScaledInputViT, ScaledInputViTAdapter))
    assert ADAPTERS["timm"].adapter is TimmViTAdapter
