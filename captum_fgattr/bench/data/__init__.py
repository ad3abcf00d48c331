"""Datasets: published layouts (``LAYOUTS``: a registry other packages extend) and preprocessing.

The public names, imported from here (``from captum_fgattr.bench.data import ImageFolderDataset``); the modules
behind them may move:

* :class:`ImageFolderDataset` — labelled images in ``root/<class>/**/<image>`` folders; :class:`ImageListDataset`,
  the same from a fixed ``(path, label)`` list; both give ``(image (C, H, W), label)`` items.
* :func:`load_dataset` — one split of a dataset kind (``"folder"``, ``"covid-qu-ex"``, ``"hyperkvasir"``,
  ``"imagenet"``, registered ones), preprocessed; :func:`check_same_classes` — two split folders' class folders agree.
* :class:`Preprocess` and :func:`build_transform` — resize, center crop, normalise (RGB, or grayscale with
  ``channels=1``); :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, :data:`CLIP_MEAN`, :data:`CLIP_STD`.
* :data:`LAYOUTS`, :class:`Layout`, :class:`SplitSource` — the dataset kinds and how to register one.

They are loaded at first use (the datasets import torch; the registry of kinds, :mod:`.kinds`, does not, so that
``fgattr <command> --help`` stays instant).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captum_fgattr.bench.data.layouts import (
        CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, ImageFolderDataset, ImageListDataset, Layout,
        Preprocess, SplitSource, build_transform, check_same_classes, load_dataset,
    )

__all__ = [
    "ImageFolderDataset", "ImageListDataset", "load_dataset", "check_same_classes", "Preprocess", "build_transform",
    "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "LAYOUTS", "Layout", "SplitSource",
]


def __getattr__(name: str) -> Any:
    """A public name, from :mod:`.layouts` at its first use."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}; its public names: {__all__}")
    from captum_fgattr.bench.data import layouts

    return getattr(layouts, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
