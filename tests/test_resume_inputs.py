"""Results are the results of these inputs: labels never shift between separate split folders, and a run folder
resumes only with the checkpoint and SAE contents its results were computed from (sha256, cached)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_fgattr import files
from captum_fgattr.bench.default.assets import shipped_info
from captum_fgattr.bench.config import DataConfig, RunConfig
from captum_fgattr.bench.resolve import input_digests, load_inputs, load_split
from captum_fgattr.bench.store import STORE_NAME, ResultStore
from captum_fgattr.bench.study import HASH_CACHE, record_config, run_configured_study
from captum_fgattr.sae import SAEConfig, SparseAutoencoder, save_sae

#: the tiny random-init timm ViT of these runs: 192 wide, 3 blocks, 32 px -> 4 patches
MODEL = {"name": "timm:vit_tiny_patch16_224", "num_classes": 2, "img_size": 32, "kwargs": {"depth": 3}}
SAE_LAYERS = (0, 1)


def write_images(folder: Path, classes: dict[str, int], seed: int = 0) -> None:
    """``folder/<class>/<i>.png`` (32 x 32 noise), ``classes[name]`` images per class (0: an empty folder)."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")


def save_checkpoint(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, depth=3)
    save_file(model.state_dict(), str(path))


def save_saes(folder: Path, seed: int) -> None:
    """Random-init top-k SAEs of :data:`SAE_LAYERS` (192 -> 384 features) in ``folder/layer_<L>/``."""
    for layer in SAE_LAYERS:
        sae = SparseAutoencoder(SAEConfig(d_in=192, n_features=384, k=8, hook_layer=layer), seed=seed + layer)
        save_sae(sae, folder / f"layer_{layer}")


def run_config(root: Path, run_dir: Path, saes: Path, checkpoint: Path | None = None) -> RunConfig:
    return RunConfig.from_dict({
        "run_dir": str(run_dir),
        "model": {**MODEL, "checkpoint": str(checkpoint or root / "vit.safetensors")},
        "data": {"val": str(root / "val"), "test": str(root / "test")},
        "saes": str(saes),
        "protocol": {"layers": [1], "variants": ["combined"], "multi_layers": [[0, 1]], "kappas": [0.5],
                     "c_maxes": [10.0], "baselines": ["random"], "controls": ["permuted_gates"], "val_images": None},
        "evaluation": {"batch_size": 4, "progress": False, "gallery": 1,
                       "metrics": {"saco_groups": 2, "fc_subset_size": 2, "fc_runs": 4}},
    })


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (``root/run``) over images, a checkpoint and two different SAE folders (``saes_a``
    used, ``saes_b`` another random init of the same shapes)."""
    root = tmp_path_factory.mktemp("resume")
    write_images(root / "val", {"cat": 2, "dog": 2})
    write_images(root / "test", {"cat": 2, "dog": 2}, seed=1)
    save_checkpoint(root / "vit.safetensors", seed=0)
    save_saes(root / "saes_a", seed=0)
    save_saes(root / "saes_b", seed=100)
    torch.set_num_threads(1)
    run_configured_study(run_config(root, root / "run", root / "saes_a"))
    return root


def score_rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / STORE_NAME) as conn:
        return conn.execute("SELECT * FROM scores ORDER BY split, method_key, image_id, metric").fetchall()


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    return run


# -- labels with separate split folders ------------------------------------------------------------


def test_test_split_missing_a_class_is_refused_naming_both_folders(tmp_path):
    write_images(tmp_path / "val", {"a": 1, "b": 1, "c": 1})
    write_images(tmp_path / "test", {"b": 1, "c": 1})  # before: b stored as label 0
    data = DataConfig(val=str(tmp_path / "val"), test=str(tmp_path / "test"))
    for split in ("val", "test"):
        with pytest.raises(ValueError) as err:
            load_split(data, split)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"class folders differ between splits {str(tmp_path / 'val')!r} and "
                                  f"{str(tmp_path / 'test')!r}: only in the first ['a'], only in the second []")


def test_an_empty_class_folder_keeps_the_label_indices(tmp_path):
    write_images(tmp_path / "val", {"a": 1, "b": 1, "c": 1})
    write_images(tmp_path / "test", {"a": 0, "b": 2, "c": 1})  # no test image of class a
    test = load_split(DataConfig(val=str(tmp_path / "val"), test=str(tmp_path / "test")), "test")
    assert test.classes == ["a", "b", "c"]
    assert [(Path(path).parent.name, label) for path, label in test.samples] == [("b", 1), ("b", 1), ("c", 2)]


def test_an_extra_empty_class_folder_beyond_the_models_classes_is_refused(tmp_path):
    for split in ("val", "test"):  # the same 4 class folders in both splits, one of them empty
        write_images(tmp_path / split, {"a": 1, "b": 1, "c": 1, "d": 0})
    config = RunConfig.from_dict({"model": {**MODEL, "num_classes": 3},
                                  "data": {"val": str(tmp_path / "val"), "test": str(tmp_path / "test")},
                                  "evaluation": {"target": "prediction", "progress": False}})
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"), pytest.raises(ValueError) as err:
        load_inputs(config, "test")
    assert "\n" not in str(err.value)
    assert (f"test data {str(tmp_path / 'test')!r} has 4 class folders ['a', 'b', 'c', 'd'] (empty ones count"
            in str(err.value))
    assert "but the model has 3 outputs" in str(err.value)


# -- content fingerprints on resume --------------------------------------------------------------


def test_a_finished_folder_resumes_with_the_same_inputs(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = score_rows(run)
    run_configured_study(run_config(finished, run, finished / "saes_a"))
    assert score_rows(run) == before and len(before) > 0
    with ResultStore(run) as store:
        stored = dict(store._conn.execute("SELECT key, value FROM meta WHERE key LIKE 'content.%'").fetchall())
    expected_sae = {layer: hashlib.sha256("".join(
        f"{name} {hashlib.sha256((finished / 'saes_a' / f'layer_{layer}' / name).read_bytes()).hexdigest()}\n"
        for name in ("config.json", "sae.safetensors")).encode()).hexdigest() for layer in SAE_LAYERS}
    assert {key: json.loads(value)["sha256"] for key, value in stored.items()} == {
        "content.checkpoint": hashlib.sha256((finished / "vit.safetensors").read_bytes()).hexdigest(),
        **{f"content.sae.layer_{layer}": digest for layer, digest in expected_sae.items()}}


def test_other_saes_on_resume_are_refused_and_nothing_is_reused(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = score_rows(run)
    with pytest.raises(ValueError) as err:
        run_configured_study(run_config(finished, run, finished / "saes_b"))
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"the SAE of layer 0 ({finished / 'saes_b' / 'layer_0'}) changed since the "
                                     f"results in {run} were computed (sha256 ")
    assert str(err.value).endswith("then); use a new --run-dir")
    assert score_rows(run) == before
    assert json.loads((run / "config.json").read_text())["saes"] == str(finished / "saes_a")  # not rewritten


def test_a_checkpoint_overwritten_at_the_same_path_is_refused(tmp_path):
    root = tmp_path
    write_images(root / "val", {"cat": 1, "dog": 1})
    write_images(root / "test", {"cat": 1, "dog": 1})
    save_saes(root / "saes", seed=0)
    save_checkpoint(root / "w.safetensors", seed=0)
    config = run_config(root, root / "run", root / "saes", checkpoint=root / "w.safetensors")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, depth=3)
    with ResultStore(config.run_dir) as store:
        record_config(store, config, ("val", "test"), model)
        record_config(store, config, ("val", "test"), model)  # unchanged: resumes
        old = hashlib.sha256((root / "w.safetensors").read_bytes()).hexdigest()
        save_checkpoint(root / "w.safetensors", seed=1)
        new = hashlib.sha256((root / "w.safetensors").read_bytes()).hexdigest()
        with pytest.raises(ValueError) as err:
            record_config(store, config, ("val", "test"), model)
    assert str(err.value) == (f"the checkpoint {root / 'w.safetensors'} changed since the results in {root / 'run'} "
                              f"were computed (sha256 {new[:12]}... now vs {old[:12]}... then); use a new --run-dir")


def test_a_folder_with_results_but_no_recorded_contents_resumes_and_records_them(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    with sqlite3.connect(run / STORE_NAME) as conn:  # as for inputs new to the folder (e.g. the SAE of a new layer)
        conn.execute("DELETE FROM meta WHERE key LIKE 'content.%'")
    (run / HASH_CACHE).unlink()
    before = score_rows(run)
    run_configured_study(run_config(finished, run, finished / "saes_a"))
    assert score_rows(run) == before
    with pytest.raises(ValueError, match="the SAE of layer 0 .* changed since the results"):  # recorded now
        run_configured_study(run_config(finished, run, finished / "saes_b"))


def test_digests_are_cached_by_size_mtime_and_inode(finished, tmp_path, monkeypatch):
    hashed = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    shutil.copy(finished / "vit.safetensors", tmp_path / "w.safetensors")
    config = run_config(finished, tmp_path / "run", finished / "saes_a", checkpoint=tmp_path / "w.safetensors")
    cache = tmp_path / HASH_CACHE
    first = input_digests(config, cache)
    assert sorted(hashed) == ["config.json", "config.json", "sae.safetensors", "sae.safetensors", "w.safetensors"]
    hashed.clear()
    assert input_digests(config, cache) == first and hashed == []  # a second open reads no file
    save_checkpoint(tmp_path / "w.safetensors", seed=1)  # rewritten in place: other bytes, other mtime
    second = input_digests(config, cache)
    assert hashed == ["w.safetensors"]
    assert second["content.checkpoint"][1] == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert {k: v for k, v in second.items() if k != "content.checkpoint"} == {
        k: v for k, v in first.items() if k != "content.checkpoint"}


def test_shipped_inputs_use_their_recorded_digests_and_random_weights_have_none(monkeypatch):
    monkeypatch.setattr(files, "sha256_file", lambda path: pytest.fail(f"hashed {path}"))
    info = shipped_info()
    shipped = input_digests(RunConfig.from_dict({"model": {"name": "fgattr:br35h-vit"}, "saes": "shipped"}))
    assert shipped == {"content.checkpoint": ("the shipped fgattr:br35h-vit weights", info["model"]["weights_sha256"]),
                       **{f"content.sae.layer_{layer}": (f"the shipped SAE of layer {layer}", entry["weights_sha256"])
                          for layer, entry in info["saes"].items()}}
    assert input_digests(RunConfig.from_dict({"model": MODEL})) == {}  # fingerprinted by its seed in "model"
