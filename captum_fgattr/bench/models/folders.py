"""A downloaded timm checkpoint folder as a model spec (``--model path/to/folder``).

The layout of timm's ``save_for_hf`` and of timm models on the Hugging Face Hub::

    config.json          {"architecture": "vit_base_patch16_224", "num_classes": 2,
                          "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [...], "std": [...], ...},
                          "model_args": {...}}   (model_args optional; older files keep the pretrained_cfg keys
                                                  at the top level)
    model.safetensors    or pytorch_model.bin (read with torch.load(weights_only=True))

:func:`read_model_folder` only reads and checks the folder; :func:`captum_fgattr.bench.models.loading.load_model`
builds the model from it (the architecture, its ``model_args``, ``num_classes``, the input size, and the mean /
std as the model's ``pretrained_cfg``, which the preprocessing of image folders reads).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_NAME", "WEIGHT_NAMES", "ModelFolder", "model_folder", "read_model_folder"]

CONFIG_NAME = "config.json"
WEIGHT_NAMES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")  # preferred first
_LAYOUT = (f"timm's checkpoint-folder layout: {CONFIG_NAME} (architecture, num_classes, pretrained_cfg with mean, "
           f"std, input_size) beside {' or '.join(WEIGHT_NAMES)}")


@dataclass(frozen=True)
class ModelFolder:
    """What a checkpoint folder says about its model."""

    path: Path
    architecture: str  # timm model name
    weights: Path  # model.safetensors or pytorch_model.bin
    num_classes: int | None  # None: the weights' head decides
    img_size: tuple[int, int]  # (H, W) of pretrained_cfg.input_size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_args: dict[str, Any]  # further timm.create_model arguments the weights were built with (not the two above;
    #                             untrusted like model.kwargs: checked by loading.check_model_kwargs)

    def preprocessing(self) -> dict[str, Any]:
        """The ``pretrained_cfg`` entries the model is given (the preprocessing of image folders reads them)."""
        return {"mean": self.mean, "std": self.std, "input_size": (len(self.mean), *self.img_size)}


def model_folder(spec: str) -> Path | None:
    """The existing folder ``spec`` names (a path, also after ``timm:``), else None."""
    name = spec.removeprefix("timm:")
    return Path(name) if name and Path(name).is_dir() else None


def _floats(value: Any, key: str, path: Path) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{path}: pretrained_cfg.{key}={value!r}; expected a list of numbers")
    return tuple(float(v) for v in value)


def read_model_folder(folder: str | os.PathLike[str]) -> ModelFolder:
    """Read and check a checkpoint folder (module docstring).

    Raises:
        FileNotFoundError: no ``config.json`` or no weights file in the folder.
        ValueError: ``config.json`` is not valid JSON or lacks the architecture, mean, std or input size.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no {CONFIG_NAME}; expected {_LAYOUT}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt {config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    pretrained = config.get("pretrained_cfg", config)  # older exports: the pretrained_cfg keys at the top level
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"{config_path} names no timm 'architecture' (e.g. \"vit_base_patch16_224\"); expected {_LAYOUT}")
    missing = [key for key in ("mean", "std", "input_size") if key not in pretrained]
    if missing:
        raise ValueError(f"{config_path}: pretrained_cfg lacks {missing}, so the model's preprocessing is unknown; "
                         "add them (the values the weights were trained with)")
    input_size = pretrained["input_size"]
    if not isinstance(input_size, (list, tuple)) or len(input_size) != 3 or not all(isinstance(v, int) and v > 0
                                                                                  for v in input_size):
        raise ValueError(f"{config_path}: pretrained_cfg.input_size={input_size!r}; expected [channels, height, width]")
    mean, std = _floats(pretrained["mean"], "mean", config_path), _floats(pretrained["std"], "std", config_path)
    if not len(mean) == len(std) == input_size[0]:
        raise ValueError(f"{config_path}: mean {list(mean)} and std {list(std)} need one value per channel "
                         f"({input_size[0]}, from input_size)")
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ValueError(f"{config_path}: model_args={model_args!r}; expected an object of timm.create_model arguments")
    num_classes = config.get("num_classes", pretrained.get("num_classes", model_args.get("num_classes")))
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"{config_path}: num_classes={num_classes!r}; expected a positive int")
    model_args = {k: v for k, v in model_args.items() if k not in ("num_classes", "img_size")}  # from the fields above
    weights = next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"model folder {folder} has no weights: expected {' or '.join(WEIGHT_NAMES)}")
    return ModelFolder(folder, architecture, weights, num_classes, (input_size[1], input_size[2]), mean, std,
                       dict(model_args))
