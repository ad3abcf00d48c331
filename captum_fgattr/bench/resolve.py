"""A run description (:mod:`captum_fgattr.bench.config`) resolved into what a study runs on: :func:`load_study_inputs`
(the model, the validation/test splits with their preprocessing, the SAEs, in a fixed order), the loaders it
uses, and the model-sized defaults of a run.

``model.name`` is ``"timm:<name>"``, ``"clip:<open_clip name>"`` (zero-shot over the dataset's class names;
``checkpoint``: a local file, an open_clip pretrained tag, or none for random weights), a plain timm name, or
``"fgattr:<name>"`` (a project model, :data:`~captum_fgattr.bench.models.loading.PROJECT_MODELS`). ``saes`` is a
``layer_{L}/`` folder, a ``{layer: folder}`` map, or the name of a registered SAE source (:data:`SAE_SOURCES`).
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from captum_fgattr.bench.data.layouts import (
    IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, ImageListDataset, Preprocess, check_same_classes, load_dataset,
)
from captum_fgattr.bench.data.kinds import CHANNELS, per_channel
from captum_fgattr.bench.config import DataConfig, ModelConfig, RunConfig
from captum_fgattr.bench.models.folders import model_folder, read_model_folder
from captum_fgattr.bench.models.loading import PROJECT_MODELS
from captum_fgattr.bench.sae_sources import SAE_SOURCES, SAESource
from captum_fgattr.files import content_sha256
from captum_fgattr.sae import SparseAutoencoder, load_sae

__all__ = [
    "StudyInputs", "load_study_inputs", "check_model_classes",
    "SAESource", "SAE_SOURCES", "load_model", "load_split", "preprocessing", "normalisation_note", "load_inputs", "load_saes", "RandomWeightsWarning", "SIZED_KEYS",
    "thesis_layers", "sized_settings", "model_shape", "size_to_model", "dotted_keys", "input_digests",
]

class RandomWeightsWarning(UserWarning):
    """The model has no checkpoint: its attributions and scores describe random weights."""


RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 78 + "\nWARNING: model {name!r} has NO checkpoint (--checkpoint / model.checkpoint): it is RANDOMLY "
    "INITIALISED (seed {seed}).\nEvery attribution, metric and comparison of this run describes random weights, "
    "not a trained model.\n" + "!" * 78)


def _sae_source(saes: str | Mapping[str, str] | None) -> SAESource | None:
    return SAE_SOURCES[saes] if isinstance(saes, str) and saes in SAE_SOURCES else None


def _num_classes(config: ModelConfig, class_names: Sequence[str] | None) -> tuple[int | None, str | None]:
    """The ``num_classes`` to build the configured model with (None: its loader's) and where the model's number of
    classes comes from, in words (None for a project model, whose shape is fixed): the setting, the checkpoint's
    head, a model folder's config.json, the data's class folders (random timm weights) or CLIP's class names."""
    if config.spec.startswith("fgattr:"):
        return config.num_classes, None
    if config.num_classes is not None:
        return config.num_classes, "as set (--num-classes / model.num_classes)"
    if config.spec.startswith("clip:"):
        return None, "CLIP zero-shot over the data's class names"
    if model_folder(config.spec) is not None:
        return None, "from the model folder's config.json"
    if config.checkpoint is not None:
        return None, f"from the checkpoint's head (the rows of head.weight in {config.checkpoint})"
    if class_names:
        return len(class_names), "from the data's class folders (no checkpoint; --num-classes sets another)"
    return None, "timm's default (no checkpoint, no data; --num-classes sets another)"


def load_model(config: ModelConfig, class_names: Sequence[str] | None = None,
               cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> nn.Module:
    """The configured model in eval mode on the CPU; ``class_names`` (the dataset's) are CLIP's classes, and give
    the number of classes of a timm model with random weights and no ``num_classes``; ``cache_dir`` /
    ``progress``: where and how the project's own model is retrained (``checkpoint="retrain"``).

    Prints the model's number of classes and where it comes from (:func:`_num_classes`) on stderr. Warns loudly
    (:class:`RandomWeightsWarning`, on stderr) when the weights are random (no checkpoint).

    Raises:
        ValueError: no or unknown model name, bad checkpoint, CLIP without ``class_names``.
        FileNotFoundError / ConnectionError: see :func:`captum_fgattr.bench.models.loading.load_model`.
    """
    import torch

    from captum_fgattr.bench.models import loading as models

    if not config.name:
        raise ValueError("no model: set model.name (e.g. --model timm:vit_base_patch16_224 or clip:ViT-B-32)")
    if config.random_weights and model_folder(config.spec) is None:  # a checkpoint folder holds its weights
        warnings.warn(RANDOM_WEIGHTS_WARNING.format(name=config.name, seed=config.seed), RandomWeightsWarning, stacklevel=2)
    torch.manual_seed(config.seed)
    num_classes, source = _num_classes(config, class_names)
    model = models.load_model(config.spec, checkpoint=config.checkpoint, num_classes=num_classes,
                              class_names=class_names, img_size=config.img_size, rename=dict(config.rename) or None,
                              cache_dir=cache_dir, progress=progress, **dict(config.kwargs))
    if source is not None:
        outputs = getattr(model, "num_classes", None) or len(class_names or ())
        print(f"model: {outputs} classes, {source}", file=sys.stderr)
    return model


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
    (no checkpoint read); None when that build is not possible (then nothing is sized).

    Raises:
        ValueError: what :func:`~captum_fgattr.bench.models.loading.check_model_kwargs` refuses (checked first).
    """
    import torch

    kind, _, name = config.spec.partition(":")
    num_classes, img_size, kwargs = config.num_classes, config.img_size, dict(config.kwargs)
    folder = model_folder(config.spec)
    if folder is not None:  # a checkpoint folder: the architecture its config.json names
        try:
            spec = read_model_folder(folder)
        except (OSError, ValueError):  # its errors surface when the model is loaded
            return None
        name, num_classes, img_size = spec.architecture, num_classes or spec.num_classes, img_size or spec.img_size
        kwargs = {**spec.model_args, **kwargs}
    if kind == "fgattr":
        return (PROJECT_MODELS[name].depth, PROJECT_MODELS[name].num_patches) if name in PROJECT_MODELS else None
    from captum_fgattr.bench.models.loading import check_model_kwargs

    # ValueError before any constructor sees the kwargs: an unknown timm name or non-ViT, refused or unknown kwargs
    kwargs = check_model_kwargs(f"{kind}:{name}", kwargs)  # a folder's: its architecture and model_args
    try:
        with torch.device("meta"):
            if kind == "timm":
                import timm

                extra = {k: v for k, v in (("num_classes", num_classes), ("img_size", img_size)) if v}
                model = timm.create_model(name, pretrained=False, **extra, **kwargs)
                blocks, grid = model.blocks, model.patch_embed.grid_size
            else:
                import open_clip

                visual = open_clip.create_model(name, pretrained=None, device="meta", **kwargs).visual
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


def load_split(config: DataConfig, split: str, preprocess: Preprocess | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> ImageListDataset:
    """The ``split`` ("val" / "test") images as ``config`` says, with ``preprocess`` (default: the kind's
    standard preprocessing; :func:`preprocessing` gives the one for a model); ``cache_dir``: decoded images of
    layouts that cache them.

    Raises:
        ValueError: see :meth:`DataConfig.location` and :func:`captum_fgattr.bench.data.layouts.load_dataset`;
            separate validation and test folders (``data.val`` / ``data.test``) whose class folders differ (labels
            would shift); or validation and test share their images and the test subset leaves none for
            validation.
        FileNotFoundError / NotADirectoryError: the dataset folder or class-names file is missing.
    """
    root, name = config.location(split)
    if config.kind == "folder" and config.root is None and config.val is not None and config.test is not None:
        check_same_classes(config.val, config.test)  # separate split folders: labels index one class list
    load = partial(load_dataset, config.kind, root, name, seed=config.seed, class_names=config.class_names,
                   preprocess=preprocess, cache_dir=cache_dir)
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


def _for_channels(values: Sequence[float], channels: int) -> Sequence[float] | float:
    """Per-channel RGB statistics for ``channels``-channel images: averaged into one for grayscale."""
    return sum(values) / len(values) if channels == 1 and len(values) > 1 else values


def preprocessing(config: DataConfig, model: nn.Module) -> Preprocess:
    """The preprocessing of ``config``'s images for ``model`` (rules: :class:`DataConfig`), in the model's channel
    count: images are read as grayscale for a model built with ``in_chans=1``, and the default statistics (the
    model's or the layout's) are then the mean of their RGB values; ``data.mean`` / ``data.std`` are taken as given.

    Raises:
        ValueError: the model takes neither 1 nor 3 channels, or ``data.mean`` / ``data.std`` do not match its
            channels (names them).
    """
    from captum_fgattr.adapters import get_adapter

    adapter = get_adapter(model)
    img_size, channels = tuple(adapter.img_size), adapter.in_chans
    if channels not in CHANNELS:
        raise ValueError(f"the model takes {channels}-channel images, but images are read as grayscale (1 channel) or "
                         "RGB (3); build it with in_chans 1 or 3 (--model-kwargs)")
    if config.kind == "folder":
        pretrained = getattr(model, "pretrained_cfg", None) or {}  # timm
        visual = getattr(model, "visual", None)  # open_clip (CLIPZeroShotClassifier)
        mean = pretrained.get("mean") or getattr(visual, "image_mean", None) or IMAGENET_MEAN
        std = pretrained.get("std") or getattr(visual, "image_std", None) or IMAGENET_STD
        base = Preprocess(img_size=img_size, mean=_for_channels(mean, channels), std=_for_channels(std, channels),
                          channels=channels)
    else:
        standard = LAYOUTS[config.kind].preprocess
        base = replace(standard, img_size=img_size, resize=_scaled_resize(standard.resize, standard.img_size, img_size),
                       mean=_for_channels(standard.mean, channels), std=_for_channels(standard.std, channels),
                       channels=channels)
    overrides = {name: getattr(config, name) for name in ("resize", "mean", "std") if getattr(config, name) is not None}
    for name in ("mean", "std"):
        if name in overrides:  # checked here to name the flag
            overrides[name] = per_channel(overrides[name], f"--{name}", channels)
    return replace(base, **overrides)


def normalisation_note(config: DataConfig, preprocess: Preprocess) -> str | None:
    """One line naming the statistics folder images are normalised with when ``data.mean`` / ``data.std`` leave
    them to the model (its defaults, often ImageNet's, rarely those of your images), and the flags that set them;
    None when both are given or the kind has its own statistics."""
    defaulted = [name for name in ("mean", "std") if getattr(config, name) is None]
    if config.kind != "folder" or not defaulted:
        return None
    values = " / ".join(f"{name} {tuple(round(v, 4) for v in getattr(preprocess, name))}" for name in ("mean", "std"))
    grey = " averaged over RGB for its grayscale input" if preprocess.channels == 1 else ""
    return (f"normalisation: {values}; {' and '.join(defaulted)} the model's defaults{grey} (no "
            f"{' / '.join('--' + name for name in defaulted)}); set your images' own with --mean / --std "
            "(data.mean / data.std in a configuration file)")


def check_model_classes(model: nn.Module, data: Dataset, split: str) -> None:
    """Refuse ``split`` data whose number of classes (class folders, empty ones included) differs from the
    model's outputs, where the model says how many it has (``num_classes``, as timm models do): labels are
    indices into the class folders, so an extra folder would give labels the model cannot predict.

    Raises:
        ValueError: names the folder, its class folders and the model's number of outputs.
    """
    classes, outputs = list(getattr(data, "classes", [])), getattr(model, "num_classes", None)
    if isinstance(outputs, int) and not isinstance(outputs, bool) and classes and outputs != len(classes):
        raise ValueError(
            f"{split} data {str(getattr(data, 'root', ''))!r} has {len(classes)} class folders {classes} (empty ones "
            f"count: labels are indices into the sorted class folders) but the model has {outputs} outputs; give "
            f"the data the model's {outputs} classes in its label order, or set the model's num_classes")


def load_inputs(config: RunConfig, split: str) -> tuple[nn.Module, ImageListDataset]:
    """The model and the ``split`` images preprocessed for it, resolved in a fixed order: the layout's class
    names (CLIP classifies over them) -> the model -> its preprocessing -> the dataset (its classes checked
    against the model's outputs: :func:`check_model_classes`); nothing is changed afterwards."""
    class_names = load_split(config.data, split, cache_dir=config.cache_dir).class_names
    model = load_model(config.model, class_names, config.cache_dir, config.evaluation.progress)
    preprocess = preprocessing(config.data, model)
    note = normalisation_note(config.data, preprocess)
    if note is not None:
        print(note, file=sys.stderr)
    data = load_split(config.data, split, preprocess, config.cache_dir)
    check_model_classes(model, data, split)
    return model, data


def load_saes(saes: str | Mapping[str, str] | None, layers: Sequence[int],
              model: nn.Module | None = None) -> dict[int, SparseAutoencoder]:
    """SAEs of ``layers`` (on the CPU) from a ``layer_{L}/`` folder (``fgattr train-sae`` output), a {layer: folder}
    map, or a registered SAE source's name (:data:`SAE_SOURCES`; it may check that ``model`` is the one they were
    trained on).

    Raises:
        ValueError: no SAE configured, none for some of ``layers`` (names them), or an SAE source refusing ``model``.
    """
    layers = list(layers)
    if not layers:
        return {}
    if saes is None:
        raise ValueError(f"FG-TransMM needs SAEs for layers {layers}; set saes (--saes FOLDER)")
    source = _sae_source(saes)
    if source is not None:
        return source.load(layers, model)
    paths = _sae_folders(saes)
    missing = [layer for layer in layers if layer not in paths]
    if missing:
        raise ValueError(f"no SAE for layers {missing} in {saes}; found layers {sorted(paths)}")
    return {layer: load_sae(paths[layer]) for layer in layers}


def _sae_folders(saes: str | Mapping[str, str]) -> dict[int, Path]:
    """{layer: SAE folder} of a {layer: folder} map or of a folder of ``layer_{L}/`` folders.

    Raises:
        ValueError: ``saes`` is not a folder.
    """
    if isinstance(saes, Mapping):
        return {int(layer): Path(path) for layer, path in saes.items()}
    if not Path(saes).is_dir():
        raise ValueError(f"SAE folder {saes} does not exist or is not a folder; expected layer_<L>/ SAE folders in it")
    return {int(d.name[6:]): d for d in Path(saes).iterdir() if d.is_dir() and re.fullmatch(r"layer_\d+", d.name)}


def input_digests(config: RunConfig, cache_file: str | os.PathLike[str] | None = None) -> dict[str, tuple[str, str]]:
    """The sha256 of the input files whose contents decide a run's numbers, as {name: (what, sha256)}: the
    model's checkpoint (a local file or folder; for a project model what it records) and the SAE of every layer
    ``config.saes`` provides (for a named SAE source the digests it records). ``what`` names the
    input in words. Files are hashed with :func:`~captum_fgattr.files.content_sha256` (``cache_file``: its cache).

    Random weights (fingerprinted by their seed with the model's settings), open_clip pretrained tags and
    ``checkpoint="retrain"`` (the recipe's weights) have no file to hash.

    Raises:
        ValueError: ``config.saes`` names no folder (as :func:`load_saes`).
    """
    model, digests = config.model, {}
    kind, _, name = model.spec.partition(":")
    if kind == "fgattr" and name in PROJECT_MODELS:
        recorded = PROJECT_MODELS[name].digest(model.checkpoint)
        if recorded is not None:
            digests["content.checkpoint"] = recorded
    elif model.checkpoint is not None and Path(model.checkpoint).exists():
        digests["content.checkpoint"] = (f"the checkpoint {model.checkpoint}",
                                         content_sha256(model.checkpoint, cache_file))
    elif (folder := model_folder(model.spec)) is not None:
        digests["content.checkpoint"] = (f"the model folder {folder}", content_sha256(folder, cache_file))
    source = _sae_source(config.saes)
    if source is not None:
        for layer, sha256 in source.digests().items():
            digests[f"content.sae.layer_{layer}"] = (f"{source.what} of layer {layer}", sha256)
    elif config.saes is not None:
        for layer, folder in sorted(_sae_folders(config.saes).items()):
            if folder.exists():
                digests[f"content.sae.layer_{layer}"] = (f"the SAE of layer {layer} ({folder})",
                                                         content_sha256(folder, cache_file))
    return digests


@dataclass
class StudyInputs:
    """What a run description resolves to (:func:`load_study_inputs`)."""

    model: nn.Module  # eval mode, on the CPU
    val: Dataset  # validation split, preprocessed for the model
    test: Dataset  # test split, preprocessed for the model
    saes: dict[int, SparseAutoencoder]  # {layer: SAE} for every gated layer of the protocol


def load_study_inputs(config: RunConfig) -> StudyInputs:
    """The model, both splits and the SAEs of ``config`` (class names -> model -> preprocessing -> datasets ->
    SAEs, checked against the model by a named SAE source)."""
    model, val = load_inputs(config, "val")
    test = load_split(config.data, "test", preprocessing(config.data, model), config.cache_dir)
    check_model_classes(model, test, "test")
    return StudyInputs(model, val, test, load_saes(config.saes, config.protocol.gated_layers(), model))
