"""Dataset kinds (``data.kind``): the registry of layouts (:data:`LAYOUTS`) with the published ones, and the
light types it holds (:class:`Layout`, :class:`SplitSource`, :class:`Preprocess`).

Nothing here imports torch, so that ``fgattr <command> --help`` lists the kinds in an instant; the folders are
read and the datasets built by :mod:`captum_fgattr.bench.data.layouts`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captum_fgattr.bench.plugins import BENCH_PLUGINS
from captum_fgattr.registry import Registry

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "INTERPOLATIONS", "CHANNELS", "LAYOUTS", "Layout",
    "SplitSource", "Preprocess", "Samples", "per_channel",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")


def _is_size(value: Any) -> bool:
    sizes = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    return len(sizes) in (1, 2) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)


#: image channels :class:`Preprocess` can produce -> the PIL mode images are read in: grayscale (for a model built
#: with ``in_chans=1``) or RGB
CHANNELS: Mapping[int, str] = {1: "L", 3: "RGB"}


def per_channel(value: float | Sequence[float], name: str, channels: int = 3) -> tuple[float, ...]:
    """One number or one per channel -> ``channels`` floats; the error names ``name``.

    Example:
        >>> per_channel(0.5, "mean"), per_channel([0.2], "std", channels=1)
        ((0.5, 0.5, 0.5), (0.2,))
    """
    values = (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    values = values * channels if len(values) == 1 else values
    if len(values) != channels:
        what = ("one number or three (per RGB channel)" if channels == 3
                else "one number: the images are grayscale (one channel), as the model takes them")
        raise ValueError(f"{name}={value!r}; expected {what}")
    return values


@dataclass(frozen=True)
class Preprocess:
    """Resize -> CenterCrop -> ToTensor -> Normalize (e.g. COVID-QU-Ex: resize 256, crop 224, 0.56/0.21)."""

    img_size: int | tuple[int, int] = 224  # output (H, W) after the center crop
    resize: int | tuple[int, int] | None = None  # int: shorter side; (H, W): exact size; None = img_size
    mean: float | tuple[float, ...] = IMAGENET_MEAN  # one value or one per channel
    std: float | tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"  # resize filter, one of INTERPOLATIONS
    channels: int = 3  # 3: images read as RGB; 1: as grayscale (one of CHANNELS)

    def __post_init__(self) -> None:
        if not _is_size(self.img_size):
            raise ValueError(f"img_size={self.img_size!r}; expected a positive int or (H, W)")
        if self.resize is not None and not _is_size(self.resize):
            raise ValueError(f"resize={self.resize!r}; expected None, a positive int or (H, W)")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r}; expected one of {list(INTERPOLATIONS)}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels={self.channels!r}; expected one of {list(CHANNELS)}")
        object.__setattr__(self, "mean", per_channel(self.mean, "mean", self.channels))
        object.__setattr__(self, "std", per_channel(self.std, "std", self.channels))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std!r}; expected positive values")


Samples = list[tuple[Path, int]]


@dataclass(frozen=True)
class SplitSource:
    """A layout whose splits are computed from its file list and whose images its own dataset class reads (e.g.
    a split grouped by near-duplicates, images decoded once and cached), instead of split / class folders."""

    splits: tuple[str, ...]  # split names
    # (root or None = the source's default folder, split, cache_dir) -> (root, the split's (path, label), sorted)
    files: Callable[[Path | None, str, Path | None], tuple[Path, Samples]]
    # (root, samples, class names, preprocessing, cache_dir) -> dataset exposing what ImageListDataset exposes
    read: Callable[[Path, Samples, Sequence[str], Preprocess, Path | None], Dataset]


@dataclass(frozen=True)
class Layout:
    """Where one published dataset keeps its class folders, per split, and how its images are preprocessed.

    A *base* folder is searched for below the given root (breadth first, up to ``max_depth`` levels): the
    shallowest folder below which every class folder is found through one of ``class_dirs``.
    """

    name: str  # shown in errors, e.g. "COVID-QU-Ex"
    class_dirs: tuple[str, ...]  # class folder below the base, first match wins; "{split}", "{cls}" (last part)
    preprocess: Preprocess  # the dataset's standard preprocessing
    classes: tuple[str, ...] = ()  # fixed class folders in label order; () = discover sub-folders (sorted)
    class_pattern: str = ""  # regex that discovered class folders must match ("" = any)
    image_dirs: tuple[str, ...] = ("**",)  # images inside a class folder: first existing sub-folder wins;
    #                                        "" = the class folder itself, "**" = anywhere below it
    split_dirs: Mapping[str, str] = field(default_factory=dict)  # split -> folder name for "{split}"
    split_fractions: Mapping[str, float] = field(default_factory=dict)  # split -> share, stratified by class
    prefer: str = ""  # among several matching bases, take the one whose path contains this (case-insensitive)
    max_depth: int = 4  # how deep below root a base may sit
    example: str = ""  # an example image path below root, for errors
    source: SplitSource | None = None  # computed splits and own reader (then root is optional)

    def __post_init__(self) -> None:
        if sum(map(bool, (self.split_dirs, self.split_fractions, self.source))) > 1:
            raise ValueError(f"layout {self.name!r}: give one of split_dirs, split_fractions and source")
        if self.split_fractions and abs(sum(self.split_fractions.values()) - 1) > 1e-6:
            raise ValueError(f"layout {self.name!r}: split_fractions {dict(self.split_fractions)} must sum to 1")
        if any(not t.endswith("{cls}") for t in self.class_dirs):
            raise ValueError(f"layout {self.name!r}: every class_dirs entry must end with '{{cls}}'")

    @property
    def splits(self) -> list[str]:
        return list(self.split_dirs or self.split_fractions or (self.source.splits if self.source else ()))

    def expected(self, split_dir: str) -> str:
        """The layout in words, e.g. ``Test/{COVID-19,Non-COVID,Normal}/[images/]<image>``."""
        cls = "{" + ",".join(self.classes) + "}" if self.classes else "<class>"
        inner = "".join(f"[{d}/]" for d in self.image_dirs if d not in ("", "**"))
        inner += "**/" if "**" in self.image_dirs else ""
        return " or ".join(f"{t.format(split=split_dir or '<split>', cls=cls)}/{inner}<image>" for t in self.class_dirs)


#: dataset kinds (``data.kind``): the published layouts here; other packages add theirs (duplicates refused)
LAYOUTS: Registry[Layout] = Registry("dataset layout", BENCH_PLUGINS)
LAYOUTS.add("folder", Layout(
        name="image folder", class_dirs=("{cls}",), preprocess=Preprocess(), max_depth=0, example="<class>/<image>.png",
))
LAYOUTS.add("covid-qu-ex", Layout(
        name="COVID-QU-Ex", class_dirs=("{split}/{cls}",), classes=("COVID-19", "Non-COVID", "Normal"),
        image_dirs=("images", ""), split_dirs={"train": "Train", "val": "Val", "test": "Test"},
        prefer="lung segmentation",
        preprocess=Preprocess(img_size=224, resize=256, mean=0.56, std=0.21, interpolation="bilinear"),
        example="Lung Segmentation Data/Lung Segmentation Data/Test/COVID-19/images/covid_1.png",
))
LAYOUTS.add("hyperkvasir", Layout(
        name="HyperKvasir anatomical landmarks",
        class_dirs=("lower-gi-tract/anatomical-landmarks/{cls}", "upper-gi-tract/anatomical-landmarks/{cls}", "{cls}"),
        classes=("cecum", "ileum", "pylorus", "retroflex-rectum", "retroflex-stomach", "z-line"),
        image_dirs=("",), split_fractions={"train": 0.8, "val": 0.1, "test": 0.1},
        preprocess=Preprocess(img_size=224, resize=(224, 224), interpolation="bilinear"),
        example="labeled-images/upper-gi-tract/anatomical-landmarks/z-line/<image>.jpg",
))
LAYOUTS.add("imagenet", Layout(
        name="ImageNet", class_dirs=("{split}/{cls}",), class_pattern=r"n\d{8}", image_dirs=("",),
        split_dirs={"train": "train", "val": "val"},
        preprocess=Preprocess(img_size=224, resize=224, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic"),
        example="val/n01440764/ILSVRC2012_val_00000293.JPEG",
))
