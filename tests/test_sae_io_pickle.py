"""Old Prisma-layout ``.pt`` files with a pickled config object: restricted unpickling (plain data only,
refusing named globals), umask-respecting file modes, permission errors never called "corrupt"."""
from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from captum_fgattr.sae import load_sae, save_sae
from captum_fgattr.sae.safe_unpickle import RefusedGlobal, _RestrictedUnpickler, load_plain
from tests.test_sae_io import D, N, generic_sae, reference_prisma_encode

FAKE_MODULE = "vit_prisma_sae_config_for_tests"  # never importable when the file is read


@dataclass
class RunnerConfig:
    """Stand-in for a training library's config class, as old Prisma files pickle it."""

    d_in: int = D
    expansion_factor: int = N // D
    activation_fn_str: str = "topk"
    activation_fn_kwargs: dict = field(default_factory=lambda: {"k": 8})
    normalize_activations: str = "layer_norm"
    architecture: str = "standard"
    hook_point: str = "blocks.9.hook_resid_post"
    hook_point_layer: int = 9
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    checkpoint_path: Path = Path("/checkpoints/run-1")


class RunsShell:
    """A 'config' whose unpickling calls os.system (the classic malicious pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _save_with_unimportable_class(payload: object, path: Path) -> None:
    """torch.save ``payload`` with RunnerConfig pickled as FAKE_MODULE.VisionModelSAERunnerConfig, a
    module that does not exist when the file is loaded (so loading must not try to import it)."""
    module = types.ModuleType(FAKE_MODULE)
    module.VisionModelSAERunnerConfig = RunnerConfig
    saved = RunnerConfig.__module__, RunnerConfig.__qualname__
    RunnerConfig.__module__, RunnerConfig.__qualname__ = FAKE_MODULE, "VisionModelSAERunnerConfig"
    sys.modules[FAKE_MODULE] = module
    try:
        torch.save(payload, path)
    finally:
        RunnerConfig.__module__, RunnerConfig.__qualname__ = saved
        del sys.modules[FAKE_MODULE]


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"W_enc": torch.randn(D, N, generator=g) * 0.3, "b_enc": torch.randn(N, generator=g) * 0.1,
            "W_dec": torch.randn(N, D, generator=g) * 0.3, "b_dec": torch.randn(D, generator=g) * 0.1}


def test_pickled_config_object_loads_as_plain_data_and_encodes_exactly(tmp_path):
    folder = tmp_path / "sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-9-hook_resid_post-l1-1e-05"
    folder.mkdir()
    state = _state()
    _save_with_unimportable_class({"cfg": RunnerConfig(), "state_dict": state}, folder / "n_images_2600058.pt")
    with pytest.raises(pickle.UnpicklingError):  # what the loader cannot rely on
        torch.load(folder / "n_images_2600058.pt", weights_only=True)

    raw = load_plain(folder / "n_images_2600058.pt")
    assert raw["cfg"]["checkpoint_path"] == "/checkpoints/run-1" and raw["cfg"]["dtype"] == torch.float32
    sae = load_sae(folder)  # no config.json: the wrapped cfg object is the config
    assert (sae.d_in, sae.n_features, sae.activation, sae.normalization, sae.config.hook_layer) == (
        D, N, "topk", "layer_norm", 9)
    for name, value in state.items():
        assert torch.equal(getattr(sae, name), value)
    x = torch.randn(3, 5, D) * 2 + 0.3
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), reference_prisma_encode(state, x, 8), rtol=1e-5, atol=1e-5)


def test_malicious_pickle_in_a_prisma_file_is_refused_naming_the_global(tmp_path):
    folder = tmp_path / "prisma"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"cfg": RunsShell(marker), "state_dict": _state()}, folder / "sae.pt")
    name = f"{os.system.__module__}.system"
    with pytest.raises(ValueError, match=f"refusing SAE weights .*sae.pt: the pickle asks to run {name}"):
        load_sae(folder)
    with pytest.raises(RefusedGlobal) as info:
        load_plain(folder / "sae.pt")
    assert info.value.name == name
    assert not marker.exists()


class _EvalOnLoad:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_eval_is_refused_by_its_python_3_name(tmp_path):
    torch.save({"cfg": _EvalOnLoad()}, tmp_path / "x.pt")  # protocol 2 writes __builtin__.eval
    with pytest.raises(RefusedGlobal) as info:
        load_plain(tmp_path / "x.pt")
    assert info.value.name == "builtins.eval"


def test_setting_state_on_an_allowlisted_global_is_refused(tmp_path):
    # hand-written pickle: GLOBAL collections.OrderedDict, then BUILD {"x": 1} on the class itself
    data = b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00xK\x01sb."
    with pytest.raises(RefusedGlobal, match="setting the state of OrderedDict"):
        _RestrictedUnpickler(io.BytesIO(data)).load()
    assert not hasattr(collections.OrderedDict, "x")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        folder = save_sae(generic_sae(), tmp_path / "sae")
    finally:
        os.umask(previous)
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == mode, path.name


def test_unreadable_files_raise_permission_errors_not_corrupt(tmp_path, monkeypatch):
    folder = save_sae(generic_sae(), tmp_path / "sae")
    real_open = open

    def locked(path, *args, **kwargs):
        if Path(path).name == "sae.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("captum_fgattr.sae.io.open", locked, raising=False)
    with pytest.raises(PermissionError, match="sae.safetensors") as info:
        load_sae(folder)
    assert "corrupt" not in str(info.value)
