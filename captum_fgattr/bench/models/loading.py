"""Model construction for the benchmark: timm ViTs from local checkpoints, open_clip CLIP zero-shot.

Entry point: :func:`load_model` ``(spec, *, checkpoint=None, num_classes=None, class_names=None,
img_size=None, rename=None, templates=("a photo of a {}",), device="cpu", **kwargs) -> nn.Module``
(eval mode, on ``device``; logits ``(B, C)`` for images ``(B, 3, H, W)``):

* ``"timm:<name>"`` (e.g. ``timm:vit_base_patch16_224``): ``timm.create_model(name, pretrained=False)``
  plus a local state dict (``.safetensors`` or torch file; never downloaded). Wrappers
  (``{"state_dict": ...}``, ``{"model": ...}``, ...), ``module.`` / ``_orig_mod.`` prefixes and one
  outer module prefix (e.g. ``vit.`` of a wrapper module) are removed; ``rename`` maps key prefixes
  (default :data:`DEFAULT_RENAMES`: the thesis checkpoints' ``lin_head.*`` -> ``head.*``);
  ``num_classes`` defaults to the rows of the checkpoint's ``head.weight``.
* ``"clip:<name>"`` (e.g. ``clip:ViT-B-32``): an open_clip model as a
  :class:`~captum_fgattr.clip.CLIPZeroShotClassifier` over ``class_names`` (e.g. ``dataset.class_names``)
  with the prompt ``templates``. ``checkpoint`` is a local file (``open_clip.create_model(name,
  pretrained=<file>)``) or an open_clip pretrained tag such as ``"openai"`` (downloads: needs the network
  or open_clip's cache); None = random weights.
* ``"fgattr:br35h-vit"``: the project's own default ViT for the ``br35h`` dataset kind
  (:func:`captum_fgattr.bench.models.br35h_vit.load_br35h_vit`): ``checkpoint`` None / ``"shipped"`` = the weights
  shipped with the package (sha256-checked), ``"retrain"`` = trained from scratch and cached in ``cache_dir``.

Example:
    >>> m = load_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=32)
    >>> m.head.out_features, m.training
    (3, False)
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_fgattr.bench.models.checkpoint import load_state_dict
from captum_fgattr.clip import DEFAULT_TEMPLATES, CLIPZeroShotClassifier

__all__ = ["DEFAULT_RENAMES", "load_model", "load_timm_model", "load_clip_classifier"]

#: key-prefix renames :func:`load_model` applies to timm checkpoints unless told otherwise
DEFAULT_RENAMES: Mapping[str, str] = {"lin_head.": "head."}
MODEL_KINDS: tuple[str, ...] = ("timm", "clip", "fgattr")


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
        **kwargs: further ``timm.create_model`` arguments.

    Returns:
        The model in eval mode on the CPU.

    Raises:
        ValueError: unknown model name, unreadable checkpoint, missing / unexpected / mis-shaped keys.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; e.g. {close}")
    state = load_state_dict(checkpoint, rename=rename) if checkpoint is not None else None
    if num_classes is None and state is not None:
        num_classes = _num_classes(state)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=False, **kwargs)
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
        device: where the model is built and the class embeddings are computed.
        **kwargs: further ``open_clip.create_model`` arguments.

    Returns:
        The classifier in eval mode; images (B, 3, H, W) -> logits (B, C).

    Raises:
        ValueError: unknown model, no class names, corrupt or mismatched checkpoint file.
        FileNotFoundError: ``checkpoint`` is neither a file nor a pretrained tag of ``name``.
        ConnectionError: the weights of a pretrained tag cannot be downloaded (offline).
    """
    import open_clip

    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.split("-")[0].lower() in m.lower()][:8]
        raise ValueError(f"unknown open_clip model {name!r}; e.g. {close}")
    if not class_names:
        raise ValueError("CLIP zero-shot needs class_names (e.g. the dataset's class_names)")
    if img_size is not None:
        kwargs["force_image_size"] = img_size
    tags = open_clip.list_pretrained_tags_by_model(name)
    if checkpoint is None:
        clip = open_clip.create_model(name, pretrained=None, device=device, **kwargs)
    elif Path(checkpoint).is_file():
        try:
            clip = open_clip.create_model(name, pretrained=str(checkpoint), device=device, **kwargs)
        except Exception as err:  # torch.load / safetensors / load_state_dict raise many types
            raise ValueError(
                f"cannot load checkpoint {checkpoint} into open_clip model {name!r} (corrupt, or keys of another "
                f"model): {_short(err)}"
            ) from err
    elif str(checkpoint) in tags:
        try:
            clip = open_clip.create_model(name, pretrained=str(checkpoint), device=device, **kwargs)
        except RuntimeError as err:
            raise ConnectionError(
                f"cannot download open_clip weights {name!r} / {str(checkpoint)!r} (offline?): {_short(err)}; "
                f"download them where there is network and pass checkpoint=<local file>"
            ) from err
    else:
        raise FileNotFoundError(
            f"checkpoint {str(checkpoint)!r} is neither a file nor an open_clip pretrained tag of {name!r} "
            f"(tags: {tags})"
        )
    tokenizer = open_clip.get_tokenizer(name)
    return CLIPZeroShotClassifier(clip.eval(), class_names, tokenizer, templates=templates).eval()


def _load_fgattr_model(
    name: str, checkpoint: str | os.PathLike[str] | None, num_classes: int | None, img_size: int | None,
    rename: Mapping[str, str] | None, kwargs: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None,
    device: str | torch.device, progress: bool,
) -> nn.Module:
    """The project's own model ``name`` (``br35h-vit``); its shape is fixed, so shape arguments must match it."""
    from captum_fgattr.bench.models.br35h_vit import DEFAULT_VIT, MODEL_NAME, load_br35h_vit

    if name != MODEL_NAME:
        raise ValueError(f"unknown model fgattr:{name}; the project's own model is fgattr:{MODEL_NAME}")
    fixed = {"num_classes": (num_classes, DEFAULT_VIT.num_classes), "img_size": (img_size, DEFAULT_VIT.img_size)}
    wrong = [f"{key}={given!r} (it is {value})" for key, (given, value) in fixed.items() if given not in (None, value)]
    wrong += [f"{key}={value!r}" for key, value in (("rename", rename), *kwargs.items()) if value]
    if wrong:
        raise ValueError(f"fgattr:{MODEL_NAME} has a fixed shape; remove {', '.join(wrong)}")
    return load_br35h_vit(None if checkpoint is None else str(checkpoint), cache_dir, device, progress)


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
    """A classifier from ``spec`` (``"timm:<name>"``, ``"clip:<name>"`` or ``"fgattr:br35h-vit"``; see the module
    docstring).

    Args:
        spec: model kind and name, e.g. ``"timm:vit_base_patch16_224"`` or ``"clip:ViT-B-32"``.
        checkpoint: local checkpoint file (timm, CLIP) or open_clip pretrained tag (CLIP); None = random
            (fgattr: ``"shipped"`` (also None) or ``"retrain"``).
        num_classes: timm classifier width (default: from the checkpoint); for CLIP, must equal
            ``len(class_names)`` when given.
        class_names: CLIP class names (required for CLIP); unused by timm.
        img_size: input size, when not the model's default.
        rename: timm checkpoint key-prefix renames; None = :data:`DEFAULT_RENAMES`.
        templates: CLIP prompt templates.
        device: where the model is placed.
        cache_dir: fgattr models: where retrained weights are cached (default: the user cache folder).
        progress: fgattr models: progress bars while training.
        **kwargs: further ``timm.create_model`` / ``open_clip.create_model`` arguments.

    Returns:
        The model in eval mode on ``device``: images (B, 3, H, W) -> logits (B, C).

    Raises:
        ValueError: unknown spec or model, corrupt or mismatched checkpoint, CLIP without ``class_names`` or
            with a ``num_classes`` that disagrees with them.
        FileNotFoundError: ``checkpoint`` is not a file (nor, for CLIP, a pretrained tag).
        ConnectionError: a CLIP pretrained tag whose weights cannot be downloaded (offline).
    """
    kind, sep, name = spec.partition(":")
    if not sep or kind not in MODEL_KINDS or not name:
        raise ValueError(
            f"model spec {spec!r}; expected 'timm:<model>' (e.g. timm:vit_base_patch16_224) or "
            f"'clip:<open_clip model>' (e.g. clip:ViT-B-32) or 'fgattr:br35h-vit' (the default ViT)"
        )
    if kind == "fgattr":
        return _load_fgattr_model(name, checkpoint, num_classes, img_size, rename, kwargs, cache_dir, device, progress)
    if kind == "timm":
        rename = DEFAULT_RENAMES if rename is None else rename
        return load_timm_model(name, checkpoint, num_classes=num_classes, img_size=img_size, rename=rename,
                               **kwargs).to(device)
    if num_classes is not None and class_names is not None and num_classes != len(class_names):
        raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names for {spec!r}")
    return load_clip_classifier(name, class_names or [], checkpoint, templates=templates, img_size=img_size,
                                device=device, **kwargs)
