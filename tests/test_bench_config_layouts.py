"""The benchmark CLI on the study's dataset layouts (COVID-QU-Ex, HyperKvasir, ImageNet) and CLIP zero-shot:
flags and config-file keys, the resolved configuration stored with a run, and clear errors."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from captum_fgattr.bench.cli.main import build_parser, main
from captum_fgattr.bench.cli.run import resolve_config
from captum_fgattr.bench.data.layouts import CLIP_MEAN, CLIP_STD, Preprocess
from captum_fgattr.bench.config import DataConfig, ModelConfig, RunConfig
from captum_fgattr.bench.resolve import load_inputs, load_model, load_split, preprocessing
from captum_fgattr.clip import CLIPZeroShotClassifier
from captum_fgattr.sae import save_sae
from tests.test_bench_data_models import make_covid, make_kvasir, save_images
from tests.test_fg_transmm import make_sae

MODEL = ["--model", "timm:test_vit", "--num-classes", "3", "--img-size", "64"]  # random weights, 16 patches
TINY = ["--layers", "1", "--variants", "combined", "--multi-layers", "--baselines", "random", "--batch-size", "4",
        "--controls", "shuffled_decoder", "--shuffle-seeds", "0",
        "--saco-groups", "4", "--fc-runs", "4", "--fc-subset-size", "4", "--gallery", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saes(tmp_path_factory) -> Path:
    """A random SAE for block 1 of timm's test_vit (width 64), as ``fgattr train-sae`` lays it out."""
    folder = tmp_path_factory.mktemp("saes")
    save_sae(make_sae(64, seed=1), folder / "layer_1")
    return folder


def results(run: Path, split: str) -> list[tuple[str, str]]:
    with sqlite3.connect(run / "results.sqlite") as conn:
        return conn.execute("SELECT method_key, image_name FROM results WHERE split = ? ORDER BY method_key, image_id",
                            (split,)).fetchall()


def stored_config(run: Path) -> dict:
    with sqlite3.connect(run / "results.sqlite") as conn:
        return json.loads(conn.execute("SELECT config FROM invocations ORDER BY id DESC").fetchone()[0])


def test_covid_layout_sweep_and_evaluate_from_flags(tmp_path, saes, capsys):
    make_covid(tmp_path / "COVID-QU-Ex" / "Lung Segmentation Data" / "Lung Segmentation Data")  # val 9, test 6 images
    run = tmp_path / "run"
    flags = [*MODEL, "--data-kind", "covid-qu-ex", "--data-root", str(tmp_path / "COVID-QU-Ex"), "--saes", str(saes),
             "--run-dir", str(run), *TINY, "--val-images", "3", "--test-images", "2", "--subset", "4"]
    assert main(["sweep", *flags]) == 0
    assert main(["evaluate", *flags]) == 0
    val, test = results(run, "val"), results(run, "test")
    assert len(val) == 2 * 3 and {name.split("/")[2] for _, name in val} == {"Val"}
    assert len(test) == 4 * 2 and {name.split("/")[2] for _, name in test} == {"Test"}  # TransMM, FG, shuffled, random
    for config in (json.loads((run / "config.json").read_text()), stored_config(run)):
        assert config["data"] == {"kind": "covid-qu-ex", "root": str(tmp_path / "COVID-QU-Ex"), "val": None,
                                  "test": None, "subset": 4, "seed": 42, "class_names": None, "resize": None,
                                  "mean": None, "std": None}
        assert config["model"]["name"] == "timm:test_vit"
    # the thesis's COVID-QU-Ex preprocessing (resize 256 -> crop 224), scaled to the 64-pixel model
    model, data = load_inputs(RunConfig.from_dict(json.loads((run / "config.json").read_text())), "test")
    assert preprocessing(DataConfig(kind="covid-qu-ex", root="x"), model) == Preprocess(
        img_size=(64, 64), resize=73, mean=0.56, std=0.21, interpolation="bilinear")
    assert len(data) == 4 and data[0][0].shape == (3, 64, 64)
    assert main(["evaluate", *flags[:-1], "3"]) == 2  # another test subset in the same run folder
    assert "different settings for ['subset']" in capsys.readouterr().err


def test_hyperkvasir_layout_run_from_config_file(tmp_path, saes):
    make_kvasir(tmp_path / "hyper-kvasir", counts=(10,) * 6)  # seeded 80/10/10: val 6, test 6 images
    config = {
        "model": {"name": "test_vit", "num_classes": 6, "img_size": 64},  # a plain timm name: today's form
        "data": {"kind": "hyperkvasir", "root": str(tmp_path / "hyper-kvasir"), "seed": 7},
        "saes": str(saes),
        "protocol": {"layers": [1], "variants": ["combined"], "multi_layers": [], "baselines": ["random"],
                     "controls": ["shuffled_decoder"], "shuffle_seeds": [0], "val_images": 3, "test_images": 2},
        "evaluation": {"batch_size": 4, "progress": False, "gallery": 1,
                       "metrics": {"saco_groups": 4, "fc_runs": 4, "fc_subset_size": 4}},
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    args = ["--config", str(tmp_path / "run.json"), "--run-dir", str(run)]
    assert main(["run", *args]) == 0  # sweep, evaluate, report
    val, test = results(run, "val"), results(run, "test")
    assert len(val) == 2 * 3 and len(test) == 4 * 2 and (run / "report" / "test.md").is_file()
    assert not {name for _, name in val} & {name for _, name in test}  # the seeded split is disjoint
    resolved = resolve_config(build_parser().parse_args(["sweep", *args]))
    splits = {split: load_split(resolved.data, split).ids for split in ("val", "test")}
    assert {name for _, name in val} <= set(splits["val"]) and {name for _, name in test} <= set(splits["test"])
    assert stored_config(run)["data"]["seed"] == 7 and stored_config(run)["data"]["kind"] == "hyperkvasir"


def test_clip_config_file_takes_class_names_from_the_dataset(tmp_path):
    for i, synset in enumerate(("n01440764", "n01443537")):
        save_images(tmp_path / "imagenet" / "val" / synset, 3 + i, ext="JPEG", mode="RGB", size=(40, 30))
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius\n")
    (tmp_path / "clip.yaml").write_text(
        f"model: {{name: 'clip:ViT-B-32'}}\n"  # no checkpoint: random weights
        f"data: {{kind: imagenet, root: '{tmp_path / 'imagenet'}', subset: 3, "
        f"class_names: '{tmp_path / 'LOC_synset_mapping.txt'}'}}\n")
    config = resolve_config(build_parser().parse_args(["evaluate", "--config", str(tmp_path / "clip.yaml")]))
    model, test = load_inputs(config, "test")
    assert isinstance(model, CLIPZeroShotClassifier) and model.class_names == ["tench", "goldfish"]
    val = load_split(config.data, "val")  # ImageNet: validation = the val/ images outside the test subset
    assert len(test) == 3 and len(val) == 4 and not set(val.ids) & set(test.ids)
    assert preprocessing(config.data, model) == Preprocess((224, 224), resize=224, mean=CLIP_MEAN, std=CLIP_STD)
    with torch.no_grad():
        assert model(test[0][0][None]).shape == (1, 2)
    assert config.to_dict()["data"]["class_names"] == str(tmp_path / "LOC_synset_mapping.txt")
    assert config.data.fingerprint("val") == {"root": str(tmp_path / "imagenet"), "resize": None, "mean": None,
                                              "std": None, "kind": "imagenet", "split": "val", "subset": 3,
                                              "class_names": str(tmp_path / "LOC_synset_mapping.txt")}
    with pytest.raises(ValueError, match="CLIP zero-shot needs class_names"):
        load_model(config.model)
    with pytest.raises(ValueError, match=r"no validation images: the test subset \(7\) takes all 7"):
        load_split(DataConfig(kind="imagenet", root=str(tmp_path / "imagenet"), subset=7), "val")
    with pytest.raises(ValueError, match=r"subset=10000; expected an int in 1..7"):  # the study's default subset
        load_split(DataConfig(kind="imagenet", root=str(tmp_path / "imagenet")), "test")


def test_configuration_errors_name_the_problem(tmp_path, capsys):
    def error(*argv: str) -> str:
        assert main(["sweep", *argv, "--run-dir", str(tmp_path / "run"), *MODEL]) == 2
        return capsys.readouterr().err

    (tmp_path / "kind.json").write_text(json.dumps({"data": {"kind": "kvasir", "root": "x"}}))
    assert ("data.kind='kvasir'; expected one of ['br35h', 'covid-qu-ex', 'folder', 'hyperkvasir', 'imagenet']"
            in error("--config", str(tmp_path / "kind.json")))
    (tmp_path / "key.json").write_text(json.dumps({"data": {"kind": "imagenet", "roots": "x"}}))
    assert "unknown keys ['roots'] in configuration section 'data'" in error("--config", str(tmp_path / "key.json"))
    with pytest.raises(SystemExit):
        main(["sweep", "--data-kind", "kvasir"])
    assert "invalid choice: 'kvasir'" in capsys.readouterr().err
    assert "data.kind='covid-qu-ex' needs data.root" in error("--data-kind", "covid-qu-ex")
    assert "does not exist" in error("--data-kind", "covid-qu-ex", "--data-root", str(tmp_path / "missing"))
    assert "no val data: set data.val" in error()
    save_images(tmp_path / "images" / "a", 2)
    same = ["--val-data", str(tmp_path / "images"), "--test-data", str(tmp_path / "images")]
    assert "data.val and data.test name the same images" in error(*same)
    assert "data.subset=0; expected None" in error("--subset", "0")
    with pytest.raises(ValueError, match=r"model spec 'vit:b16'"):
        load_model(ModelConfig(name="vit:b16"))


def test_folder_kind_keeps_todays_behaviour(tmp_path):
    """Plain timm names, val / test folders, the model's normalisation, and the pre-layout fingerprint."""
    data = DataConfig(val="v", test="t", resize=80, mean=(0.5,), std=(0.2,))
    assert data.fingerprint("test") == {"root": "t", "resize": 80, "mean": (0.5,), "std": (0.2,)}
    assert data.location("val") == ("v", None) and DataConfig(root="r").location("test") == ("r", "test")
    model = load_model(ModelConfig(name="test_vit", img_size=64, num_classes=3))
    assert preprocessing(DataConfig(), model) == Preprocess(img_size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert preprocessing(data, model) == Preprocess(img_size=(64, 64), resize=80, mean=0.5, std=0.2)
