"""Image datasets and preprocessing for the benchmark.

* :class:`ImageFolderDataset`: ``root/<class>/**/<image>``; classes are the sub-folder names, sorted,
  label = index in that order; images sorted by path within each class.
* :class:`Preprocess` + :func:`build_transform`: resize -> center-crop -> tensor -> normalise.

Example:
    >>> t = build_transform(Preprocess(img_size=32, resize=36, mean=0.56, std=0.21))
    >>> from PIL import Image
    >>> tuple(t(Image.new("L", (50, 40))).shape)
    (3, 32, 32)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["IMG_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderDataset", "Preprocess", "build_transform"]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Labelled images in class sub-folders: ``root/<class>/**/<file>`` -> (image, label).

    Attributes:
        classes: sorted class (sub-folder) names; ``label = classes.index(name)``.
        samples: ``(path, label)`` pairs, sorted by class then path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Tensor] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder {str(self.root)!r} is not a directory")
        self.classes: list[str] = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            raise ValueError(
                f"image folder {str(self.root)!r} has no class sub-folders; expected root/<class>/<image> "
                f"with extensions {list(extensions)}"
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((self.root / name).rglob("*"))
            if path.is_file() and path.suffix.lower() in exts and not path.name.startswith(".")
        ]
        if not self.samples:
            raise ValueError(
                f"image folder {str(self.root)!r} has class sub-folders {self.classes} but no images "
                f"with extensions {list(exts)}"
            )
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except OSError as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def _triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    values = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{name}={value!r}; expected one number or three (per RGB channel)")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocess:
    """Resize -> CenterCrop -> ToTensor -> Normalize (e.g. COVID-QU-Ex: resize 256, crop 224, 0.56/0.21)."""

    img_size: int | tuple[int, int] = 224  # output (H, W) after the center crop
    resize: int | None = None  # shorter side before cropping; None = img_size (no extra crop margin)
    mean: float | tuple[float, ...] = IMAGENET_MEAN  # one value or one per RGB channel
    std: float | tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        sizes = (self.img_size,) if isinstance(self.img_size, int) else tuple(self.img_size)
        if len(sizes) not in (1, 2) or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
            raise ValueError(f"img_size={self.img_size!r}; expected a positive int or (H, W)")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize <= 0):
            raise ValueError(f"resize={self.resize!r}; expected None or a positive int")
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std!r}; expected positive values")


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB") if hasattr(image, "convert") else image


def build_transform(config: Preprocess) -> Callable[[Any], Tensor]:
    """PIL image (any mode; converted to RGB) -> normalised float tensor (3, H, W) as ``config`` says."""
    from torchvision import transforms

    size = config.img_size if isinstance(config.img_size, int) else tuple(config.img_size)
    resize = config.resize if config.resize is not None else size
    return transforms.Compose(
        [
            transforms.Lambda(_to_rgb),
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean=config.mean, std=config.std),
        ]
    )
