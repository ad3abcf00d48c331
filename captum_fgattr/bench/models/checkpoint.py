"""The one reader of model checkpoints: a state dict from a ``.safetensors`` or torch file, unwrapped and renamed.

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/ckpt.pt"
    >>> torch.save({"model": {"module.lin_head.weight": torch.zeros(2, 3)}}, path)
    >>> sorted(load_state_dict(path, rename={"lin_head.": "head."}))
    ['head.weight']
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["WRAPPER_KEYS", "STRIP_PREFIXES", "load_state_dict"]

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
