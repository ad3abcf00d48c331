"""Model construction for the benchmark: timm ViTs from local checkpoints (never downloaded).

Example:
    >>> m = load_timm_model("vit_tiny_patch16_224", num_classes=3, img_size=32)
    >>> m.head.out_features, m.training
    (3, False)
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_timm_model", "load_state_dict"]

#: wrappers around a state dict in common training checkpoints, tried in this order
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "module", "net")
#: prefixes added by DataParallel / DistributedDataParallel / torch.compile
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def load_state_dict(path: str | os.PathLike[str], rename: Mapping[str, str] | None = None) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file or a torch file (``weights_only=True``).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``-style wrappers, strips ``module.`` /
    ``_orig_mod.`` prefixes and applies ``rename`` (key prefix -> new prefix, e.g.
    ``{"lin_head.": "head."}``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors' own error types
            raise ValueError(f"corrupt checkpoint {path}: cannot read as safetensors ({err})") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # garbage bytes surface as many error types
            first = str(err).splitlines()[0] if str(err) else ""
            raise ValueError(
                f"cannot read checkpoint {path} with torch.load(weights_only=True): corrupt, or it holds "
                f"objects other than tensors / plain containers ({type(err).__name__}: {first})"
            ) from err
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"checkpoint {path} holds no state dict (got {type(obj).__name__})")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state "
                f"dict, possibly wrapped under one of {list(WRAPPER_KEYS)}"
            )
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        for old, new in (rename or {}).items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value
    return state


def load_timm_model(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    rename: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)``, then the local ``checkpoint`` if given.

    Args:
        name: timm model name, e.g. ``"vit_base_patch16_224"``.
        checkpoint: local state dict (``.safetensors`` or torch file); no hub download ever.
        num_classes, img_size: passed to timm when given (must match the checkpoint).
        rename: key-prefix renames applied to the checkpoint (see :func:`load_state_dict`).
        **kwargs: further ``timm.create_model`` arguments.

    Returns:
        The model in eval mode on the CPU.

    Raises:
        ValueError: unknown model name, unreadable checkpoint, missing / unexpected / mis-shaped keys.
    """
    import timm

    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; e.g. {close}")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        state = load_state_dict(checkpoint, rename=rename)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {checkpoint} does not match timm model {name!r}: missing keys {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''} (check num_classes / img_size / rename)"
            )
        bad = [f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
        if bad:
            raise ValueError(
                f"checkpoint {checkpoint} has shapes that do not match timm model {name!r} "
                f"(check num_classes / img_size): {bad[:5]}"
            )
        model.load_state_dict(state)
    return model.eval()
