"""Bad run descriptions through the real ``fgattr`` entry point (issue 21, "one-line errors, not tracebacks"): every
wrong value of a configuration file or flag is refused by the one typed validation layer (the dataclasses of
:mod:`captum_fgattr.bench.config`) with exactly one ``fgattr <command>: error: <what>`` line and exit code 2, before
any model is built, any image read or anything written to the run folder; and metric settings the model's patch
count cannot take are refused before the run folder records them, so the corrected rerun in the same folder runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.config import EvalConfig, MetricConfig, Protocol, RunConfig
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import run_study
from conftest import make_vit, write_split_folders


def yaml_file(text: str) -> tuple[str, str]:
    """A row's configuration file: YAML ``text``."""
    return "config.yaml", text


def json_file(text: str) -> tuple[str, str]:
    """A row's configuration file: JSON ``text``."""
    return "config.json", text


#: (id, command, (configuration file name, text) or None, flags, the error after "fgattr <command>: error: ";
#: {file} stands for the configuration file's path)
ROWS = [
    ("yaml-syntax", "run", yaml_file("model:\n  name: [a\n"), [],
     "configuration file {file} is not valid YAML (line 3, column 1): expected ',' or ']', but got '<stream end>'"),
    ("yaml-python-tag", "run", yaml_file('model: !!python/object/apply:os.system ["touch marker"]\n'), [],
     "configuration file {file} is not valid YAML (line 1, column 8): could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system' (only plain values are read: remove the tag)"),
    ("yaml-unknown-tag", "run", yaml_file("saes: !secret x\n"), [],
     "configuration file {file} is not valid YAML (line 1, column 7): could not determine a constructor for the tag "
     "'!secret' (only plain values are read: remove the tag)"),
    ("json-syntax", "run", json_file('{"model": \n'), [],
     "configuration file {file} is not valid JSON: Expecting value: line 2 column 1 (char 11)"),
    ("evaluation-list", "run", yaml_file("evaluation: [1, 2]\n"), [], "evaluation=[1, 2]; expected a mapping of settings"),
    ("model-scalar", "run", yaml_file("model: test_vit\n"), [], "model='test_vit'; expected a mapping of settings"),
    ("model-kwargs-list", "run", yaml_file("model: {kwargs: [1]}\n"), [],
     "model.kwargs=[1]; expected a mapping of strings to values"),
    ("layers-scalar", "run", yaml_file("protocol: {layers: 1}\n"), [], "protocol.layers=1; expected a list of ints"),
    ("layers-null", "run", yaml_file("protocol: {layers: null}\n"), [], "protocol.layers=None; expected a list of ints"),
    ("kappas-scalar", "run", yaml_file("protocol: {kappas: 0.5}\n"), [], "protocol.kappas=0.5; expected a list of numbers"),
    ("shuffle-seeds-scalar", "run", yaml_file("protocol: {shuffle_seeds: 3}\n"), [],
     "protocol.shuffle_seeds=3; expected a list of ints"),
    ("multi-layers-flat", "run", yaml_file("protocol: {multi_layers: [1, 2]}\n"), [],
     "protocol.multi_layers=[1, 2]; expected a list of lists of ints"),
    ("metrics-seed-string", "run", yaml_file("evaluation: {metrics: {seed: a}}\n"), [],
     "evaluation.metrics.seed='a'; expected an int"),
    ("num-classes-string", "run", yaml_file('model: {num_classes: "3"}\n'), [], "model.num_classes='3'; expected an int or null"),
    ("img-size-string", "run", yaml_file('model: {img_size: "32"}\n'), [], "model.img_size='32'; expected an int or null"),
    ("autocast-string", "run", yaml_file('evaluation: {autocast: "no"}\n'), [], "evaluation.autocast='no'; expected true or false"),
    ("kappa-string", "run", yaml_file('protocol: {kappa: "0.5"}\n'), [], "protocol.kappa='0.5'; expected a number"),
    ("progress-string", "run", yaml_file('evaluation: {progress: "false"}\n'), [],
     "evaluation.progress='false'; expected true or false"),
    ("batch-size-bool", "run", yaml_file("evaluation: {batch_size: true}\n"), [], "evaluation.batch_size=True; expected an int"),
    ("val-images-float", "run", yaml_file("protocol: {val_images: 2.5}\n"), [],
     "protocol.val_images=2.5; expected an int or null"),
    ("model-name-list", "run", yaml_file("model: {name: [test_vit]}\n"), [], "model.name=['test_vit']; expected a string"),
    ("checkpoint-number", "run", yaml_file("model: {checkpoint: 1}\n"), [], "model.checkpoint=1; expected a string or null"),
    ("data-val-list", "run", yaml_file("data: {val: [a, b]}\n"), [], "data.val=['a', 'b']; expected a string or null"),
    ("saes-number", "run", yaml_file("saes: 3\n"), [], "saes=3; expected a string, a mapping of strings to strings or null"),
    ("run-dir-number", "run", yaml_file("run_dir: 5\n"), [], "run_dir=5; expected a string"),
    ("cache-dir-list", "run", yaml_file("cache_dir: [x]\n"), [], "cache_dir=['x']; expected a string or null"),
    ("unknown-key", "sweep", yaml_file("protocol: {layer: [1]}\n"), [],
     "unknown keys ['layer'] in configuration section 'protocol'; expected some of ['baselines', 'black_input', "
     "'c_max', 'c_maxes', 'controls', 'equivalence_fraction', 'equivalence_margins', 'gate_mad_eps', 'kappa', "
     "'kappas', 'layers', 'method_variant', 'multi_layers', 'permute_seeds', 'replicate_controls', 'shuffle_seeds', "
     "'subset_seed', 'test_images', 'val_images', 'validity_images', 'variants']"),
    ("equivalence-margin", "sweep", yaml_file("protocol: {equivalence_margins: {saco: -0.1}}\n"), [],
     "equivalence_margins {'saco': -0.1}; expected numbers > 0 (in the metric's units)"),
    ("equivalence-fraction", "sweep", yaml_file("protocol: {equivalence_fraction: 0}\n"), [],
     "equivalence_fraction=0.0; expected a number > 0"),
    ("permute-seeds-repeat", "sweep", yaml_file("protocol: {permute_seeds: [1, 1]}\n"), [],
     "permute_seeds=[1, 1] repeats a seed"),
    ("gate-scale", "sweep", yaml_file("protocol: {gate_mad_eps: bogus}\n"), [],
     "gate_mad_eps='bogus'; expected null (the metric preset's) or one of ['after_scale', 'in_mad']"),
    ("flag-model-kwargs-list", "run", None, ["--model-kwargs", "[1]"],
     "model.kwargs=[1]; expected a mapping of strings to values"),
    ("flag-model-kwargs-not-json", "evaluate", None, ["--model-kwargs", "{depth: 2}"],
     "argument --model-kwargs: '{depth: 2}' is not JSON (Expecting property name enclosed in double quotes: line 1 "
     "column 2 (char 1)) (see fgattr evaluate --help)"),
    ("flag-baselines-fg", "run", None, ["--baselines", "fg"],
     "baselines=['fg']; expected names from ['attnlrp', 'gradcam', 'integrated_gradients', 'random', 'raw_attention', "
     "'rollout', 'saliency'] (TransMM and FG are evaluated by the protocol itself)"),
    ("flag-device-gpu", "sweep", None, ["--device", "gpu"],
     "evaluation.device='gpu'; expected cpu, cuda, cuda:N (N = GPU index) or mps"),
    ("flag-layers-word", "run", None, ["--layers", "two"],
     "argument --layers: invalid int value: 'two' (see fgattr run --help)"),
    ("flag-multi-layers-word", "run", None, ["--multi-layers", "1,b"],
     "argument --multi-layers: '1,b'; expected comma-separated block indices, e.g. 2,3,4 (see fgattr run --help)"),
    ("train-sae-model-kwargs-list", "train-sae", None, ["--model-kwargs", "[1]"],
     "model.kwargs=[1]; expected a mapping of strings to values"),
    ("train-sae-config-tag", "train-sae", yaml_file("model: !!python/name:os.system\n"), [],
     "configuration file {file} is not valid YAML (line 1, column 8): could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/name:os.system' (only plain values are read: remove the tag)"),
    ("train-sae-device-gpu", "train-sae", None, ["--device", "gpu"],
     "--device='gpu'; expected cpu, cuda, cuda:N (N = GPU index) or mps"),
    ("demo-device-gpu", "demo", None, ["--device", "gpu"],
     "evaluation.device='gpu'; expected cpu, cuda, cuda:N (N = GPU index) or mps"),
]


def base_args(command: str, tmp_path: Path) -> list[str]:
    """A valid command line for ``command`` (tiny random test_vit) whose data folders do not exist: an input that
    reached the data would fail with another message, and ``timm.create_model`` is patched to fail the test."""
    missing = tmp_path / "no-images"
    if command == "train-sae":
        return ["train-sae", "--model", "test_vit", "--img-size", "32", "--data", str(missing), "--output",
                str(tmp_path / "run"), "--quiet"]
    if command == "demo":
        return ["demo", "--quick", "--output", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    return [command, "--model", "test_vit", "--img-size", "32", "--num-classes", "2", "--val-data", str(missing / "val"),
            "--test-data", str(missing / "test"), "--run-dir", str(tmp_path / "run"), "--quiet"]


def fgattr(argv: list[str]) -> int:
    """``fgattr ARGV`` in-process -> its exit status (argparse exits by SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code)


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_error_line_before_anything_runs(row, tmp_path, capsys, monkeypatch):
    _, command, config, flags, expected = row
    argv = base_args(command, tmp_path) + flags
    file = None
    if config is not None:
        file = tmp_path / config[0]
        file.write_text(config[1])
        argv += ["--config", str(file)]

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built for a bad configuration")

    monkeypatch.setattr("timm.create_model", no_model)
    monkeypatch.chdir(tmp_path)  # the YAML tag's payload would write ./marker
    assert fgattr(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fgattr {command}: error: {expected.replace('{file}', str(file))}"], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "marker").exists()


# The model's name and kwargs, refused before the data is read or the run folder exists (timm builds the named class
# on the meta device to learn its constructor, so timm.create_model is not patched here).
MODEL_ROWS = [
    ("unknown-kwarg", ["--model-kwargs", '{"foo": 1}'],
     "unknown model kwargs ['foo'] for timm:test_vit (VisionTransformer); accepted: ["),
    ("own-setting", ["--model-kwargs", '{"img_size": 32}'],
     "model kwarg 'img_size' is a setting of its own: set model.img_size (--img-size), not model.kwargs "
     "(--model-kwargs)"),
    ("loader-switch", ["--model-kwargs", '{"weights_only": false}'],
     "model kwarg 'weights_only' is a weight-loading switch of timm / open_clip and is never taken from "
     "model.kwargs (--model-kwargs): checkpoints are read weights-only from model.checkpoint (--checkpoint); remove it"),
    ("not-a-vit", ["--model", "timm:resnet18"],
     "timm:resnet18: a ResNet is not a ViT; the attribution methods need a ViT with an attention adapter ("),
    ("unknown-model", ["--model", "timm:vit_nope"], "unknown timm model 'vit_nope'; e.g. ["),
]


@pytest.mark.parametrize("row", MODEL_ROWS, ids=[row[0] for row in MODEL_ROWS])
def test_a_bad_model_is_one_error_line_before_the_data(row, tmp_path, capsys):
    _, flags, expected = row
    assert fgattr(base_args("run", tmp_path) + flags) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fgattr run: error: {expected}"), lines
    assert not (tmp_path / "run").exists()


def test_features_refuses_a_malformed_device_before_reading_the_run(tmp_path, capsys):
    """``fgattr features --device gpu`` names the flag, before it looks for the run folder (which is missing here)."""
    assert fgattr(["features", "--run-dir", str(tmp_path / "none"), "--device", "gpu", "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "fgattr features: error: --device='gpu'; expected cpu, cuda, cuda:N (N = GPU index) or mps"]


def test_a_yaml_payload_in_a_real_process_runs_no_code(tmp_path):
    """The table's YAML-tag row as a user meets it: its own process, one line on stderr, the payload never run."""
    marker = tmp_path / "marker"
    (tmp_path / "run.yaml").write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    done = subprocess.run([sys.executable, "-m", "captum_fgattr.bench.cli.main", "run", "--config",
                           str(tmp_path / "run.yaml"), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"fgattr run: error: configuration file {tmp_path / 'run.yaml'} is not valid YAML (line 1, column 8): could not "
        "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system' (only plain values are "
        "read: remove the tag)"]
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_the_schema_converts_what_it_can_and_round_trips():
    config = RunConfig.from_dict({"protocol": {"kappa": 1, "layers": [1, 2], "multi_layers": [[1, 2]],
                                               "kappas": [1, 0.5]},
                                  "data": {"mean": [0, 1]}, "saes": {"1": "saes/l1"}, "model": {"kwargs": {"depth": 2}}})
    assert (config.protocol.kappa, config.protocol.layers, config.protocol.multi_layers, config.protocol.kappas) == (
        1.0, (1, 2), ((1, 2),), (1.0, 0.5))
    assert type(config.protocol.kappa) is float and config.data.mean == (0.0, 1.0)
    assert config.saes == {"1": "saes/l1"} and config.model.kwargs == {"depth": 2}
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()  # every field's type is one the layer knows
    with pytest.raises(ValueError, match=r"^the configuration=\[1\]; expected a mapping of settings$"):
        RunConfig.from_dict([1])  # type: ignore[arg-type]


def test_range_checks_of_the_dataclasses_still_apply_after_the_types():
    with pytest.raises(ValueError, match=r"^kappas=\[-1\.0\]; expected finite numbers >= 0\.0$"):
        RunConfig.from_dict({"protocol": {"kappas": [-1]}})
    with pytest.raises(ValueError, match=r"^saco_groups=0; expected an int >= 1$"):
        RunConfig.from_dict({"evaluation": {"metrics": {"saco_groups": 0}}})
    with pytest.raises(ValueError, match=r"^baselines=\['transmm'\]; expected names from"):
        Protocol(baselines=("transmm",))


@pytest.mark.parametrize("metrics, patches, message", [
    (MetricConfig(), 4, "saco_groups=10; expected 2 <= saco_groups <= 4 (4 patches)"),
    (MetricConfig(saco_groups=4), 4, "fc_subset_size=20; expected 1 <= fc_subset_size <= 3 (4 patches)"),
    (MetricConfig(saco_groups=4, fc_subset_size=2, pf_patches_per_step=5), 4,
     "pf_patches_per_step=5; expected 1 <= pf_patches_per_step <= 4 (4 patches)"),
    (MetricConfig(fc_runs=1), 196, "fc_runs=1; expected fc_runs >= 2"),
    (MetricConfig(preset="thesis-code"), 4, "saco_groups=1 with preset 'thesis-code'; expected 2 <= saco_groups <= 4 "
     "(4 patches)"),
    (MetricConfig(preset="paper"), 9, "saco_groups=10 with preset 'paper'; expected 2 <= saco_groups <= 9 (9 patches)"),
], ids=["saco-groups", "fc-subset-size", "pf-step", "fc-runs", "thesis-code", "paper"])
def test_metric_settings_the_patch_count_cannot_take_are_refused(metrics, patches, message):
    with pytest.raises(ValueError) as info:
        metrics.resolved(patches)
    assert str(info.value) == message


def test_corrected_metric_settings_rerun_in_the_same_folder(tmp_path, capsys, one_torch_thread):
    """The issue's case: ``--saco-groups 10`` on a 4-patch model failed at evaluation time after the run folder had
    recorded it, so the corrected rerun was refused as "computed with different settings"."""
    write_split_folders(tmp_path)
    run = tmp_path / "run"
    argv = ["evaluate", "--model", "test_vit", "--num-classes", "2", "--img-size", "32", "--val-data",
            str(tmp_path / "val"), "--test-data", str(tmp_path / "test"), "--quiet", "--fc-subset-size", "2",
            "--fc-runs", "2", "--methods", '[{"name": "random"}]', "--run-dir", str(run)]
    assert fgattr([*argv, "--saco-groups", "10"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "fgattr evaluate: error: saco_groups=10; expected 2 <= saco_groups <= 4 (4 patches)"
    with ResultStore(run) as store:
        assert store.invocations() == []  # nothing of the failed command recorded
    assert not (run / "config.json").exists()
    assert fgattr([*argv, "--saco-groups", "2"]) == 0
    with ResultStore(run) as store:
        assert [command for command, _, _ in store.invocations()] == ["evaluate"]
        assert store.invocations()[0][2]["evaluation"]["metrics"]["saco_groups"] == 2


def test_run_study_refuses_metric_settings_before_the_run_folder_exists(tmp_path):
    """The Python entry point checks as ``fgattr`` does: the 16-patch ViT cannot take 40 SaCo groups."""
    with pytest.raises(ValueError, match=r"^saco_groups=40; expected 2 <= saco_groups <= 16 \(16 patches\)$"):
        run_study(make_vit(), [], [], {}, tmp_path / "run", config=EvalConfig(metrics=MetricConfig(saco_groups=40)))
    assert not (tmp_path / "run").exists()
