"""SAE storage: native round trip, Prisma-layout folders (plain / wrapped .pt), corrupt and mismatched files."""
from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from torch.testing import assert_close

from captum_fgattr.sae import SAEConfig, SparseAutoencoder, load_sae

D, N = 16, 64


def generic_sae(activation: str = "topk", normalize: str = "layer_norm", **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(
        SAEConfig(d_in=D, n_features=N, activation=activation, k=8 if activation == "topk" else None, normalize=normalize, **kw),
        seed=0,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


@pytest.mark.parametrize("activation, normalize", [("topk", "layer_norm"), ("relu", "constant_norm_rescale"), ("topk", "none")])
def test_save_load_round_trip_identical_outputs(tmp_path, activation: str, normalize: str) -> None:
    sae = generic_sae(activation, normalize, hook_layer=4, model_name="vit_tiny")
    sae.save(tmp_path / "sae", metrics={"explained_variance": 0.97})
    files = sorted(p.name for p in (tmp_path / "sae").iterdir())
    assert files == ["config.json", "sae.safetensors"]
    cfg = json.loads((tmp_path / "sae" / "config.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["activation_fn_str"], cfg["normalize_activations"]) == (D, N, activation, normalize)
    assert cfg["hook_point"] == "blocks.4.hook_resid_post" and cfg["hook_point_layer"] == 4

    loaded = SparseAutoencoder.load(tmp_path / "sae")
    assert loaded.config == sae.config
    assert loaded.config.extra["metrics"] == {"explained_variance": 0.97}
    x = torch.randn(5, 9, D)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
    loaded64 = load_sae(tmp_path / "sae", dtype=torch.float64)
    assert loaded64.dtype == torch.float64


def reference_prisma_encode(state: dict, x: torch.Tensor, k: int | None) -> torch.Tensor:
    """docs/method.md §3 with layer_norm written out: (x - mean) / (unbiased std + 1e-5), then TopK/ReLU."""
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).sum(-1, keepdim=True).div(x.shape[-1] - 1).sqrt()
    pre = ((x - mean) / (std + 1e-5) - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
    if k is None:
        return pre.clamp_min(0)
    kth = pre.sort(-1, descending=True).values[..., k - 1 : k]
    return torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))


def prisma_folder(tmp_path, *, wrapped: bool, activation: str = "relu", layer: int = 9):
    g = torch.Generator().manual_seed(3)
    state = {
        "W_enc": torch.randn(D, N, generator=g) * 0.3,
        "b_enc": torch.randn(N, generator=g) * 0.1,
        "W_dec": torch.randn(N, D, generator=g) * 0.3,
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    cfg = {
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "hook_point": f"blocks.{layer}.hook_resid_post",
        "hook_point_layer": layer,
        "d_in": D,
        "expansion_factor": N // D,  # no d_sae: derived from the expansion factor
        "activation_fn_str": activation,
        "activation_fn_kwargs": {"k": 8} if activation == "topk" else {},
        "normalize_activations": "layer_norm",
        "architecture": "standard",
        "l1_coefficient": 1e-05,
        "dtype": "torch.float32",
    }
    folder = tmp_path / f"sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-{layer}-hook_resid_post-l1-1e-05"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    payload = {"cfg": cfg, "state_dict": state} if wrapped else state
    torch.save(payload, folder / "n_images_2600058.pt")
    return folder, state


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_prisma_layout_loads_and_encodes_as_formula(tmp_path, wrapped: bool, activation: str) -> None:
    folder, state = prisma_folder(tmp_path, wrapped=wrapped, activation=activation)
    sae = load_sae(folder)
    assert (sae.d_in, sae.n_features, sae.activation, sae.normalization) == (D, N, activation, "layer_norm")
    assert sae.config.hook_layer == 9 and sae.config.extra["l1_coefficient"] == 1e-05
    x = torch.randn(4, 7, D) * 2 + 0.3
    with torch.no_grad():
        f = sae.encode(x)
    assert_close(f, reference_prisma_encode(state, x, 8 if activation == "topk" else None), rtol=1e-5, atol=1e-5)
    # a single weights file works too, its folder's config.json is used
    assert torch.equal(load_sae(next(folder.glob("*.pt"))).W_dec, state["W_dec"])


def test_wrapped_pt_without_config_json_uses_embedded_cfg(tmp_path) -> None:
    folder, state = prisma_folder(tmp_path, wrapped=True)
    (folder / "config.json").unlink()
    sae = load_sae(folder)
    assert torch.equal(sae.W_enc, state["W_enc"]) and sae.config.hook_layer == 9


def test_hook_layer_parsed_from_hook_point(tmp_path) -> None:
    folder, _ = prisma_folder(tmp_path, wrapped=False, layer=3)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["hook_point_layer"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_sae(folder).config.hook_layer == 3


class NotATensor:  # pickled class: must be refused by torch.load(weights_only=True)
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_and_mismatched_files(tmp_path) -> None:
    folder, state = prisma_folder(tmp_path, wrapped=False)
    pt = next(folder.glob("*.pt"))

    pt.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sae(folder)

    with open(pt, "wb") as fh:  # arbitrary pickled objects are not executed/loaded
        pickle.dump({"state_dict": NotATensor()}, fh)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sae(folder)

    torch.save({k: v for k, v in state.items() if k != "b_dec"}, pt)
    with pytest.raises(ValueError, match=r"lack \['b_dec'\]"):
        load_sae(folder)

    torch.save({**state, "W_dec": state["W_dec"].T.contiguous()}, pt)
    with pytest.raises(ValueError, match=r"W_dec has shape \(16, 64\).*needs \(64, 16\)"):
        load_sae(folder)

    torch.save({**state, "b_enc": torch.full((N,), math.nan)}, pt)
    with pytest.raises(ValueError, match="b_enc is not a finite"):
        load_sae(folder)

    torch.save(state, pt)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt SAE config"):
        load_sae(folder)

    (folder / "config.json").write_text(json.dumps({"d_in": D, "d_sae": N, "activation_fn_str": "jumprelu"}))
    with pytest.raises(ValueError, match="activation_fn_str='jumprelu' is not supported"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"d_in": D, "d_sae": N, "architecture": "gated"}))
    with pytest.raises(ValueError, match="architecture='gated'"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"d_sae": N}))
    with pytest.raises(ValueError, match="missing 'd_in'"):
        load_sae(folder)


def test_corrupt_safetensors_and_missing_paths(tmp_path) -> None:
    generic_sae().save(tmp_path / "sae")
    (tmp_path / "sae" / "sae.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt SAE weights"):
        load_sae(tmp_path / "sae")
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no SAE weights"):
        load_sae(tmp_path / "empty")


def test_extra_state_entries_warn(tmp_path) -> None:
    folder, state = prisma_folder(tmp_path, wrapped=False)
    torch.save({**state, "scaling_factor": torch.ones(N)}, next(folder.glob("*.pt")))
    with pytest.warns(UserWarning, match="scaling_factor"):
        load_sae(folder)


def test_download_offline_gives_clear_error(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = "prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-9-hook_resid_post-l1-1e-05"
    with pytest.raises(RuntimeError, match="could not download SAE.*online"):
        load_sae(repo, download=True, cache_dir=str(tmp_path / "hub"))


def test_width_mismatch_when_attached(tmp_path) -> None:
    folder, _ = prisma_folder(tmp_path, wrapped=False)
    sae = load_sae(folder)
    with pytest.raises(ValueError, match=r"block 9.*d_in=16.*width 768"):
        sae.check_width(768, "block 9")
