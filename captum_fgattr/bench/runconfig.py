"""Configuration of a benchmark run (frozen dataclasses), read from JSON/YAML files and flags, and the
loaders it drives: the model, the validation/test image folders and the SAEs.

File format (JSON; YAML with the same keys when PyYAML is installed; every section optional)::

    {
      "run_dir": "runs/covid",
      "model": {"name": "vit_base_patch16_224", "checkpoint": "vit.pth", "num_classes": 3,
                "img_size": 224, "rename": {"lin_head.": "head."}, "kwargs": {}},
      "data": {"val": "COVID/Val", "test": "COVID/Test", "resize": 256, "mean": [0.56], "std": [0.21]},
      "saes": "saes/",                     # folder with layer_{L}/ (fgattr train-sae), or {"9": "path", ...}
      "protocol": {"layers": [2, 3], "multi_layers": [[2, 3]], "val_images": 500, ...},   # Protocol fields
      "evaluation": {"batch_size": 16, "device": "cuda", "metrics": {"saco_groups": 10}, ...}  # EvalConfig
    }

Unknown keys raise a ``ValueError`` naming them and the accepted ones.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from captum_fgattr.bench.evaluate import EvalConfig, MetricConfig
from captum_fgattr.bench.experiments import Protocol
from captum_fgattr.sae import SparseAutoencoder, load_sae

__all__ = ["ModelConfig", "DataConfig", "RunConfig", "read_config_file", "load_model", "load_split", "load_saes"]


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)`` with unknown keys reported by name."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {where}; expected some of {sorted(names)}")
    return cls(**values)


@dataclass(frozen=True)
class ModelConfig:
    """A timm ViT built with :func:`captum_fgattr.bench.models.load_timm_model` (never downloaded)."""

    name: str = ""  # timm model name, e.g. "vit_base_patch16_224"
    checkpoint: str | None = None  # local state dict; None = random weights (seeded by ``seed``)
    num_classes: int | None = None
    img_size: int | None = None
    rename: Mapping[str, str] = field(default_factory=dict)  # checkpoint key-prefix renames
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # further timm.create_model arguments
    seed: int = 0  # initialisation seed when there is no checkpoint


@dataclass(frozen=True)
class DataConfig:
    """Image folders ``root/<class>/<image>`` per split, and their preprocessing."""

    val: str | None = None  # validation folder (sweeps, selection)
    test: str | None = None  # test folder
    resize: int | None = None  # shorter side before the center crop (default: the model's input size)
    mean: tuple[float, ...] | None = None  # normalisation (default: the model's pretrained cfg)
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``fgattr sweep / evaluate / run`` needs; stored with the run (``config.json``)."""

    run_dir: str = "runs/fgattr"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    saes: str | Mapping[str, str] | None = None  # folder of layer_{L}/ SAEs, or {layer: SAE folder}
    protocol: Protocol = field(default_factory=Protocol)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from nested plain values (a config file), checking every key."""
        sections = {"model": ModelConfig, "data": DataConfig, "protocol": Protocol}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in the configuration; expected some of {sorted(names)}")
        kwargs: dict[str, Any] = {k: v for k, v in values.items() if k not in sections and k != "evaluation"}
        for name, section in sections.items():
            if name in values:
                kwargs[name] = _build(section, values[name], f"configuration section {name!r}")
        if "evaluation" in values:
            evaluation = dict(values["evaluation"])
            evaluation["metrics"] = _build(MetricConfig, evaluation.get("metrics", {}), "section 'evaluation.metrics'")
            kwargs["evaluation"] = _build(EvalConfig, evaluation, "configuration section 'evaluation'")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values (round-trips through :meth:`from_dict`)."""
        return json.loads(json.dumps(asdict(self)))

    def merged(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with ``overrides`` ({"section.key": value} or {"key": value}) applied; None values skipped."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            *path, key = dotted.split(".")
            target = values
            for part in path:
                target = target[part]
            target[key] = value
        return RunConfig.from_dict(values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Plain values from a JSON (``.json``) or YAML (``.yaml`` / ``.yml``) configuration file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ImportError("YAML configuration files need PyYAML (pip install pyyaml); or use JSON") from err
        values = yaml.safe_load(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"configuration file {path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"configuration file {path} must hold a mapping of sections")
    return values


def load_model(config: ModelConfig) -> nn.Module:
    """The configured timm ViT in eval mode on the CPU."""
    import torch

    from captum_fgattr.bench.models import load_timm_model

    if not config.name:
        raise ValueError("no model: set model.name (e.g. --model vit_base_patch16_224)")
    torch.manual_seed(config.seed)
    return load_timm_model(config.name, config.checkpoint, num_classes=config.num_classes, img_size=config.img_size,
                           rename=dict(config.rename) or None, **dict(config.kwargs))


def load_split(config: DataConfig, split: str, model: nn.Module) -> Dataset:
    """The ``split`` ("val" / "test") image folder, preprocessed for ``model``."""
    from captum_fgattr.adapters import get_adapter
    from captum_fgattr.bench.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, Preprocess, build_transform

    root = getattr(config, split)
    if root is None:
        raise ValueError(f"no {split} data: set data.{split} (e.g. --{split}-data FOLDER)")
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    preprocess = Preprocess(
        img_size=tuple(get_adapter(model).img_size), resize=config.resize,
        mean=tuple(config.mean or pretrained.get("mean", IMAGENET_MEAN)),
        std=tuple(config.std or pretrained.get("std", IMAGENET_STD)))
    return ImageFolderDataset(root, transform=build_transform(preprocess))


def load_saes(saes: str | Mapping[str, str] | None, layers: list[int]) -> dict[int, SparseAutoencoder]:
    """SAEs of ``layers`` from a ``layer_{L}/`` folder (``fgattr train-sae`` output) or a {layer: folder} map.

    Raises:
        ValueError: no SAE configured, or none for some of ``layers`` (names them).
    """
    if not layers:
        return {}
    if saes is None:
        raise ValueError(f"FG-TransMM needs SAEs for layers {layers}; set saes (--saes FOLDER)")
    if isinstance(saes, Mapping):
        paths = {int(layer): Path(path) for layer, path in saes.items()}
    else:
        paths = {layer: Path(saes) / f"layer_{layer}" for layer in layers if (Path(saes) / f"layer_{layer}").is_dir()}
    missing = [layer for layer in layers if layer not in paths]
    if missing:
        raise ValueError(f"no SAE for layers {missing} in {saes}; found layers {sorted(paths)}")
    return {layer: load_sae(paths[layer]) for layer in layers}
