"""Configuration of a benchmark run (frozen dataclasses), read from JSON/YAML files and flags, and the
loaders it drives: the model, the validation/test splits and the SAEs.

File format (JSON; YAML with the same keys when PyYAML is installed; every section and key optional)::

    {
      "run_dir": "runs/covid",
      "model": {"name": "timm:vit_base_patch16_224", "checkpoint": "vit.pth", "num_classes": 3,
                "img_size": 224, "rename": {"lin_head.": "head."}, "kwargs": {}},
      "data": {"kind": "covid-qu-ex", "root": "data/COVID-QU-Ex"},
      "saes": "saes/",                     # folder with layer_{L}/ (fgattr train-sae), or {"9": "path", ...}
      "protocol": {"layers": [2, 3], "multi_layers": [[2, 3]], "val_images": 500, ...},   # Protocol fields
      "evaluation": {"batch_size": 16, "device": "cuda", "metrics": {"saco_groups": 10}, ...}  # EvalConfig
    }

``model.name`` is ``"timm:<name>"``, ``"clip:<open_clip name>"`` (zero-shot over the dataset's class names;
``checkpoint``: a local file, an open_clip pretrained tag, or none for random weights) or a plain timm name.
``data`` (:class:`DataConfig`) per dataset of the study (docs/method.md §5)::

    {"val": "images/val", "test": "images/test"}                   # "folder" (default): <class>/<image> folders
    {"kind": "covid-qu-ex", "root": "COVID-QU-Ex"}                  # official Val / Test folders
    {"kind": "hyperkvasir", "root": "hyper-kvasir", "seed": 42}     # seeded 80/10/10 split: val / test
    {"kind": "imagenet", "root": "imagenet", "class_names": "LOC_synset_mapping.txt"}
                                                                    # test: 10,000 of val/ (seed 42); val: the rest

Unknown keys raise a ``ValueError`` naming them and the accepted ones.
"""
from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from captum_fgattr.bench.data import (
    IMAGENET_MEAN, IMAGENET_STD, IMAGENET_SUBSET, LAYOUTS, ImageListDataset, Preprocess, build_transform, load_dataset,
)
from captum_fgattr.bench.evaluate import EvalConfig, MetricConfig
from captum_fgattr.bench.experiments import Protocol
from captum_fgattr.sae import SparseAutoencoder, load_sae

__all__ = [
    "ModelConfig", "DataConfig", "RunConfig", "SPLITS", "DEFAULT_SPLITS", "DEFAULT_SUBSETS", "read_config_file",
    "load_model", "load_split", "preprocessing", "load_inputs", "load_saes", "RandomWeightsWarning", "SIZED_KEYS",
    "thesis_layers", "sized_settings", "model_shape", "size_to_model", "dotted_keys",
]

SPLITS: tuple[str, ...] = ("val", "test")
#: split names below ``data.root`` when ``data.val`` / ``data.test`` are not given (else the split's own name):
#: ImageNet's labelled class-folder set is its validation set, so the test images come from it too
DEFAULT_SPLITS: Mapping[str, Mapping[str, str]] = {"imagenet": {"val": "val", "test": "val"}}
#: ``data.subset`` when not given: the study's ImageNet test subset (docs/method.md §5, seed 42)
DEFAULT_SUBSETS: Mapping[str, int] = {"imagenet": IMAGENET_SUBSET}


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
    """A classifier built with :func:`captum_fgattr.bench.models.load_model` (timm ViT or CLIP zero-shot)."""

    name: str = ""  # "timm:<name>", "clip:<open_clip name>" or a plain timm name, e.g. "vit_base_patch16_224"
    checkpoint: str | None = None  # local file (CLIP: or an open_clip pretrained tag); None = random weights
    num_classes: int | None = None  # timm head width (default: the checkpoint's); CLIP: the dataset's classes
    img_size: int | None = None
    rename: Mapping[str, str] = field(default_factory=dict)  # timm checkpoint key-prefix renames ({}: lin_head.->head.)
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # further timm / open_clip create_model arguments
    seed: int = 0  # initialisation seed when there is no checkpoint

    @property
    def spec(self) -> str:
        """``name`` as a :func:`~captum_fgattr.bench.models.load_model` spec (plain names are timm's)."""
        return self.name if ":" in self.name else f"timm:{self.name}"


@dataclass(frozen=True)
class DataConfig:
    """The validation and test images (docs/method.md §5) and their preprocessing.

    * ``kind="folder"`` (default): ``val`` / ``test`` are image folders ``<class>/<image>``; or, with ``root``,
      sub-folder names of ``root`` (default "val" / "test").
    * a published layout (``"covid-qu-ex"``, ``"hyperkvasir"``, ``"imagenet"``; see
      :mod:`captum_fgattr.bench.data`): ``root`` is the dataset folder and ``val`` / ``test`` are split names
      (default: :data:`DEFAULT_SPLITS`, else "val" / "test"). COVID-QU-Ex: the official Val / Test folders;
      HyperKvasir: the stratified 80/10/10 split seeded by ``seed``; ImageNet: only the class-folder
      validation set exists, so both name it.

    ``subset`` draws (with ``seed``) the images of the **test** split; the validation images are subsampled by
    ``protocol.val_images`` instead. When ``val`` and ``test`` name the same images (ImageNet by default), the
    validation split is the rest of them, disjoint from the test subset, so no configuration is selected on
    test images: ImageNet's test set is the study's 10,000 images (seed 42) and the sweeps draw their
    ``protocol.val_images`` from the other 40,000.

    Preprocessing: the kind's (e.g. COVID-QU-Ex resize 256 -> crop 224, mean 0.56 / std 0.21), its resize scaled
    when the model's input is not 224 pixels; "folder": resize to the model's input size and the model's own
    normalisation. ``resize`` / ``mean`` / ``std`` override either.
    """

    kind: str = "folder"  # dataset layout, one of bench.data.LAYOUTS
    root: str | None = None  # dataset folder (required for the published layouts)
    val: str | None = None  # validation folder ("folder" without root) or split name (sweeps, selection)
    test: str | None = None  # test folder ("folder" without root) or split name
    subset: int | None = None  # test images drawn with ``seed`` (None: all; imagenet: DEFAULT_SUBSETS)
    seed: int = 42  # seed of ``subset`` and of seeded splits (HyperKvasir)
    class_names: str | None = None  # class-names file (formats: bench.data); default: folder names
    resize: int | None = None  # shorter side before the center crop (default: the kind's, see above)
    mean: tuple[float, ...] | None = None  # normalisation (default: the kind's, see above)
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"data.kind={self.kind!r}; expected one of {sorted(LAYOUTS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"data.seed={self.seed!r}; expected an int")
        subset = self.subset
        if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
            raise ValueError(f"data.subset={subset!r}; expected None (all test images) or an int >= 1")

    def location(self, split: str) -> tuple[str, str | None]:
        """``(folder, split name below it or None)`` of ``split`` ("val" / "test"), as :func:`load_dataset` takes.

        Raises:
            ValueError: unknown split; no ``root`` for a published layout; no folder for a "folder" split.
        """
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
        given = getattr(self, split)
        if self.root is not None:
            return self.root, given or DEFAULT_SPLITS.get(self.kind, {}).get(split, split)
        if self.kind != "folder":
            raise ValueError(f"data.kind={self.kind!r} needs data.root, the dataset folder (--data-root DIR)")
        if given is None:
            raise ValueError(f"no {split} data: set data.{split} (e.g. --{split}-data FOLDER) or data.root")
        return given, None

    @property
    def test_subset(self) -> int | None:
        """``subset``, or the kind's default (:data:`DEFAULT_SUBSETS`)."""
        return self.subset if self.subset is not None else DEFAULT_SUBSETS.get(self.kind)

    def same_images(self) -> bool:
        """Whether ``val`` and ``test`` name the same images (then validation = the rest of the test subset)."""
        if self.root is None and (self.val is None or self.test is None):
            return False
        return self.location("val") == self.location("test")

    def fingerprint(self, split: str) -> dict[str, Any]:
        """The settings that decide the images of ``split`` and their preprocessing (checked by the run's store).

        Settings at their defaults are left out, so run folders from before they existed still resume.
        """
        root, name = self.location(split)
        subset = self.test_subset if split == "test" or self.same_images() else None
        extra = {"kind": (self.kind, "folder"), "split": (name, None), "subset": (subset, None),
                 "seed": (self.seed, 42), "class_names": (self.class_names, None)}
        return {"root": root, "resize": self.resize, "mean": self.mean, "std": self.std,
                **{key: value for key, (value, default) in extra.items() if value != default}}


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``fgattr sweep / evaluate / run`` needs; stored with the run (``config.json``, and the store)."""

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


class RandomWeightsWarning(UserWarning):
    """The model has no checkpoint: its attributions and scores describe random weights."""


RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 78 + "\nWARNING: model {name!r} has NO checkpoint (--checkpoint / model.checkpoint): it is RANDOMLY "
    "INITIALISED (seed {seed}).\nEvery attribution, metric and comparison of this run describes random weights, "
    "not a trained model.\n" + "!" * 78)


def load_model(config: ModelConfig, class_names: Sequence[str] | None = None) -> nn.Module:
    """The configured model in eval mode on the CPU; ``class_names`` (the dataset's) are CLIP's classes.

    Warns loudly (:class:`RandomWeightsWarning`, on stderr) when there is no checkpoint.

    Raises:
        ValueError: no or unknown model name, bad checkpoint, CLIP without ``class_names``.
        FileNotFoundError / ConnectionError: see :func:`captum_fgattr.bench.models.load_model`.
    """
    import torch

    from captum_fgattr.bench import models

    if not config.name:
        raise ValueError("no model: set model.name (e.g. --model timm:vit_base_patch16_224 or clip:ViT-B-32)")
    if config.checkpoint is None:
        warnings.warn(RANDOM_WEIGHTS_WARNING.format(name=config.name, seed=config.seed), RandomWeightsWarning, stacklevel=2)
    torch.manual_seed(config.seed)
    return models.load_model(config.spec, checkpoint=config.checkpoint, num_classes=config.num_classes,
                             class_names=class_names, img_size=config.img_size, rename=dict(config.rename) or None,
                             **dict(config.kwargs))


#: run settings that default to values sized by the model when neither the file nor a flag sets them
SIZED_KEYS: tuple[str, ...] = ("protocol.layers", "protocol.multi_layers", "evaluation.metrics.fc_subset_size")
#: the thesis's multi-layer configurations, as positions in a 12-block ViT
_THESIS_MULTI = ((2, 3, 4), (4, 6, 7), (6, 9, 10))


def thesis_layers(depth: int) -> list[int]:
    """The thesis's sweep layers 2..10 of 12 blocks scaled to ``depth``: round(depth / 6) .. depth − 2 (the
    last block's patch tokens get no gradient with a class-token head), e.g. 1..4 of 6."""
    last = max(0, depth - 2)
    return list(range(min(max(0, round(depth / 6)), last), last + 1))


def sized_settings(depth: int, patches: int) -> dict[str, Any]:
    """:data:`SIZED_KEYS` for a ViT of ``depth`` blocks and ``patches`` patch tokens: the thesis's layers and
    multi-layer configurations scaled by depth / 12, and its FC subset of 20 of 196 patches scaled by
    patches / 196.

    Example::

        >>> sized_settings(12, 196)["protocol.multi_layers"], sized_settings(12, 196)["evaluation.metrics.fc_subset_size"]
        ([[2, 3, 4], [4, 6, 7], [6, 9, 10]], 20)
        >>> sized_settings(6, 64)
        {'protocol.layers': [1, 2, 3, 4], 'protocol.multi_layers': [[1, 2], [2, 3, 4], [3, 4]], 'evaluation.metrics.fc_subset_size': 7}
    """
    last = max(0, depth - 2)
    multi = []
    for positions in _THESIS_MULTI:
        layers = sorted({min(round(p * depth / 12), last) for p in positions})
        if len(layers) > 1 and layers not in multi:
            multi.append(layers)
    return {"protocol.layers": thesis_layers(depth), "protocol.multi_layers": multi or [thesis_layers(depth)],
            "evaluation.metrics.fc_subset_size": max(1, round(patches * 20 / 196))}


def model_shape(config: ModelConfig) -> tuple[int, int] | None:
    """``(depth, patch tokens)`` of the configured model, from a weightless build on the meta device
    (no checkpoint read); None when that build is not possible (then nothing is sized)."""
    import torch

    kind, _, name = config.spec.partition(":")
    try:
        with torch.device("meta"):
            if kind == "timm":
                import timm

                extra = {k: v for k, v in (("num_classes", config.num_classes), ("img_size", config.img_size)) if v}
                model = timm.create_model(name, pretrained=False, **extra, **dict(config.kwargs))
                blocks, grid = model.blocks, model.patch_embed.grid_size
            else:
                import open_clip

                visual = open_clip.create_model(name, pretrained=None, device="meta", **dict(config.kwargs)).visual
                blocks, grid = visual.transformer.resblocks, visual.grid_size
    except Exception:  # unknown names and exotic models: their errors surface when the model is loaded
        return None
    return len(blocks), int(grid[0]) * int(grid[1])


def dotted_keys(values: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every key of a nested configuration mapping in dotted form, sections included (``{"a": {"b": 1}}``
    -> ``{"a", "a.b"}``)."""
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, Mapping):
            keys |= dotted_keys(value, f"{prefix}{key}.")
    return keys


def size_to_model(config: RunConfig, given: Collection[str]) -> tuple[RunConfig, dict[str, Any]]:
    """``config`` with the :data:`SIZED_KEYS` not in ``given`` (keys the file or flags set) sized by the model
    (:func:`sized_settings`); returns it and the sized values (empty when nothing was sized)."""
    missing = [key for key in SIZED_KEYS if key not in given]
    shape = model_shape(config.model) if config.model.name and missing else None
    if shape is None:
        return config, {}
    sized = {key: value for key, value in sized_settings(*shape).items() if key in missing}
    return config.merged(sized), sized


def load_split(config: DataConfig, split: str) -> ImageListDataset:
    """The ``split`` ("val" / "test") images as ``config`` says, with the kind's standard preprocessing.

    Raises:
        ValueError: see :meth:`DataConfig.location` and :func:`captum_fgattr.bench.data.load_dataset`; or
            validation and test share their images and the test subset leaves none for validation.
        FileNotFoundError / NotADirectoryError: the dataset folder or class-names file is missing.
    """
    root, name = config.location(split)
    load = partial(load_dataset, config.kind, root, name, seed=config.seed, class_names=config.class_names)
    if split == "test":
        return load(subset=config.test_subset)
    if not config.same_images():
        return load()
    if config.test_subset is None:
        raise ValueError(f"data.val and data.test name the same images ({root!r}, split {name!r}); set data.subset "
                         "(--subset N) so that validation uses the images outside the test subset")
    full, held = load(), set(load(subset=config.test_subset).ids)
    samples = [sample for sample, image_id in zip(full.samples, full.ids) if image_id not in held]
    if not samples:
        raise ValueError(f"no validation images: the test subset ({config.test_subset}) takes all {len(full)} "
                         f"images of {root!r} (split {name!r}); lower data.subset")
    return ImageListDataset(full.root, samples, full.classes, full.transform, class_names=full.class_names)


def _scaled_resize(
    resize: int | tuple[int, int] | None, crop: int | tuple[int, int], img_size: tuple[int, int],
) -> int | tuple[int, int] | None:
    """A layout's ``resize`` (before a ``crop`` center crop) for a crop of ``img_size``, same ratio to the crop."""
    old = (crop, crop) if isinstance(crop, int) else tuple(crop)
    if resize is None or old == img_size:
        return resize
    if isinstance(resize, int):
        return max(1, round(resize * min(img_size) / min(old)))
    return tuple(max(1, round(r * new / o)) for r, new, o in zip(resize, img_size, old))  # type: ignore[return-value]


def preprocessing(config: DataConfig, model: nn.Module) -> Preprocess:
    """The preprocessing of ``config``'s images for ``model`` (rules: :class:`DataConfig`)."""
    from captum_fgattr.adapters import get_adapter

    img_size = tuple(get_adapter(model).img_size)
    if config.kind == "folder":
        pretrained = getattr(model, "pretrained_cfg", None) or {}  # timm
        visual = getattr(model, "visual", None)  # open_clip (CLIPZeroShotClassifier)
        base = Preprocess(img_size=img_size,
                          mean=pretrained.get("mean") or getattr(visual, "image_mean", None) or IMAGENET_MEAN,
                          std=pretrained.get("std") or getattr(visual, "image_std", None) or IMAGENET_STD)
    else:
        standard = LAYOUTS[config.kind].preprocess
        base = replace(standard, img_size=img_size, resize=_scaled_resize(standard.resize, standard.img_size, img_size))
    overrides = {name: getattr(config, name) for name in ("resize", "mean", "std") if getattr(config, name) is not None}
    return replace(base, **overrides)


def load_inputs(config: RunConfig, split: str) -> tuple[nn.Module, ImageListDataset]:
    """The model and the ``split`` images preprocessed for it; CLIP classifies over the split's class names."""
    data = load_split(config.data, split)
    model = load_model(config.model, class_names=data.class_names)
    data.transform = build_transform(preprocessing(config.data, model))
    return model, data


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
        if not Path(saes).is_dir():
            raise ValueError(f"SAE folder {saes} does not exist or is not a folder; expected layer_<L>/ SAE folders in it")
        paths = {int(d.name[6:]): d for d in Path(saes).iterdir() if d.is_dir() and re.fullmatch(r"layer_\d+", d.name)}
    missing = [layer for layer in layers if layer not in paths]
    if missing:
        raise ValueError(f"no SAE for layers {missing} in {saes}; found layers {sorted(paths)}")
    return {layer: load_sae(paths[layer]) for layer in layers}
