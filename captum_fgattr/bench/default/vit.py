"""The embedded default model: a small timm ViT the project trains itself on the Br35H scans.

Works on a fresh CPU-only machine with no hub access: the model is a timm
:class:`~timm.models.vision_transformer.VisionTransformer` trained by :func:`train_default_model` on the
training split of :mod:`captum_fgattr.bench.default.br35h` in a few CPU minutes; the package ships its weights
(:data:`SHIPPED_DIR`, sha256-checked) and other settings are trained once and cached in the user cache folder.
Model name ``"fgattr:br35h-vit"`` of :func:`captum_fgattr.bench.models.loading.load_model` (:func:`load_br35h_vit`);
the replicate models (other model seeds, 196 patch tokens at 112 px; :data:`RECIPES`) are shipped and named alike,
e.g. ``"fgattr:br35h-vit-seed1"``.

Cache layout (``$FGATTR_CACHE`` or ``~/.cache/captum-fgattr``)::

    models/br35h_vit_<key>/model.safetensors  ViT state dict (float32)
    models/br35h_vit_<key>/info.json          ViT and training config, split seed, accuracies,
                                              training time, sha256 of model.safetensors

``<key>`` hashes everything the content depends on, so other settings never collide with the default.
Every file is written to a temporary name and renamed into place, so an interrupted run leaves no
partial cache; a cache file that fails to parse or to match its checksum raises a ``ValueError``
naming it.

Example::

    >>> from captum_fgattr.bench.default.vit import DEFAULT_VIT, ViTConfig
    >>> DEFAULT_VIT.num_patches == (DEFAULT_VIT.img_size // DEFAULT_VIT.patch_size) ** 2
    True
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_fgattr.bench.default import MODEL_NAME
from captum_fgattr.bench.default.br35h import (
    CLASS_NAMES, DUPLICATE_RMS, DUPLICATE_SIZE, IMG_SIZE, MEAN, SPLIT_FRACTIONS, SPLIT_SEED, STD, Br35HSplit,
    cache_key, default_cache_dir, default_splits, normalize,
)
from captum_fgattr.bench.models.checkpoint import load_state_dict
from captum_fgattr.determinism import deterministic
from captum_fgattr.files import atomic_write, sha256_file

__all__ = [
    "MODEL_NAME", "CHECKPOINTS", "PATCH_SIZE", "EMBED_DIM", "DEPTH", "NUM_HEADS", "ViTConfig", "ViTTrainConfig",
    "DEFAULT_VIT", "DEFAULT_TRAIN", "RECIPES", "shipped_folder", "build_vit", "evaluate_accuracy",
    "train_default_model", "default_model", "load_br35h_vit", "SHIPPED_DIR", "shipped_model", "save_model", "sha256_file", "weights_sha256",
]

#: its ``model.checkpoint`` values: the shipped weights (also None), or trained from scratch and cached
CHECKPOINTS: tuple[str, ...] = ("shipped", "retrain")
PATCH_SIZE = 8  # 8x8 = 64 patch tokens + 1 class token
EMBED_DIM = 96
DEPTH = 6
NUM_HEADS = 3

_MODEL_FORMAT = "captum_fgattr.br35h_vit.v1"
_WEIGHTS_NAME = "model.safetensors"
_DEFAULT_SPLIT_INFO = {"split_seed": SPLIT_SEED, "split_fractions": list(SPLIT_FRACTIONS),
                       "duplicate_rms": DUPLICATE_RMS, "duplicate_size": DUPLICATE_SIZE}
_INFO_NAME = "info.json"
#: the default ViT and demo SAEs shipped as package data (see :mod:`captum_fgattr.bench.default.assets`)
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


@dataclass(frozen=True)
class ViTConfig:
    """Shape of the default timm ViT (class token, ``global_pool='token'``, standard attention)."""

    img_size: int = IMG_SIZE  # square input side in pixels
    patch_size: int = PATCH_SIZE  # patch side; img_size must be a multiple of it
    embed_dim: int = EMBED_DIM  # residual width D
    depth: int = DEPTH  # number of transformer blocks
    num_heads: int = NUM_HEADS  # attention heads; must divide embed_dim
    mlp_ratio: float = 2.0  # MLP hidden width / embed_dim
    num_classes: int = len(CLASS_NAMES)

    def __post_init__(self) -> None:
        if self.img_size < 1 or self.patch_size < 1 or self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} must be a positive multiple of patch_size={self.patch_size}")
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be a positive multiple of num_heads={self.num_heads}")
        if self.depth < 1 or self.mlp_ratio <= 0 or self.num_classes < 2:
            raise ValueError(f"need depth >= 1, mlp_ratio > 0, num_classes >= 2; got {self}")

    @property
    def num_patches(self) -> int:
        """Patch tokens per image, ``(img_size // patch_size) ** 2``."""
        return (self.img_size // self.patch_size) ** 2


@dataclass(frozen=True)
class ViTTrainConfig:
    """How :func:`train_default_model` trains (AdamW, linear warm-up then cosine decay)."""

    epochs: int = 50  # passes over the training split (30 reached 87.5 % test accuracy on the de-duplicated split)
    batch_size: int = 32
    lr: float = 2e-3  # peak learning rate
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0  # linear warm-up length, in epochs
    label_smoothing: float = 0.0
    max_shift: int = 4  # augmentation: random translation of up to this many pixels per axis
    hflip: bool = True  # augmentation: random horizontal flips
    seed: int = 0  # weights, batch order and augmentation
    # torch CPU threads while training (restored afterwards). One thread keeps the weights bitwise
    # reproducible across machines and does not collapse when other jobs share the cores (measured
    # here: ~20 s/epoch with 1 thread vs ~90 s/epoch with 2 threads on 2 busy cores).
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.num_threads < 1:
            raise ValueError(f"epochs, batch_size and num_threads must be >= 1; got {self}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.max_shift < 0:
            raise ValueError(f"need lr > 0 and weight_decay, warmup_epochs, max_shift >= 0; got {self}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")


DEFAULT_VIT = ViTConfig()
DEFAULT_TRAIN = ViTTrainConfig()
#: every shipped project model's recipe, ``fgattr:<name>`` -> (shape, training): the default ViT and the replicate
#: models of :data:`~captum_fgattr.bench.default.REPLICATE_MODELS` (other model seeds; 112 px for 196 patch tokens)
RECIPES: dict[str, tuple[ViTConfig, ViTTrainConfig]] = {
    MODEL_NAME: (DEFAULT_VIT, DEFAULT_TRAIN),
    f"{MODEL_NAME}-seed1": (DEFAULT_VIT, dataclasses.replace(DEFAULT_TRAIN, seed=1)),
    f"{MODEL_NAME}-seed2": (DEFAULT_VIT, dataclasses.replace(DEFAULT_TRAIN, seed=2)),
    f"{MODEL_NAME}-196": (ViTConfig(img_size=112), DEFAULT_TRAIN),
}


def shipped_folder(name: str = MODEL_NAME) -> Path:
    """The folder of the shipped weights (and SAEs) of project model ``name``: :data:`SHIPPED_DIR` for the default
    ViT, ``SHIPPED_DIR/models/<name>`` for a replicate model."""
    if name not in RECIPES:
        raise ValueError(f"no shipped model {name!r}; shipped: {list(RECIPES)}")
    return SHIPPED_DIR if name == MODEL_NAME else SHIPPED_DIR / "models" / name


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------

def build_vit(cfg: ViTConfig = DEFAULT_VIT) -> nn.Module:
    """A randomly initialised timm ``VisionTransformer`` of shape ``cfg`` (class token, token pooling)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=3, num_classes=cfg.num_classes,
        global_pool="token", embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio, class_token=True)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: Br35HSplit, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (evaluated in eval mode; the model's mode is restored)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        correct = 0
        for start in range(0, len(split), batch_size):
            x = normalize(split.images[start:start + batch_size], split.mean, split.std).to(device)
            correct += int((model(x).argmax(1).cpu() == split.labels[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / len(split)


def _augment(images: Tensor, cfg: ViTTrainConfig, gen: torch.Generator) -> Tensor:
    """Random horizontal flips and integer shifts (zero fill) of uint8 ``(B, 1, S, S)``; same shape."""
    B, _, S, _ = images.shape
    if cfg.hflip:
        flip = torch.rand(B, generator=gen) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if cfg.max_shift:
        m = cfg.max_shift
        padded = nn.functional.pad(images, (m, m, m, m))
        dy, dx = torch.randint(0, 2 * m + 1, (2, B), generator=gen)
        rows = (dy[:, None] + torch.arange(S))[:, None, :, None].expand(B, 1, S, S + 2 * m)
        padded = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(S))[:, None, None, :].expand(B, 1, S, S)
        images = padded.gather(3, cols)
    return images


def train_default_model(
    splits: dict[str, Br35HSplit] | None = None,
    vit: ViTConfig = DEFAULT_VIT,
    train: ViTTrainConfig = DEFAULT_TRAIN,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Train a ViT of shape ``vit`` on ``splits["train"]`` (AdamW, warm-up + cosine, flips and shifts).

    Seeded (weights, batch order, augmentation) and deterministic for a fixed thread count on CPU.
    The final-epoch weights are returned (no selection on val or test).

    Args:
        splits: ``{"train", "val", "test"}`` -> :class:`Br35HSplit`; default :func:`default_splits`.
        vit, train: model shape and training settings.

    Returns:
        ``(model in eval mode, info)``; ``info`` holds both configs, the split seed and fractions
        (default split only), per-epoch train loss and val accuracy, final ``val_accuracy`` /
        ``test_accuracy`` and ``train_seconds``.
    """
    split_info = {} if splits is not None else _DEFAULT_SPLIT_INFO
    splits = splits if splits is not None else default_splits(img_size=vit.img_size, progress=progress)
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise ValueError(f"splits lack {sorted(missing)}; expected keys train, val, test")
    data = splits["train"]
    if data.images.shape[-1] != vit.img_size:
        raise ValueError(f"images are {data.images.shape[-1]} px but vit.img_size={vit.img_size}")
    with deterministic(train.num_threads):
        torch.manual_seed(train.seed)
        model = build_vit(vit).train()
        gen = torch.Generator().manual_seed(train.seed)
        steps_per_epoch = math.ceil(len(data) / train.batch_size)
        total, warmup = train.epochs * steps_per_epoch, train.warmup_epochs * steps_per_epoch
        opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
        history: list[dict[str, float]] = []
        start = time.perf_counter()
        bar = tqdm(range(train.epochs), desc="train ViT", disable=not progress)
        for epoch in bar:
            order = torch.randperm(len(data), generator=gen)
            loss_sum = 0.0
            for step in range(steps_per_epoch):
                rows = order[step * train.batch_size:(step + 1) * train.batch_size]
                x = normalize(_augment(data.images[rows], train, gen))
                loss = loss_fn(model(x), data.labels[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(rows)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / len(data),
                            "val_accuracy": evaluate_accuracy(model, splits["val"])})
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{history[-1]['val_accuracy']:.3f}")
        train_seconds = time.perf_counter() - start
        model.eval()
        info = {
            "format": _MODEL_FORMAT, "vit": dataclasses.asdict(vit), "train": dataclasses.asdict(train),
            "class_names": list(CLASS_NAMES), "mean": MEAN, "std": STD,
            **split_info,
            "n_train": len(data), "n_val": len(splits["val"]), "n_test": len(splits["test"]),
            "history": history, "val_accuracy": history[-1]["val_accuracy"],
            "test_accuracy": evaluate_accuracy(model, splits["test"]),
            "train_seconds": round(train_seconds, 1), "torch": torch.__version__,
        }
    return model, info


def _load_cached_model(folder: Path, vit: ViTConfig, device: str | torch.device) -> tuple[nn.Module, dict]:
    info_path = folder / _INFO_NAME
    try:
        info = json.loads(info_path.read_text())
    except PermissionError:
        raise
    except (OSError, ValueError) as err:
        raise ValueError(f"corrupt cached model info {info_path} ({err}); delete {folder} to retrain") from err
    return _load_weights(folder / _WEIGHTS_NAME, vit, info, device, f"delete {folder} to retrain"), info


def _load_weights(path: Path, vit: ViTConfig, info: dict, device: str | torch.device, remedy: str) -> nn.Module:
    """A ViT of shape ``vit`` with the weights at ``path``, checked against ``info["weights_sha256"]``."""
    expected = info.get("weights_sha256") if isinstance(info, dict) else None
    if not isinstance(expected, str):
        raise ValueError(f"the model info next to {path} records no weights_sha256; {remedy}")
    if not path.is_file() or sha256_file(path) != expected:
        raise ValueError(f"weights {path} are missing or fail their sha256 check; {remedy}")
    try:
        model = build_vit(vit)
        model.load_state_dict(load_state_dict(path))
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"corrupt weights {path} ({err}); {remedy}") from err
    return model.to(device).eval()


def _weights_bytes(model: nn.Module) -> bytes:
    """The bytes of ``model.safetensors`` for ``model`` (its float state dict, on the CPU)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": _MODEL_FORMAT})


def weights_sha256(model: nn.Module) -> str:
    """Hex sha256 of the ``model.safetensors`` :func:`save_model` writes for ``model``: identifies its weights,
    e.g. to check that SAEs were trained on this model (``info.json``'s ``weights_sha256``)."""
    return hashlib.sha256(_weights_bytes(model)).hexdigest()


def save_model(model: nn.Module, info: dict, folder: str | os.PathLike[str]) -> dict:
    """Write ``model.safetensors`` and ``info.json`` (with ``weights_sha256``) to ``folder``; returns that info."""
    folder = Path(folder)
    data = _weights_bytes(model)
    atomic_write(folder / _WEIGHTS_NAME, lambda tmp: tmp.write_bytes(data))
    info = {**info, "weights_sha256": sha256_file(folder / _WEIGHTS_NAME)}
    atomic_write(folder / _INFO_NAME, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    return info


def shipped_model(device: str | torch.device = "cpu", folder: str | os.PathLike[str] = SHIPPED_DIR) -> tuple[nn.Module, dict]:
    """The default ViT shipped with the package (sha256 checked): ``(model in eval mode, info)``.

    ``info`` is the model's training record (configs, split, ``test_accuracy``, ``weights_sha256``),
    the ``model`` section of the ``info.json`` written by ``python -m captum_fgattr.bench.default.assets``.
    """
    folder = Path(folder)
    remedy = "reinstall captum-fgattr or run `fgattr demo --retrain`"
    try:
        info = json.loads((folder / _INFO_NAME).read_text())["model"]
        vit = ViTConfig(**info["vit"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read the shipped model's record in {folder / _INFO_NAME} ({err}); {remedy}") from err
    return _load_weights(folder / _WEIGHTS_NAME, vit, info, device, remedy), info


def default_model(
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    vit: ViTConfig = DEFAULT_VIT,
    train: ViTTrainConfig = DEFAULT_TRAIN,
    splits: dict[str, Br35HSplit] | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> tuple[nn.Module, dict]:
    """The default Br35H ViT: the shipped weights, or loaded from the cache, or trained and cached.

    With a shipped recipe (:data:`RECIPES`: the default ``vit`` and ``train``, or a replicate model's) on the
    default split and ``retrain=False`` this is :func:`shipped_model` of its :func:`shipped_folder` (no training).
    Otherwise the model is trained with :func:`train_default_model` once and cached; ``retrain=True`` with a
    shipped recipe trains exactly what was shipped (bit-identical on the CPU type that produced the shipped
    files; see ``info.json``'s ``platform``). The cache entry ``models/br35h_vit_<key>/`` is keyed by ``vit``,
    ``train`` and the split (its seed, or the image paths when ``splits`` is given), so other settings train their
    own entry.

    Returns:
        ``(model, info)``: a timm ``VisionTransformer`` on ``device`` in eval mode, mapping normalised
        ``(B, 3, S, S)`` to logits ``(B, 2)`` over :data:`CLASS_NAMES`, and the ``info.json`` dict.

    Raises:
        ValueError: a cache file is corrupt (the message names it; delete the folder to retrain).
    """
    shipped = next((name for name, recipe in RECIPES.items() if recipe == (vit, train)), None)
    if not retrain and shipped is not None and splits is None:
        folder = shipped_folder(shipped)
        if (folder / _WEIGHTS_NAME).is_file():
            return shipped_model(device, folder)
        warnings.warn(f"the shipped model fgattr:{shipped} is missing ({folder / _WEIGHTS_NAME}); training it instead",
                      stacklevel=2)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_key = SPLIT_SEED if splits is None else [str(p) for s in ("train", "val", "test") for p in splits[s].paths]
    key = cache_key([_MODEL_FORMAT, dataclasses.asdict(vit), dataclasses.asdict(train), data_key, list(SPLIT_FRACTIONS)])
    folder = cache_dir / "models" / f"br35h_vit_{key}"
    if (folder / _INFO_NAME).exists():
        return _load_cached_model(folder, vit, device)
    default_split = splits is None
    if default_split:
        splits = default_splits(cache_dir, img_size=vit.img_size, progress=progress)
    model, info = train_default_model(splits, vit, train, progress)
    if default_split:
        info.update(_DEFAULT_SPLIT_INFO)
    info = save_model(model, info, folder)
    return model.to(device), info


def load_br35h_vit(
    checkpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    name: str = MODEL_NAME,
) -> nn.Module:
    """The shipped ViT ``name`` of :data:`RECIPES` as ``model.name = "fgattr:<name>"`` names it (default: the default
    ViT, ``fgattr:br35h-vit``), in eval mode on ``device``.

    ``checkpoint``: None or ``"shipped"``: the shipped weights (sha256-checked, no training); ``"retrain"``: its
    recipe trained from scratch by :func:`default_model` and cached in ``cache_dir`` (later calls load it).
    """
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise ValueError(f"model fgattr:{name}: checkpoint={checkpoint!r}; expected one of {list(CHECKPOINTS)} "
                         "(none: shipped)")
    vit, train = RECIPES[name]
    return default_model(cache_dir, device, vit, train, progress=progress, retrain=checkpoint == "retrain")[0]
