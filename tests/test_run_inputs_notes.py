"""What a run says about its inputs (the model's number of classes and its source, the statistics folder images
are normalised with) and grayscale models (``in_chans=1``) on grayscale image folders."""
from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.config import DataConfig, ModelConfig, RunConfig
from captum_fgattr.bench.resolve import RandomWeightsWarning, load_inputs, load_model, normalisation_note
from captum_fgattr.bench.store import ResultStore

MODEL = {"name": "test_vit", "img_size": 32}
GREY = {**MODEL, "kwargs": {"in_chans": 1}}


@pytest.fixture(scope="module")
def grey_folders(tmp_path_factory):
    """``root/{val,test}/{a,b}/{0,1}.png``: grayscale 40 × 36 images (class b brighter) and one RGB image."""
    root = tmp_path_factory.mktemp("grey")
    for split in ("val", "test"):
        for c, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            Image.new("L", (40, 36), 60 + 150 * c).save(root / split / name / "0.png")
            Image.new("RGB", (40, 36), (60 + 150 * c, 30, 90)).save(root / split / name / "1.png")
    return root


def _config(folders, model: dict, **data) -> RunConfig:
    return RunConfig(model=ModelConfig(**model),
                     data=DataConfig(val=str(folders / "val"), test=str(folders / "test"), **data))


@pytest.mark.usefixtures("one_torch_thread")
def test_the_number_of_classes_is_printed_with_its_source(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = load_model(ModelConfig(**MODEL), class_names=["a", "b", "c"])
        assert model.num_classes == 3  # random weights, no --num-classes: the data's class folders
        assert "model: 3 classes, from the data's class folders" in capsys.readouterr().err
        load_model(ModelConfig(**MODEL, num_classes=4), class_names=["a", "b"])
        assert "model: 4 classes, as set (--num-classes / model.num_classes)" in capsys.readouterr().err
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert load_model(ModelConfig(**MODEL, checkpoint=str(tmp_path / "w.pt")), class_names=["a", "b"]).num_classes == 3
    assert f"model: 3 classes, from the checkpoint's head (the rows of head.weight in {tmp_path / 'w.pt'})" in \
        capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_a_grayscale_model_reads_grayscale_images_with_averaged_statistics(grey_folders, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model, data = load_inputs(_config(grey_folders, GREY), "val")
        rgb_model, rgb_data = load_inputs(_config(grey_folders, MODEL), "val")
    image, _ = data[0]
    assert image.shape == (1, 32, 32) and rgb_data[0][0].shape == (3, 32, 32)
    assert model(torch.stack([data[i][0] for i in range(len(data))])).shape == (4, 2)
    rgb_mean = rgb_model.pretrained_cfg["mean"]
    assert data.transform.transforms[-1].mean == pytest.approx((sum(rgb_mean) / 3,))
    err = capsys.readouterr().err
    assert "averaged over RGB for its grayscale input" in err and "--mean / --std" in err


def test_the_normalisation_note_names_the_statistics_and_the_flags_and_only_when_they_are_defaulted():
    from captum_fgattr.bench.data import Preprocess

    pre = Preprocess(img_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    note = normalisation_note(DataConfig(val="v", test="t"), pre)
    assert note.startswith("normalisation: mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225);")
    assert "mean and std the model's defaults (no --mean / --std)" in note and "data.mean / data.std" in note
    assert "std the model's defaults (no --std)" in normalisation_note(DataConfig(val="v", test="t", mean=[0.5]), pre)
    assert normalisation_note(DataConfig(val="v", test="t", mean=[0.5], std=[0.2]), pre) is None
    assert normalisation_note(DataConfig(kind="covid-qu-ex", root="r"), pre) is None  # the layout's own statistics


@pytest.mark.parametrize("model, data, message", [
    ({**MODEL, "kwargs": {"in_chans": 2}}, {}, "the model takes 2-channel images, but images are read as grayscale"),
    (GREY, {"mean": [0.5, 0.5, 0.5], "std": [0.25]},
     r"--mean=\[0.5, 0.5, 0.5\]; expected one number: the images are grayscale"),
])
def test_channels_the_images_cannot_have_are_one_line_errors(grey_folders, model, data, message):
    with warnings.catch_warnings(), pytest.raises(ValueError, match=message):
        warnings.simplefilter("ignore", RandomWeightsWarning)
        load_inputs(_config(grey_folders, model, **data), "val")


@pytest.mark.usefixtures("one_torch_thread")
def test_fgattr_evaluate_runs_a_grayscale_model_on_grayscale_folders(grey_folders, tmp_path, capsys):
    methods = '[{"name": "random"}, {"name": "gradcam"}, {"name": "integrated_gradients", "params": {"n_steps": 2}}]'
    code = main(["evaluate", "--model", "test_vit", "--img-size", "32", "--model-kwargs", '{"in_chans": 1}',
                 "--val-data", str(grey_folders / "val"), "--test-data", str(grey_folders / "test"),
                 "--mean", "0.4", "--std", "0.3", "--saco-groups", "2", "--fc-subset-size", "2", "--fc-runs", "2",
                 "--methods", methods, "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "model: 2 classes, from the data's class folders" in err and "normalisation:" not in err
    with ResultStore(tmp_path / "run") as store:
        labels = [spec.label for spec in store.experiment_methods("test", "test")]
    assert sorted(labels) == ["TransMM", "gradcam", "integrated_gradients(n_steps=2)", "random"]
