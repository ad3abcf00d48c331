"""Configurations and run folders are untrusted input (issue 21, security): model kwargs never reach a loader's
safety switches, every checkpoint is read weights-only, and model-construction errors are one-line errors."""
from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest
import torch

from captum_fgattr.bench.cli.main import main
from captum_fgattr.bench.experiments import fg_spec, transmm_spec
from captum_fgattr.bench.models.loading import check_device, check_kwarg_names, check_model_kwargs, load_model
from captum_fgattr.bench.store import ResultStore
from tests.conftest import write_split_folders

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("captum_fgattr", "quantus_saco")
#: the one torch.load without weights_only=True: the restricted unpickler of SAE configs (tests/test_sae_io_pickle.py)
RESTRICTED_UNPICKLER = "captum_fgattr/sae/safe_unpickle.py"
SWITCH = "is a weight-loading switch of timm / open_clip and is never taken from model.kwargs"
TINY = {"img_size": 32, "depth": 2}


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture
def payload(tmp_path) -> tuple[Path, Path]:
    """(checkpoint whose unpickling writes the marker, marker); checked to run its code when unpickled unsafely."""
    checkpoint, marker = tmp_path / "model.pt", tmp_path / "marker.txt"
    torch.save({"state_dict": {"visual.proj": Payload(marker)}}, checkpoint)
    torch.load(checkpoint, weights_only=False)  # the payload works: an unsafe load runs it
    assert marker.read_text() == "code ran"
    marker.unlink()
    return checkpoint, marker


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return write_split_folders(tmp_path_factory.mktemp("untrusted-data"))


def crafted_models(checkpoint: Path) -> dict[str, dict]:
    """Model sections of crafted configurations; each names its checkpoint ``checkpoint`` (the payload)."""
    return {
        "issue": {"name": "clip:ViT-B-32", "checkpoint": str(checkpoint), "kwargs": {"weights_only": False}},
        "tower path": {"name": "clip:ViT-B-32", "checkpoint": str(checkpoint),
                       "kwargs": {"pretrained_image_path": str(checkpoint), "weights_only": False}},
        "timm checkpoint_path": {"name": "timm:vit_tiny_patch16_224", "checkpoint": str(checkpoint), "num_classes": 2,
                                 "img_size": 32, "kwargs": {"checkpoint_path": str(checkpoint)}},
        "payload checkpoint": {"name": "clip:ViT-B-32", "checkpoint": str(checkpoint)},
    }


EXPECTED_ERROR = {
    "issue": f"model kwarg 'weights_only' {SWITCH}",
    "tower path": f"model kwarg 'pretrained_image_path' {SWITCH}",
    "timm checkpoint_path": f"model kwarg 'checkpoint_path' {SWITCH}",
    "payload checkpoint": "with torch.load(weights_only=True): corrupt, or it holds objects other than tensors",
}


def one_error_line(err: str, command: str) -> str:
    """The error line of ``fgattr <command>``; fails unless it is the only error line and there is no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("fgattr ")]
    assert len(lines) == 1 and lines[0].startswith(f"fgattr {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize("case", EXPECTED_ERROR)
def test_a_crafted_config_runs_no_code(case, payload, folders, tmp_path, capsys):
    checkpoint, marker = payload
    config = {"run_dir": str(tmp_path / "run"), "model": crafted_models(checkpoint)[case],
              "data": {"val": str(folders / "val"), "test": str(folders / "test")}}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    code = main(["run", "--config", str(tmp_path / "cfg.json"), "--quiet"])
    assert not marker.exists()
    assert code == 2
    assert EXPECTED_ERROR[case] in one_error_line(capsys.readouterr().err, "run")


@pytest.mark.parametrize("case", list(EXPECTED_ERROR))
def test_a_crafted_run_folder_runs_no_code(case, payload, folders, tmp_path, capsys):
    """``fgattr features --run-dir D`` rebuilds the model from the configuration D's store holds (command "run")."""
    checkpoint, marker = payload
    stored = {"run_dir": str(tmp_path / "run"), "saes": str(tmp_path / "saes"), "model": crafted_models(checkpoint)[case],
              "data": {"val": str(folders / "val"), "test": str(folders / "test")}}
    spec = fg_spec([1], "combined", 0.5, 10.0)
    with ResultStore(tmp_path / "run") as store:
        store.log_invocation("run", stored)
        store.register_experiment("test", "test", [transmm_spec(), spec], [0, 1])
    code = main(["features", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert not marker.exists()
    assert code == 2
    assert EXPECTED_ERROR[case] in one_error_line(capsys.readouterr().err, "features")


def test_a_payload_checkpoint_is_refused_by_every_loader(payload) -> None:
    checkpoint, marker = payload
    with pytest.raises(ValueError, match=r"model kwarg 'weights_only' is a weight-loading switch"):
        load_model("clip:ViT-B-32", checkpoint=checkpoint, class_names=["a", "b"], weights_only=False)
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*model.pt with torch.load\(weights_only=True\)"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=checkpoint, **TINY)
    assert not marker.exists()


@functools.cache
def _package_nodes() -> list[tuple[str, ast.AST]]:
    """(file relative to the repository, node) of every AST node of the package sources."""
    return [(path.relative_to(ROOT).as_posix(), node) for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))]


def _calls(attribute: str) -> list[tuple[str, ast.Call]]:
    """(file, call) of every call ``<something>.<attribute>(...)`` in the package sources."""
    return [(file, node) for file, node in _package_nodes() if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == attribute]


def _torch_load_calls() -> list[tuple[str, ast.Call]]:
    """(file, call) of every ``torch.load(...)`` in the package sources."""
    for file, node in _package_nodes():
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            assert "load" not in {a.name for a in node.names}, f"{file}: `from torch import load` hides calls"
    return [(file, call) for file, call in _calls("load")
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"]


def test_every_torch_load_is_weights_only() -> None:
    """Every ``torch.load`` passes ``weights_only=True`` literally; the one exception is the restricted unpickler,
    which passes ``pickle_module=`` (its own restricted module)."""
    checked, exceptions = [], []
    for file, call in _torch_load_calls():
        keywords = {k.arg: k.value for k in call.keywords}
        assert None not in keywords, f"{file}:{call.lineno}: torch.load(**...) may hide weights_only"
        flag = keywords.get("weights_only")
        if isinstance(flag, ast.Constant) and flag.value is True:
            checked.append(file)
        elif file == RESTRICTED_UNPICKLER and "pickle_module" in keywords:
            exceptions.append(file)
        else:
            pytest.fail(f"{file}:{call.lineno}: torch.load without weights_only=True")
    assert exceptions == [RESTRICTED_UNPICKLER]
    assert {"captum_fgattr/bench/models/checkpoint.py", "captum_fgattr/sae/io.py"} <= set(checked)


def test_timm_and_open_clip_read_no_file_of_this_package() -> None:
    """Every ``create_model`` call passes ``pretrained=False`` / ``None`` literally (no file or tag reaches timm's or
    open_clip's loaders) and the package calls none of their checkpoint loaders."""
    calls = _calls("create_model")
    assert {file for file, _ in calls} >= {"captum_fgattr/bench/models/loading.py"}
    for file, call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        flag = keywords.get("pretrained")
        assert isinstance(flag, ast.Constant) and flag.value in (False, None), f"{file}:{call.lineno}: pretrained="
        assert "checkpoint_path" not in keywords, f"{file}:{call.lineno}: checkpoint_path="
    loaders = [(file, call.lineno) for name in ("load_checkpoint", "load_pretrained") for file, call in _calls(name)]
    assert loaders == []


def test_loader_switches_are_refused_by_name() -> None:
    for key in ("weights_only", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                "cache_dir", "load_weights", "pretrained_hf", "require_pretrained"):
        for spec in ("clip:ViT-B-32", "timm:vit_tiny_patch16_224", "fgattr:br35h-vit"):
            with pytest.raises(ValueError, match=rf"^model kwarg '{key}' {SWITCH}"):
                check_model_kwargs(spec, {key: False})
    # without a model (for validating a configuration): names only
    assert check_kwarg_names({"depth": 2, "anything": {"x": 1}}) == {"depth": 2, "anything": {"x": 1}}
    with pytest.raises(ValueError, match=rf"^model kwarg 'anything' -> 'weights_only' {SWITCH}"):
        check_kwarg_names({"depth": 2, "anything": {"weights_only": False}})
    with pytest.raises(ValueError, match=rf"^model kwarg 'vision_cfg' -> 'timm_model_pretrained' {SWITCH}"):
        check_model_kwargs("clip:ViT-B-32", {"vision_cfg": {"layers": 2, "timm_model_pretrained": True}})
    with pytest.raises(ValueError, match=rf"^model kwarg 'text_cfg' -> 'hf_model_name' {SWITCH}"):
        check_model_kwargs("clip:ViT-B-32", {"text_cfg": {"hf_model_name": "bert-base-uncased"}})


def test_model_kwargs_are_checked_against_the_constructor() -> None:
    assert check_model_kwargs("timm:vit_tiny_patch16_224", {"depth": 2, "qkv_bias": False}) == {"depth": 2,
                                                                                                  "qkv_bias": False}
    assert check_model_kwargs("clip:ViT-B-32", {"quick_gelu": True}) == {"quick_gelu": True}
    with pytest.raises(ValueError, match=r"^unknown model kwargs \['dept'\] for timm:vit_tiny_patch16_224 "
                                         r"\(VisionTransformer\); accepted: \[.*'depth'"):
        check_model_kwargs("timm:vit_tiny_patch16_224", {"dept": 2})
    # DeiT distilled takes **kwargs on to VisionTransformer: its parameters are accepted
    assert check_model_kwargs("timm:deit_tiny_distilled_patch16_224", {"depth": 2}) == {"depth": 2}
    with pytest.raises(ValueError, match=r"^unknown model kwargs \['features_only'\] for clip:ViT-B-32 "
                                         r"\(open_clip.create_model\)"):
        check_model_kwargs("clip:ViT-B-32", {"features_only": True})
    with pytest.raises(ValueError, match=r"^fgattr:br35h-vit has a fixed shape; remove depth=0, qkv_bias=False$"):
        load_model("fgattr:br35h-vit", depth=0, qkv_bias=False)  # falsy values are refused too
    with pytest.raises(ValueError, match=r"^model kwargs \[1\]; expected a mapping of argument names to values"):
        check_model_kwargs("timm:vit_tiny_patch16_224", [1])  # type: ignore[arg-type]


@pytest.mark.parametrize("key, where", [("img_size", "model.img_size \\(--img-size\\)"),
                                        ("num_classes", "model.num_classes \\(--num-classes\\)"),
                                        ("force_image_size", "model.img_size \\(--img-size\\)"),
                                        ("device", "evaluation.device \\(--device\\)")])
def test_own_settings_given_as_model_kwargs_are_refused(key, where) -> None:
    """``--model-kwargs '{"img_size": 32}'`` gave "multiple values for keyword argument"."""
    with pytest.raises(ValueError, match=rf"^model kwarg '{key}' is a setting of its own: set {where}, not "
                                         r"model.kwargs \(--model-kwargs\)$"):
        check_model_kwargs("timm:vit_tiny_patch16_224", {key: 32})


def test_model_construction_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"^unknown model kwargs \['bogus'\] for timm:vit_tiny_patch16_224"):
        load_model("timm:vit_tiny_patch16_224", bogus=1, **TINY)
    with pytest.raises(ValueError, match=r"^cannot build timm model 'vit_tiny_patch16_224' with \{'embed_dim': 65, "
                                         r"'num_heads': 4, 'depth': 2, 'img_size': 32\}: AssertionError: dim should "
                                         r"be divisible by num_heads; check model.kwargs"):
        load_model("timm:vit_tiny_patch16_224", embed_dim=65, num_heads=4, **TINY)
    with pytest.raises(ValueError, match=r"^cannot build timm model 'vit_tiny_patch16_224' with \{'depth': '2', "
                                         r"'img_size': 32\}: TypeError: "):
        load_model("timm:vit_tiny_patch16_224", img_size=32, depth="2")
    with pytest.raises(ValueError, match=r"^timm:resnet18: a ResNet is not a ViT; the attribution methods need a ViT "
                                         r"with an attention adapter \(timm VisionTransformer, open_clip "):
        load_model("timm:resnet18")
    with pytest.raises(ValueError, match=r"^cannot build timm model 'vit_tiny_patch16_224' with \{'norm_layer': "
                                         r"'nope', 'depth': 2, 'img_size': 32\}: KeyError: 'nope'"):
        load_model("timm:vit_tiny_patch16_224", norm_layer="nope", **TINY)
    with pytest.raises(ValueError, match=r"^cannot build open_clip model 'ViT-B-32' with \{'vision_cfg': \{'layers': "
                                         r"2, 'width': 'wide'\}\}: TypeError: "):
        load_model("clip:ViT-B-32", class_names=["a", "b"], vision_cfg={"layers": 2, "width": "wide"})
    with pytest.raises(ValueError, match=r"^cannot build open_clip model 'ViT-B-32' with \{'vision_cfg': 3\}: "
                                         r"AttributeError: "):
        load_model("clip:ViT-B-32", class_names=["a", "b"], vision_cfg=3)
    with pytest.raises(ValueError, match=r"^clip:RN50: not supported: CLIPZeroShotClassifier contains no supported "
                                         r"ViTs; .*the attribution methods need a ViT with an attention adapter"):
        load_model("clip:RN50", class_names=["a", "b"])


def test_devices() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("cuda:1") == torch.device("cuda", 1)
    assert check_device(torch.device("mps")) == torch.device("mps")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "", 0):
        with pytest.raises(ValueError, match=r"^device=.*; expected cpu, cuda, cuda:N \(N = GPU index\) or mps$"):
            check_device(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^device='gpu'; expected cpu, cuda"):
        load_model("timm:vit_tiny_patch16_224", device="gpu", **TINY)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU"])
def test_a_malformed_device_is_one_line(device, folders, tmp_path, capsys):
    """``--device gpu`` (refused by the configuration before torch sees it; on a CUDA machine too)."""
    code = main(["run", "--model", "timm:vit_tiny_patch16_224", "--img-size", "32", "--val-data", str(folders / "val"),
                 "--test-data", str(folders / "test"), "--run-dir", str(tmp_path / "run"), "--quiet", "--device", device])
    assert code == 2
    line = one_error_line(capsys.readouterr().err, "run")
    assert line == f"fgattr run: error: evaluation.device={device!r}; expected cpu, cuda, cuda:N (N = GPU index) or mps"


def test_a_local_clip_checkpoint_is_read_weights_only(tmp_path, monkeypatch) -> None:
    """open_clip never reads the local file: its own loader is replaced by one that fails the test."""
    import open_clip

    torch.manual_seed(0)
    source = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "clip.pt")

    def never(*args, **kwargs):
        raise AssertionError("open_clip read the checkpoint")

    monkeypatch.setattr(open_clip.factory, "load_checkpoint", never)
    monkeypatch.setattr(open_clip.factory, "load_state_dict", never)
    model = load_model("clip:ViT-S-32", checkpoint=tmp_path / "clip.pt", class_names=["a", "b"])
    for key, value in source.visual.state_dict().items():
        assert torch.equal(model.visual.state_dict()[key], value), key
