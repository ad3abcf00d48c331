"""SAE storage: safetensors + JSON config (never pickle), and published Prisma- and SAELens-layout folders.

Folder written by :func:`write_sae_files` (``SparseAutoencoder.save``)::

    config.json        Prisma-compatible keys (d_in, d_sae, activation_fn_str, activation_fn_kwargs,
                       normalize_activations, architecture, hook_point, hook_point_layer) + metrics
    sae.safetensors    W_enc (d_in, n), b_enc (n), W_dec (n, d_in), b_dec (d_in)

:func:`read_sae_files` (``SparseAutoencoder.load``) reads those folders and published vision SAEs in the Prisma layout: ``config.json``
plus a ``.pt`` state dict ``{W_enc, b_enc, W_dec, b_dec}``, or the older wrapped form
``{"cfg": ..., "state_dict": {...}}``; ``.pt`` files are read with ``torch.load(weights_only=True)``, and
an old wrapped file whose ``cfg`` is a pickled config object with a restricted unpickler that rebuilds
plain data only (:mod:`captum_fgattr.sae.safe_unpickle`): no code from a file is ever run.

SAELens folders (``SAE.save_model``): ``cfg.json`` + ``sae_weights.safetensors``, architectures
``standard`` (ReLU), ``topk`` (``k``; ``rescale_acts_by_decoder_norm`` folded into the weights at load) and
``jumprelu`` (a ``threshold``, or an older ``log_threshold``, tensor), with ``apply_b_dec_to_input`` and
``normalize_activations`` none / layer_norm / constant_norm_rescale. Anything else (other architectures,
``expected_average_only_in`` or ``covariance_whitening`` normalisation, ``hook_z`` reshaping) is refused
with a ``ValueError`` naming it.

Written files get the permissions of the user's umask; a file that cannot be read because of its
permissions raises ``PermissionError`` (never "corrupt").
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_fgattr.files import atomic_write
from captum_fgattr.sae.config import SAEConfig
from captum_fgattr.sae.safe_unpickle import RefusedGlobal, load_plain

__all__ = ["write_sae_files", "read_sae_files", "read_sae_config", "CONFIG_NAME", "WEIGHTS_NAME", "PARAMS"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "sae.safetensors"
SAELENS_CONFIG_NAME = "cfg.json"
SAELENS_WEIGHTS_NAME = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu")  # SAELens names of the supported architectures
FORMAT = "captum_fgattr.sae"
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_HOOK_POINT = re.compile(r"blocks\.(\d+)\.")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(value: Any) -> torch.dtype | None:
    if not isinstance(value, str):
        return None
    dtype = getattr(torch, value.removeprefix("torch."), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def write_sae_files(c: SAEConfig, tensors: dict[str, Tensor], dtype: torch.dtype, directory: str | os.PathLike[str],
                    metrics: dict[str, float] | None = None) -> Path:
    """Write an SAE's ``tensors`` ({W_enc, b_enc, W_dec, b_dec}, CPU) and config to ``directory`` as
    ``sae.safetensors`` + ``config.json``; returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 1,
        "d_in": c.d_in,
        "d_sae": c.n_features,
        "expansion_factor": c.n_features // c.d_in if c.n_features % c.d_in == 0 else c.expansion,
        "activation_fn_str": c.activation,
        "activation_fn_kwargs": {"k": c.k} if c.activation == "topk" else {},
        "normalize_activations": c.normalize,
        "architecture": "jumprelu" if c.activation == "jumprelu" else "standard",
        **({} if c.apply_b_dec_to_input else {"apply_b_dec_to_input": False}),
        "hook_point": None if c.hook_layer is None else f"blocks.{c.hook_layer}.hook_resid_post",
        "hook_point_layer": c.hook_layer,
        "model_name": c.model_name,
        "dtype": _dtype_name(dtype),
        "weights": WEIGHTS_NAME,
        "metrics": dict(metrics) if metrics else {},
        "extra": c.extra,
    }
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2, default=str)))
    return directory


def _activation(config: dict[str, Any], source: str) -> tuple[str, int | None]:
    """(activation, k) of a config: SAELens 6 names the architecture (TopK's ``k`` at the top level), older
    SAELens / Prisma configs a ``standard`` architecture with ``activation_fn_str`` (+ ``activation_fn_kwargs``)."""
    architecture = config.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{source}: SAE architecture={architecture!r} is not supported; expected one of {list(ARCHITECTURES)}")
    if architecture == "topk":
        return "topk", config.get("k", (config.get("activation_fn_kwargs") or {}).get("k"))
    if architecture == "jumprelu":
        return "jumprelu", None
    activation = str(config.get("activation_fn_str", "relu")).lower()
    if activation not in ("relu", "topk"):
        raise ValueError(f"{source}: activation_fn_str={activation!r} is not supported; expected 'relu' or 'topk'")
    return activation, (config.get("activation_fn_kwargs") or {}).get("k") if activation == "topk" else None


def _normalization(config: dict[str, Any], source: str, saelens: bool) -> str:
    normalize = config.get("normalize_activations") or "none"
    supported = ("none", "layer_norm", "constant_norm_rescale")
    if normalize not in supported:
        raise ValueError(f"{source}: normalize_activations={normalize!r} is not supported; expected one of {list(supported)}")
    return "layer_norm_saelens" if saelens and normalize == "layer_norm" else normalize


def read_sae_config(config: dict[str, Any], source: str = "config", saelens: bool = False) -> SAEConfig:
    """:class:`SAEConfig` from a Prisma / SAELens-style config dict (also what :func:`write_sae_files` writes);
    ``saelens``: the dict is a SAELens ``cfg.json`` (its ``layer_norm`` restores with std, not std + eps)."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    if "d_in" not in config:
        raise ValueError(f"{source}: missing 'd_in'")
    d_in = config["d_in"]
    if config.get("d_sae") is not None:
        n_features = config["d_sae"]
    elif config.get("expansion_factor") is not None:
        n_features = int(round(config["expansion_factor"] * d_in))
    else:
        raise ValueError(f"{source}: needs 'd_sae' or 'expansion_factor'")
    activation, k = _activation(config, source)
    normalize = _normalization(config, source, saelens)
    if config.get("reshape_activations", "none") != "none":
        raise ValueError(f"{source}: reshape_activations={config['reshape_activations']!r} is not supported; expected 'none'")
    meta = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}  # SAELens 6
    layers = (config.get("hook_point_layer"), config.get("hook_layer"), meta.get("hook_layer"))
    layer = next((v for v in layers if v is not None), None)
    hook_point = config.get("hook_point") or config.get("hook_name") or meta.get("hook_name")
    if layer is None and isinstance(hook_point, str) and (m := _HOOK_POINT.search(hook_point)):
        layer = int(m.group(1))
    if isinstance(hook_point, str) and "resid_post" not in hook_point:
        warnings.warn(
            f"{source}: the SAE was trained on hook_point={hook_point!r}, not a block's resid_post; "
            "Feature-Gradient TransMM reads resid_post",
            stacklevel=3,
        )
    if config.get("format") == FORMAT:  # ours: provenance kept under "extra", metrics alongside
        extra = dict(config.get("extra") or {})
        if config.get("metrics"):
            extra["metrics"] = config["metrics"]
    else:  # published config: keep its other fields (training settings, model) as provenance
        known = {"d_in", "d_sae", "activation_fn_str", "activation_fn_kwargs", "normalize_activations", "hook_point_layer",
                 "k", "apply_b_dec_to_input"}
        extra = {key: value for key, value in config.items() if key not in known}
    model_name = config.get("model_name") or meta.get("model_name")
    apply_b_dec = config.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise ValueError(f"{source}: apply_b_dec_to_input={apply_b_dec!r}; expected true or false")
    return SAEConfig(
        d_in=d_in, n_features=n_features, activation=activation, k=k, normalize=normalize,
        hook_layer=None if layer is None else int(layer),
        model_name=model_name if isinstance(model_name, str) else None, extra=extra, apply_b_dec_to_input=apply_b_dec,
    )


def _check_readable(path: Path) -> None:
    """Raise ``PermissionError`` (naming the file) before a reader could mistake it for corruption."""
    with open(path, "rb"):
        pass


def _read_json(path: Path) -> dict[str, Any]:
    _check_readable(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt SAE config {path}: not valid JSON ({err})") from err


def _read_weights(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """State dict (and the wrapped ``cfg`` if any) from a safetensors or weights-only torch file; an old
    wrapped file whose ``cfg`` is a pickled object is read with the restricted unpickler."""
    _check_readable(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), None
        except Exception as err:  # safetensors raises its own error types for corrupt headers/data
            raise ValueError(f"corrupt SAE weights {path}: cannot read as safetensors ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # e.g. a pickled cfg object: plain data only, or a named refusal
        obj = _read_plain(path)
    except Exception as err:  # garbage bytes surface as many error types (RuntimeError, IndexError, ...)
        raise ValueError(
            f"cannot read SAE weights {path} with torch.load(weights_only=True): the file is corrupt or holds "
            f"objects other than tensors / plain containers ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"SAE weights {path}: expected a state dict, got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # older {"cfg": ..., "state_dict": ...}
        cfg = obj.get("cfg")
        return obj["state_dict"], cfg if isinstance(cfg, dict) else None
    return obj, None


def _read_plain(path: Path) -> Any:
    """An old wrapped file with a pickled ``cfg`` object, through the restricted unpickler."""
    try:
        return load_plain(path)
    except RefusedGlobal as err:
        raise ValueError(
            f"refusing SAE weights {path}: the pickle asks to run {err.name}, which is not plain data "
            "(tensors, containers, config objects); nothing from the file was executed"
        ) from err
    except Exception as err:  # garbage bytes surface as many error types
        raise ValueError(
            f"cannot read SAE weights {path} with torch.load(weights_only=True) nor as plain data: the file is "
            f"corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err


def _find_weights(folder: Path, config: dict[str, Any] | None, saelens: bool) -> Path:
    named = SAELENS_WEIGHTS_NAME if saelens else config.get("weights") if config else None
    if isinstance(named, str):
        path = folder / named
        if not path.is_file():
            raise FileNotFoundError(f"SAE weights {path} named in {folder / CONFIG_NAME} do not exist")
        return path
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no SAE weights in {folder}: expected a {' / '.join(WEIGHT_SUFFIXES)} file")
    safetensors_files = [p for p in files if p.suffix == ".safetensors"]
    candidates = safetensors_files or files
    if len(candidates) > 1:
        raise ValueError(f"several SAE weight files in {folder}: {[p.name for p in candidates]}; pass the file's path")
    return candidates[0]


def _download(repo_id: str, cache_dir: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with open_clip_torch
        raise ImportError("downloading SAEs needs the huggingface_hub package (pip install huggingface_hub)") from err
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=["*.json", "*.pt", "*.pth", "*.safetensors"]))
    except Exception as err:  # offline, unknown repo, auth...: one clear message
        raise RuntimeError(
            f"could not download SAE {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Are you online? Otherwise download the folder elsewhere and pass its local path."
        ) from err


def read_sae_files(
    path: str | os.PathLike[str], *, download: bool = False, cache_dir: str | None = None,
) -> tuple[SAEConfig, dict[str, Tensor], torch.dtype]:
    """Read an SAE folder (or one weights file inside it), this package's format, Prisma's or SAELens's, checked.

    Args:
        path: local folder with ``config.json`` + weights, a SAELens folder (``cfg.json`` +
            ``sae_weights.safetensors``), or a weights file (its folder's ``config.json`` / ``cfg.json`` is
            used; an old wrapped ``.pt`` may carry its config as ``cfg``).
            With ``download=True`` and no such local path: a Hugging Face Hub repo id, e.g.
            ``prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-9-hook_resid_post-l1-1e-05``.
        download: fetch from the Hub when ``path`` is not local (needs network).
        cache_dir: Hub cache folder for ``download``.

    Returns:
        (config, {W_enc, b_enc, W_dec, b_dec (+ threshold for JumpReLU)} tensors of the config's shapes, the
        stored dtype).

    Raises:
        FileNotFoundError: no such local path (and ``download=False``) or no weights in it.
        ValueError: corrupt config / weights, missing keys, shapes that do not match the config.
        RuntimeError: ``download=True`` but the Hub could not be reached.
    """
    path = Path(path)
    if not path.exists():
        if not download:
            raise FileNotFoundError(
                f"SAE path {str(path)!r} does not exist; pass a local folder, or download=True to fetch a "
                "Hugging Face Hub repo id"
            )
        path = _download(str(path).replace(os.sep, "/"), cache_dir)
    folder, weights_path = (path.parent, path) if path.is_file() else (path, None)
    saelens = not (folder / CONFIG_NAME).is_file() and (folder / SAELENS_CONFIG_NAME).is_file()
    config_path = folder / (SAELENS_CONFIG_NAME if saelens else CONFIG_NAME)
    config = _read_json(config_path) if config_path.is_file() else None
    if weights_path is None:
        weights_path = _find_weights(folder, config, saelens)
    state, wrapped_cfg = _read_weights(weights_path)
    if config is None:
        if wrapped_cfg is None:
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} and {weights_path.name} carries no config")
        config = wrapped_cfg
    sae_config = read_sae_config(config, source=str(config_path if config_path.is_file() else weights_path), saelens=saelens)

    names = PARAMS + (("threshold",) if sae_config.activation == "jumprelu" else ())
    if "threshold" in names and "threshold" not in state and isinstance(state.get("log_threshold"), Tensor):
        state = {**state, "threshold": state["log_threshold"].exp()}  # older SAELens JumpReLU checkpoints
        del state["log_threshold"]
    missing = [name for name in names if name not in state]
    if missing:
        raise ValueError(f"SAE weights {weights_path} lack {missing}; found keys {sorted(state)[:10]}")
    extra = sorted(set(state) - set(names))
    if extra:
        warnings.warn(f"SAE weights {weights_path}: ignoring unexpected entries {extra}", stacklevel=2)
    d, n = sae_config.d_in, sae_config.n_features
    expected = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,), "threshold": (n,)}
    expected = {name: expected[name] for name in names}
    for name, shape in expected.items():
        value = state[name]
        if not isinstance(value, Tensor):
            raise ValueError(f"SAE weights {weights_path}: {name} is a {type(value).__name__}, expected a tensor")
        if tuple(value.shape) != shape:
            raise ValueError(
                f"SAE weights {weights_path}: {name} has shape {tuple(value.shape)} but the config "
                f"(d_in={d}, d_sae={n}) needs {shape}"
            )
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise ValueError(f"SAE weights {weights_path}: {name} is not a finite floating-point tensor")

    tensors = {name: state[name] for name in names}
    if sae_config.activation == "topk" and config.get("rescale_acts_by_decoder_norm"):
        tensors = _fold_decoder_norm(tensors)
    return sae_config, tensors, _parse_dtype(config.get("dtype")) or state["W_dec"].dtype


def _fold_decoder_norm(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAELens TopK with ``rescale_acts_by_decoder_norm``: pre-activations times ||W_dec[j]||, codes divided by
    it before decoding; folded as W_enc[:, j], b_enc[j] times ||W_dec[j]|| and W_dec[j] divided by it."""
    norms = tensors["W_dec"].norm(dim=-1)  # (n,)
    if not bool((norms > 0).all()):
        raise ValueError("a TopK SAE with rescale_acts_by_decoder_norm has zero decoder rows; its codes are undefined")
    return {**tensors, "W_enc": tensors["W_enc"] * norms, "b_enc": tensors["b_enc"] * norms,
            "W_dec": tensors["W_dec"] / norms[:, None]}
