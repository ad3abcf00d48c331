"""Model construction for the benchmark: timm ViTs from local checkpoints, open_clip CLIP zero-shot.

Entry point: :func:`load_model` ``(spec, *, checkpoint=None, num_classes=None, class_names=None,
img_size=None, rename=None, templates=("a photo of a {}",), device="cpu", **kwargs) -> nn.Module``
(eval mode, on ``device``; logits ``(B, C)`` for images ``(B, 3, H, W)``):

* ``"timm:<name>"`` (e.g. ``timm:vit_base_patch16_224``): ``timm.create_model(name, pretrained=False)``
  plus a local state dict (``.safetensors`` or torch file; never downloaded). Wrappers
  (``{"state_dict": ...}``, ``{"model": ...}``, ...), ``module.`` / ``_orig_mod.`` prefixes and one
  outer module prefix (e.g. ``vit.`` of a wrapper module) are removed; ``rename`` maps key prefixes
  (default :data:`DEFAULT_RENAMES`: the thesis checkpoints' ``lin_head.*`` -> ``head.*``);
  ``num_classes`` defaults to the rows of the checkpoint's ``head.weight``. Only timm ``VisionTransformer`` models
  (subclasses included) are accepted: the attribution methods need their attention adapter.
* ``"clip:<name>"`` (e.g. ``clip:ViT-B-32``): an open_clip model as a
  :class:`~captum_fgattr.clip.CLIPZeroShotClassifier` over ``class_names`` (e.g. ``dataset.class_names``)
  with the prompt ``templates``. ``checkpoint`` is a local file (read weights-only by
  :func:`~captum_fgattr.bench.models.checkpoint.load_state_dict` into ``open_clip.create_model(name,
  pretrained=None)``; open_clip never reads the file) or an open_clip pretrained tag such as ``"openai"``
  (downloaded by open_clip: needs the network or its cache; then read the same way); None = random weights.
* a checkpoint folder (``path/to/folder``, also ``timm:path/to/folder``): ``config.json`` (timm's ``architecture``,
  ``num_classes``, ``pretrained_cfg`` with mean / std / input size) + ``model.safetensors`` / ``pytorch_model.bin``
  (:mod:`captum_fgattr.bench.models.folders`), built as ``timm:<architecture>`` with its weights.
* ``"fgattr:<name>"``: a model the project defines itself (:data:`PROJECT_MODELS`, e.g. the embedded default's
  ViT, registered by :mod:`captum_fgattr.bench.default`): a fixed shape, ``checkpoint`` read by its own loader.

Model kwargs (``model.kwargs`` / ``--model-kwargs``) are untrusted input: :func:`check_model_kwargs` accepts
only architecture arguments of the model's constructor and refuses, by name (:func:`check_kwarg_names`, which
needs no model), the loaders' switches
(:data:`LOADER_SWITCHES`: ``pretrained``, ``weights_only``, ``checkpoint_path``, ...) and :func:`load_model`'s own
settings (:data:`OWN_SETTINGS`: ``img_size``, ``num_classes``, ``device``, ...). Every checkpoint is read
weights-only.

Example:
    >>> m = load_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=32)
    >>> m.head.out_features, m.training
    (3, False)
"""
from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from captum_fgattr.bench.models.checkpoint import load_state_dict
from captum_fgattr.bench.models.folders import model_folder, read_model_folder
from captum_fgattr.bench.models.project import PROJECT_MODELS, ProjectModel
from captum_fgattr.clip import DEFAULT_TEMPLATES, CLIPZeroShotClassifier

__all__ = ["ProjectModel", "PROJECT_MODELS", "DEFAULT_RENAMES", "LOADER_SWITCHES", "OWN_SETTINGS", "check_device", "check_kwarg_names", "check_model_kwargs",
           "load_model", "load_timm_model", "load_clip_classifier"]

#: key-prefix renames :func:`load_model` applies to timm checkpoints unless told otherwise
DEFAULT_RENAMES: Mapping[str, str] = {"lin_head.": "head."}
MODEL_KINDS: tuple[str, ...] = ("timm", "clip", "fgattr")
#: arguments of timm / open_clip (``create_model``, model configs, tower configs) that load, fetch or select weights
#: or turn off the weights-only safeguard: never taken from model kwargs, at any depth
LOADER_SWITCHES: frozenset[str] = frozenset({
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "pretrained_hf", "pretrained_image",
    "pretrained_text", "pretrained_image_path", "pretrained_text_path", "timm_model_pretrained", "hf_model_pretrained",
    "hf_model_name", "hf_tokenizer_name", "checkpoint_path", "cache_dir", "weights_only", "load_weights",
    "require_pretrained",
})
#: settings :func:`load_model` takes itself (or derives), which model kwargs must not give again -> where to set them
OWN_SETTINGS: Mapping[str, str] = {
    "img_size": "model.img_size (--img-size)", "force_image_size": "model.img_size (--img-size)",
    "num_classes": "model.num_classes (--num-classes)", "checkpoint": "model.checkpoint (--checkpoint)",
    "rename": "model.rename", "class_names": "the dataset's class names", "templates": "load_model(templates=...)",
    "device": "evaluation.device (--device)", "progress": "evaluation.progress", "model_name": "model.name (--model)",
    "cast_dtype": "the open_clip kwarg precision",
}
#: device strings :func:`check_device` accepts
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")
_T = TypeVar("_T")


def check_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device`; ValueError unless it is ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (the
    one-line error names the setting ``name``, e.g. ``evaluation.device='gpu'; expected cpu, cuda, ...``).

    Example:
        >>> check_device("cuda:1")
        device(type='cuda', index=1)
    """
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or not DEVICE_PATTERN.fullmatch(text):
        raise ValueError(f"{name}={device!r}; expected cpu, cuda, cuda:N (N = GPU index) or mps")
    return torch.device(text)


def _refuse_switches(kwargs: Mapping[str, Any], where: str) -> None:
    """ValueError naming the first :data:`LOADER_SWITCHES` key in ``kwargs`` or a mapping nested in it."""
    for key, value in kwargs.items():
        if key in LOADER_SWITCHES:
            raise ValueError(
                f"model kwarg {where}{key!r} is a weight-loading switch of timm / open_clip and is never taken from "
                "model.kwargs (--model-kwargs): checkpoints are read weights-only from model.checkpoint (--checkpoint); "
                "remove it")
        if isinstance(value, Mapping):
            _refuse_switches(value, f"{where}{key!r} -> ")


def _init_parameters(cls: type) -> set[str]:
    """Keyword parameters of ``cls``'s constructor, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for base in cls.__mro__:
        if "__init__" not in vars(base):
            continue
        parameters = inspect.signature(vars(base)["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _unsupported(spec: str, reason: str) -> ValueError:
    """The refusal of a model the attribution methods cannot explain, with ``reason``."""
    from captum_fgattr.adapters import supported

    return ValueError(f"{spec}: {reason}; the attribution methods need a ViT with an attention adapter ({supported()})")


def _timm_class(name: str) -> type:
    """The class timm builds for ``name`` (a weightless build on the meta device, without model kwargs); ValueError
    for a name timm does not know or a model that is not a timm ``VisionTransformer``."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; e.g. {close}")
    with torch.device("meta"):
        cls = type(timm.create_model(name, pretrained=False))
    if not issubclass(cls, VisionTransformer):
        raise _unsupported(f"timm:{name}", f"a {cls.__name__} is not a ViT")
    return cls


def _clip_parameters(name: str) -> set[str]:
    """Model kwargs open_clip accepts for ``name``: the model config's keys, the model class's constructor
    parameters and ``create_model``'s own architecture arguments (``precision``, ``force_*``, ...)."""
    import open_clip

    config = open_clip.get_model_config(name) or {}
    model_class = open_clip.CoCa if "multimodal_cfg" in config else open_clip.CLIP  # CustomTextCLIP: as CLIP
    factory = set(inspect.signature(open_clip.create_model).parameters) - {"model_kwargs"}
    return set(config) | _init_parameters(model_class) | factory


def check_kwarg_names(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` (model kwargs: untrusted input) as a dict once its names are checked without building a model (cheap:
    for validating a configuration): a mapping with string keys, no :data:`LOADER_SWITCHES` key at any depth, no
    :data:`OWN_SETTINGS` key; else a one-line ValueError naming the key."""
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise ValueError(f"model kwargs {kwargs!r}; expected a mapping of argument names to values")
    _refuse_switches(kwargs, "")
    for key in kwargs:
        if key in OWN_SETTINGS:
            raise ValueError(f"model kwarg {key!r} is a setting of its own: set {OWN_SETTINGS[key]}, not model.kwargs "
                             "(--model-kwargs)")
    return dict(kwargs)


def check_model_kwargs(spec: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` (model kwargs: untrusted input) as a dict, once checked for the model ``spec``.

    Refused with a one-line ValueError: what :func:`check_kwarg_names` refuses (loader switches, own settings, not a
    mapping); for ``timm:`` a model that is not a timm ``VisionTransformer`` and keys its constructor does not take;
    for ``clip:`` keys outside :func:`_clip_parameters`. Values are checked by the constructor when the model is
    built (:func:`load_model`).

    Example:
        >>> check_model_kwargs("clip:ViT-B-32", {"weights_only": False})
        Traceback (most recent call last):
        ...
        ValueError: model kwarg 'weights_only' is a weight-loading switch of timm / open_clip and is never taken from model.kwargs (--model-kwargs): checkpoints are read weights-only from model.checkpoint (--checkpoint); remove it
    """
    kwargs = check_kwarg_names(kwargs)
    kind, _, name = spec.partition(":")
    if kind == "timm":
        cls = _timm_class(name)
        accepted, owner = _init_parameters(cls), cls.__name__
    elif kind == "clip":
        accepted, owner = _clip_parameters(name), "open_clip.create_model"
    else:
        return kwargs
    accepted -= LOADER_SWITCHES | set(OWN_SETTINGS)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"unknown model kwargs {unknown} for {spec} ({owner}); accepted: {sorted(accepted)}")
    return kwargs


def _construct(what: str, arguments: Mapping[str, Any], build: Callable[[], _T]) -> _T:
    """``build()``; any failure of the (third-party) constructor given the untrusted ``arguments`` as one ValueError
    naming them (the constructor's own error chained)."""
    try:
        return build()
    except Exception as err:  # timm / open_clip refuse bad values with many types (Type/Assertion/Index/Key/...Error)
        raise ValueError(f"cannot build {what} with {dict(arguments)}: {_short(err)}; check model.kwargs "
                         "(--model-kwargs), num_classes and img_size") from err


def _num_classes(state: Mapping[str, Tensor]) -> int | None:
    """Rows of the classifier weight ``head.weight`` (or one ``<wrapper>.head.weight``), if any."""
    heads = [k for k in state if k == "head.weight"] or [k for k in state if k.endswith(".head.weight")]
    return state[heads[0]].shape[0] if len(heads) == 1 and state[heads[0]].ndim == 2 else None


def _strip_outer_prefix(state: dict[str, Tensor], own: set[str]) -> dict[str, Tensor]:
    """``state`` without the outer module prefix (e.g. ``vit.`` of a wrapper) whose removal makes the most
    keys match ``own``; unchanged when no prefix improves the match."""
    best, matched = state, len(own.intersection(state))
    for prefix in sorted({k.split(".", 1)[0] + "." for k in set(state) - own if "." in k}):
        stripped = {k.removeprefix(prefix): v for k, v in state.items()}
        if len(stripped) == len(state) and len(own.intersection(stripped)) > matched:
            best, matched = stripped, len(own.intersection(stripped))
    return best


def _vit_shape(state: Mapping[str, Tensor]) -> dict[str, int]:
    """depth / embed_dim / patch_size / num_classes a ViT state dict implies (those it shows)."""
    shape: dict[str, int] = {}
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if blocks:
        shape["depth"] = max(blocks) + 1
    if "patch_embed.proj.weight" in state and state["patch_embed.proj.weight"].ndim == 4:
        weight = state["patch_embed.proj.weight"]
        shape["embed_dim"], shape["patch_size"] = int(weight.shape[0]), int(weight.shape[-1])
    if _num_classes(state) is not None:
        shape["num_classes"] = int(_num_classes(state))
    return shape


def _shape_hint(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> str:
    """What to change: the architecture the checkpoint implies vs the model built."""
    theirs, ours = _vit_shape(state), _vit_shape(own)
    differ = {k: (theirs[k], ours[k]) for k in theirs if k in ours and theirs[k] != ours[k]}
    if not differ:
        return "check num_classes / img_size / rename and the architecture arguments (model.kwargs / --model-kwargs)"
    described = ", ".join(f"{k} {a} (model: {b})" for k, (a, b) in differ.items())
    arguments = {k: a for k, (a, _) in differ.items()}
    return (f"the checkpoint implies {described}: build the model with these architecture arguments, e.g. "
            f"--model-kwargs '{json.dumps(arguments)}' (model.kwargs in a configuration file; num_classes: "
            "--num-classes), or check img_size / rename")


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
        checkpoint: local state dict (``.safetensors`` or torch file); no hub download ever. An outer module
            prefix (e.g. ``vit.`` of a wrapper module) is removed when that makes more keys match.
        num_classes: classifier width; default: the checkpoint's ``head.weight`` rows, else timm's default.
        img_size: passed to timm when given (must match the checkpoint).
        rename: key-prefix renames applied to the checkpoint (see :func:`load_state_dict`).
        **kwargs: architecture arguments of the model's constructor (e.g. ``depth``; checked by
            :func:`check_model_kwargs`).

    Returns:
        The model in eval mode on the CPU.

    Raises:
        ValueError: unknown model name or not a ViT, refused or unknown model kwargs, arguments the constructor
            refuses, unreadable checkpoint, missing / unexpected / mis-shaped keys.
    """
    import timm

    arguments = check_model_kwargs(f"timm:{name}", kwargs)
    state = load_state_dict(checkpoint, rename=rename) if checkpoint is not None else None
    if num_classes is None and state is not None:
        num_classes = _num_classes(state)
    if num_classes is not None:
        arguments["num_classes"] = num_classes
    if img_size is not None:
        arguments["img_size"] = img_size
    model = _construct(f"timm model {name!r}", arguments, lambda: timm.create_model(name, pretrained=False, **arguments))
    if state is not None:
        own = model.state_dict()
        state = _strip_outer_prefix(state, set(own))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {checkpoint} does not match timm model {name!r}: missing keys {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''}; {_shape_hint(state, own)}"
            )
        bad = [f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
        if bad:
            raise ValueError(
                f"checkpoint {checkpoint} has shapes that do not match timm model {name!r}: {bad[:5]}; "
                f"{_shape_hint(state, own)}"
            )
        model.load_state_dict(state)
    _require_adapter(model, f"timm:{name}")
    return model.eval()


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}{' ...' if len(text) > 400 else ''}"


def load_clip_classifier(
    name: str,
    class_names: Sequence[str],
    checkpoint: str | os.PathLike[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    img_size: int | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> CLIPZeroShotClassifier:
    """An open_clip model as a zero-shot classifier over ``class_names``.

    Args:
        name: open_clip model name, e.g. ``"ViT-B-32"``.
        class_names: C class names filled into ``templates`` (e.g. ``"a photo of a {}"``).
        checkpoint: a local checkpoint file, an open_clip pretrained tag (e.g. ``"openai"``; downloads), or
            None for random weights.
        img_size: input size when not the model's default (``force_image_size``).
        device: where the model is placed and the class embeddings are computed (it is built on the CPU).
        **kwargs: architecture arguments of ``open_clip.create_model`` (checked by :func:`check_model_kwargs`).

    Returns:
        The classifier in eval mode; images (B, 3, H, W) -> logits (B, C).

    Raises:
        ValueError: unknown model or not a supported ViT, no class names, refused or unknown model kwargs, arguments
            the model refuses, corrupt or mismatched checkpoint file.
        FileNotFoundError: ``checkpoint`` is neither a file nor a pretrained tag of ``name``.
        ConnectionError: the weights of a pretrained tag cannot be downloaded (offline).
    """
    import open_clip

    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.split("-")[0].lower() in m.lower()][:8]
        raise ValueError(f"unknown open_clip model {name!r}; e.g. {close}")
    if not class_names:
        raise ValueError("CLIP zero-shot needs class_names (e.g. the dataset's class_names)")
    arguments = check_model_kwargs(f"clip:{name}", kwargs)
    if img_size is not None:
        arguments["force_image_size"] = img_size
    source: Path | None = None  # the weights' file: read weights-only here, never by open_clip
    if checkpoint is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if Path(checkpoint).is_file():
            source = Path(checkpoint)
        elif str(checkpoint) in tags:
            source = _download_clip(name, str(checkpoint))
        else:
            raise FileNotFoundError(
                f"checkpoint {str(checkpoint)!r} is neither a file nor an open_clip pretrained tag of {name!r} "
                f"(tags: {tags})"
            )
    state = load_state_dict(source) if source is not None else None
    clip = _construct(f"open_clip model {name!r}", arguments, lambda: open_clip.create_model(name, pretrained=None,
                                                                                               **arguments))
    if state is not None:
        _load_clip_state(clip, state, source, name)
    clip = clip.to(device).eval()
    classifier = CLIPZeroShotClassifier(clip, class_names, open_clip.get_tokenizer(name), templates=templates)
    _require_adapter(classifier, f"clip:{name}")
    return classifier.eval()


def _download_clip(name: str, tag: str) -> Path:
    """The local file of open_clip's pretrained weights ``tag`` of ``name`` (downloaded unless in its cache)."""
    from open_clip import pretrained

    try:
        return Path(pretrained.download_pretrained(pretrained.get_pretrained_cfg(name, tag)))
    except Exception as err:  # network and hub clients raise many types
        raise ConnectionError(
            f"cannot download open_clip weights {name!r} / {tag!r} (offline?): {_short(err)}; "
            f"download them where there is network and pass checkpoint=<local file>"
        ) from err


def _load_clip_state(clip: nn.Module, state: dict[str, Tensor], checkpoint: str | os.PathLike[str], name: str) -> None:
    """Load ``state`` (read weights-only) into the open_clip model ``clip`` as open_clip would: third-party key
    layouts converted, position embeddings resized to the model's input size; then strictly."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(clip, state)
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    try:
        clip.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"cannot load checkpoint {checkpoint} into open_clip model {name!r} (keys or shapes of another model): "
            f"{_short(err)}"
        ) from err


def _require_adapter(model: nn.Module, spec: str) -> None:
    """ValueError unless ``model`` holds exactly one ViT an attention adapter supports."""
    from captum_fgattr.adapters import get_adapter

    try:
        get_adapter(model)
    except TypeError as err:
        raise _unsupported(spec, f"not supported: {err}") from err


def _load_fgattr_model(
    name: str, checkpoint: str | os.PathLike[str] | None, num_classes: int | None, img_size: int | None,
    rename: Mapping[str, str] | None, kwargs: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None,
    device: str | torch.device, progress: bool,
) -> nn.Module:
    """The project's own model ``name`` (:data:`PROJECT_MODELS`); its shape is fixed, so shape arguments must match."""
    if name not in PROJECT_MODELS:
        raise ValueError(f"unknown model fgattr:{name}; the project's own models: "
                         f"{', '.join(f'fgattr:{n}' for n in PROJECT_MODELS)}")
    entry = PROJECT_MODELS[name]
    fixed = {"num_classes": (num_classes, entry.num_classes), "img_size": (img_size, entry.img_size)}
    wrong = [f"{key}={given!r} (it is {value})" for key, (given, value) in fixed.items() if given not in (None, value)]
    wrong += [f"rename={rename!r}"] if rename else []
    wrong += [f"{key}={value!r}" for key, value in kwargs.items()]
    if wrong:
        raise ValueError(f"fgattr:{name} has a fixed shape; remove {', '.join(wrong)}")
    return entry.load(None if checkpoint is None else str(checkpoint), cache_dir, device, progress)


def _load_folder_model(folder: Path, checkpoint: str | os.PathLike[str] | None, num_classes: int | None,
                       img_size: int | None, rename: Mapping[str, str] | None, kwargs: Mapping[str, Any]) -> nn.Module:
    """The timm model of a checkpoint folder with its weights (given arguments override its config.json)."""
    spec = read_model_folder(folder)
    if checkpoint is not None:
        raise ValueError(f"model folder {folder} holds its weights ({spec.weights.name}); remove the checkpoint "
                         f"{str(checkpoint)!r}")
    if None not in (num_classes, spec.num_classes) and num_classes != spec.num_classes:
        raise ValueError(f"num_classes={num_classes} but {folder / 'config.json'} says {spec.num_classes}")
    height, width = spec.img_size
    model = load_timm_model(spec.architecture, spec.weights, num_classes=num_classes or spec.num_classes,
                            img_size=img_size or (height if height == width else spec.img_size),
                            rename=DEFAULT_RENAMES if rename is None else rename, **{**spec.model_args, **kwargs})
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **spec.preprocessing()}
    return model


def load_model(
    spec: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    img_size: int | None = None,
    rename: Mapping[str, str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """A classifier from ``spec`` (``"timm:<name>"``, ``"clip:<name>"``, ``"fgattr:<name>"`` or a checkpoint
    folder; see the module docstring).

    Args:
        spec: model kind and name, e.g. ``"timm:vit_base_patch16_224"`` or ``"clip:ViT-B-32"``.
        checkpoint: local checkpoint file (timm, CLIP) or open_clip pretrained tag (CLIP); None = random
            (fgattr: what the project model's loader accepts).
        num_classes: timm classifier width (default: from the checkpoint); for CLIP, must equal
            ``len(class_names)`` when given.
        class_names: CLIP class names (required for CLIP); unused by timm.
        img_size: input size, when not the model's default.
        rename: timm checkpoint key-prefix renames; None = :data:`DEFAULT_RENAMES`.
        templates: CLIP prompt templates.
        device: where the model is placed.
        cache_dir: fgattr models: where retrained weights are cached (default: the user cache folder).
        progress: fgattr models: progress bars while training.
        **kwargs: model kwargs: architecture arguments of the model's constructor (:func:`check_model_kwargs`).

    Returns:
        The model in eval mode on ``device``: images (B, 3, H, W) -> logits (B, C).

    Raises:
        ValueError: unknown spec or model, not a supported ViT, a device other than cpu / cuda / cuda:N / mps,
            refused or unknown model kwargs or ones the constructor refuses, corrupt or mismatched checkpoint, CLIP
            without ``class_names`` or with a ``num_classes`` that disagrees with them.
        FileNotFoundError: ``checkpoint`` is not a file (nor, for CLIP, a pretrained tag).
        ConnectionError: a CLIP pretrained tag whose weights cannot be downloaded (offline).
    """
    device = check_device(device)
    folder = model_folder(spec)
    if folder is not None:
        return _load_folder_model(folder, checkpoint, num_classes, img_size, rename, kwargs).to(device)
    if "/" in spec.removeprefix("timm:") or os.sep in spec.removeprefix("timm:"):
        raise FileNotFoundError(f"model folder {spec.removeprefix('timm:')!r} does not exist")
    kind, sep, name = spec.partition(":")
    if not sep or kind not in MODEL_KINDS or not name:
        raise ValueError(
            f"model spec {spec!r}; expected 'timm:<model>' (e.g. timm:vit_base_patch16_224) or "
            f"'clip:<open_clip model>' (e.g. clip:ViT-B-32) or 'fgattr:<name>' (the project's own: "
            f"{', '.join(PROJECT_MODELS)})"
        )
    if kind == "fgattr":
        return _load_fgattr_model(name, checkpoint, num_classes, img_size, rename, check_model_kwargs(spec, kwargs),
                                  cache_dir, device, progress)
    if kind == "timm":
        rename = DEFAULT_RENAMES if rename is None else rename
        return load_timm_model(name, checkpoint, num_classes=num_classes, img_size=img_size, rename=rename,
                               **kwargs).to(device)
    if num_classes is not None and class_names is not None and num_classes != len(class_names):
        raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names for {spec!r}")
    return load_clip_classifier(name, class_names or [], checkpoint, templates=templates, img_size=img_size,
                                device=device, **kwargs)
