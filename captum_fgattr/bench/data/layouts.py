"""Image datasets, published layouts and preprocessing for the benchmark.

Entry point: :func:`load_dataset` ``(kind, root, split, *, subset=None, seed=42, preprocess=None,
class_names=None, cache_dir=None) -> ImageListDataset``, whose items are ``(image (C, H, W) float tensor, label int)``
(C = 3, or 1 for grayscale: ``Preprocess(channels=1)``, e.g. for a model built with ``in_chans=1``).
Every dataset exposes ``classes`` (folder names, label order), ``class_names`` (readable names, e.g. for
CLIP prompts), ``samples`` (``(path, label)``, sorted by label then path) and ``ids`` (paths relative to
``root``: stable per-item ids for the results store). Nothing is downloaded: users bring the files.

Recognised layouts (``kind``); the folder holding the split / class folders is searched for below ``root``
(up to 4 levels), folder names match case-insensitively, and a wrong or empty folder raises an error that
names the path, the expected layout and what was found:

* ``"folder"``: any labelled image folder, ``root/<class>/**/<image>`` (``split=None``) or
  ``root/<split>/<class>/**/<image>``; classes = sorted sub-folders. Preprocessing: :class:`Preprocess`'s
  defaults (bicubic 224, ImageNet mean/std) unless ``preprocess`` is given.
* ``"covid-qu-ex"``: COVID-QU-Ex, splits ``train/val/test`` in the official ``{Train,Val,Test}/
  {COVID-19,Non-COVID,Normal}/images/*.png`` folders (as nested in the archive, e.g. ``Lung Segmentation
  Data/Lung Segmentation Data/Test/...``; the lung set is preferred over the infection set when ``root``
  holds both), or with the images directly in the class folders. Resize 256 -> CenterCrop 224 (bilinear),
  grayscale -> 3 channels, Normalize mean 0.56 / std 0.21.
* ``"hyperkvasir"``: HyperKvasir anatomical landmarks, 6 classes (sorted: cecum, ileum, pylorus,
  retroflex-rectum, retroflex-stomach, z-line) from the published ``labeled-images/{lower,upper}-gi-tract/
  anatomical-landmarks/<class>/*.jpg`` tree or a flat folder of the six class folders; splits
  ``train/val/test`` are a stratified 80/10/10 split of the sorted paths shuffled with ``seed``.
  Resize to 224 x 224 (bilinear), ImageNet mean/std.
* ``"imagenet"``: class-folder ImageNet, ``{train,val}/<synset>/*.JPEG`` below ``root``;
  label = index in sorted synset order; CLIP preprocessing (Resize 224 bicubic shorter side ->
  CenterCrop 224, CLIP mean/std). The study evaluates ``subset=IMAGENET_SUBSET`` (10,000) with seed 42.
  Class names: ``class_names`` file if given, else open_clip's CLIP ImageNet names for the full
  1000-synset set, else the synset ids.

* further layouts registered by other packages (``LAYOUTS.add(name, Layout(...))``), e.g. the embedded default's
  (:mod:`captum_fgattr.bench.default`), whose splits are computed rather than folders: :class:`SplitSource`.

``subset=k`` keeps ``k`` items drawn with ``seed`` (kept in sorted order), for any kind. A class-names
file (``class_names``) is JSON ``{"<folder>": "name"}`` or ``{"0": ["<folder>", "name"]}``, or text with
``<folder> name[, alias...]`` lines (e.g. ``LOC_synset_mapping.txt``; the first alias is kept) or one name
per line in label order.

Example:
    >>> t = build_transform(Preprocess(img_size=32, resize=36, mean=0.56, std=0.21))
    >>> from PIL import Image
    >>> tuple(t(Image.new("L", (50, 40))).shape)
    (3, 32, 32)
"""
from __future__ import annotations

import json
import os
import random
import re
from itertools import accumulate
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_fgattr.bench.data.kinds import (
    CHANNELS, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, Layout, Preprocess, Samples, SplitSource,
    per_channel,
)

__all__ = [
    "IMG_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "IMAGENET_SUBSET", "LAYOUTS",
    "Layout", "SplitSource", "Preprocess", "per_channel", "ImageListDataset", "ImageFolderDataset", "build_transform", "load_dataset",
    "check_same_classes",
]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: the study's ImageNet validation subset size (with seed 42)
IMAGENET_SUBSET = 10_000


def _convert(image: Any, mode: str) -> Any:
    return image.convert(mode) if hasattr(image, "convert") else image


def build_transform(config: Preprocess) -> Callable[[Any], Tensor]:
    """PIL image (any mode; converted to RGB, or to grayscale with ``config.channels == 1``) -> normalised float
    tensor (C, H, W) as ``config`` says (C = ``config.channels``)."""
    from torchvision import transforms

    size = config.img_size if isinstance(config.img_size, int) else tuple(config.img_size)
    resize = size if config.resize is None else config.resize
    resize = resize if isinstance(resize, int) else tuple(resize)
    return transforms.Compose(
        [
            transforms.Lambda(partial(_convert, mode=CHANNELS[config.channels])),
            transforms.Resize(resize, interpolation=transforms.InterpolationMode(config.interpolation)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean=config.mean, std=config.std),
        ]
    )


class ImageListDataset(torch.utils.data.Dataset):
    """``(image, label)`` items from a fixed list of image files, e.g. one split of a published layout.

    Attributes:
        root: the dataset folder; ``ids`` are relative to it.
        classes: class folder names in label order; ``class_to_idx`` maps them back.
        class_names: readable class names in label order (default: ``classes``).
        samples: ``(path, label)`` pairs, sorted by label then path; ``targets``: their labels.
        transform: RGB PIL image -> tensor (C, H, W) (:func:`build_transform`); None returns the RGB PIL image.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        transform: Callable[[Any], Tensor] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.class_names = list(class_names) if class_names is not None else list(self.classes)
        if len(self.class_names) != len(self.classes):
            raise ValueError(f"{len(self.class_names)} class names for {len(self.classes)} classes {self.classes}")
        self.samples = [(Path(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    @property
    def ids(self) -> list[str]:
        """Stable per-item ids: sample paths relative to ``root`` (POSIX form)."""
        return [path.relative_to(self.root).as_posix() for path, _ in self.samples]

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


_SPLIT_ALIASES = {"validation": "val", "valid": "val"}
#: folder names recognised as splits of a "folder" dataset, for the class-set check between splits
_SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _find_dir(base: Path, relative: str) -> Path | None:
    """``base / relative`` matching each part case-insensitively (exact match first), or None."""
    folder = base
    for part in Path(relative).parts:
        exact = folder / part
        if exact.is_dir():
            folder = exact
            continue
        folder = next((d for d in _subdirs(folder) if d.name.lower() == part.lower()), None)
        if folder is None:
            return None
    return folder


def _class_folders(base: Path, layout: Layout, split_dir: str) -> tuple[dict[str, Path], list[str]]:
    """Class name -> folder below ``base`` (label order), and the fixed classes that were not found."""
    if layout.classes:
        found: dict[str, Path] = {}
        for cls in layout.classes:
            candidates = (_find_dir(base, t.format(split=split_dir, cls=cls)) for t in layout.class_dirs)
            folder = next(filter(None, candidates), None)
            if folder is not None:
                found[cls] = folder
        return found, [c for c in layout.classes if c not in found]
    pattern = re.compile(layout.class_pattern) if layout.class_pattern else None
    for template in layout.class_dirs:
        parent = _find_dir(base, template.format(split=split_dir, cls=""))
        folders = [d for d in _subdirs(parent) if pattern is None or pattern.fullmatch(d.name)] if parent else []
        if folders:
            return {d.name: d for d in folders}, []
    return {}, []


def _locate(root: Path, layout: Layout, split_dir: str) -> dict[str, Path]:
    """Class folders of the shallowest base below ``root`` that holds all of them; clear error otherwise."""
    level, best = [root], (0, root, [])
    for _ in range(layout.max_depth + 1):
        matches = []
        for base in level:
            folders, missing = _class_folders(base, layout, split_dir)
            if folders and not missing:
                matches.append((base, folders))
            elif len(folders) > best[0]:
                best = (len(folders), base, missing)
        if len(matches) > 1 and layout.prefer:
            matches = [m for m in matches if layout.prefer in m[0].as_posix().lower()] or matches
        if len(matches) > 1:
            raise ValueError(
                f"several {layout.name} folders under {str(root)!r}: {[str(b.relative_to(root)) for b, _ in matches]}; "
                f"pass one of them as root"
            )
        if matches:
            return matches[0][1]
        level = [d for folder in level for d in _subdirs(folder)]
        if not level:
            break
    below = [d.relative_to(root).as_posix() + "/" for d in _subdirs(root)]
    below += [d.relative_to(root).as_posix() + "/" for top in _subdirs(root)[:4] for d in _subdirs(top)[:4]]
    closest = (f"; closest match {str(best[1])!r} lacks class folders {best[2]}" if best[0] else "")
    what = "no class sub-folders" if not layout.classes else "no matching class folders"
    where = f" or one of its sub-folders (up to {layout.max_depth} levels)" if layout.max_depth else ""
    raise ValueError(
        f"{layout.name} {str(root)!r}: {what}; expected {layout.expected(split_dir)} below it{where} "
        f"(e.g. {layout.example}){closest}; found sub-folders {sorted(below)[:16] or 'none'}"
    )


def check_same_classes(first: str | os.PathLike[str], second: str | os.PathLike[str], pattern: str = "") -> None:
    """Refuse two split folders whose class folders (visible sub-folders matching ``pattern``; "" = any) differ:
    labels are indices into the sorted class folders, so an extra (even empty) or missing class folder would
    silently shift them. A ``second`` folder without class folders is not compared.

    Raises:
        ValueError: names both folders and the class folders only one of them has.
    """
    regex = re.compile(pattern) if pattern else None
    here, there = ({d.name for d in _subdirs(Path(f)) if regex is None or regex.fullmatch(d.name)}
                   for f in (first, second))
    if there and here != there:
        raise ValueError(
            f"class folders differ between splits {str(first)!r} and {str(second)!r}: only in the first "
            f"{sorted(here - there)}, only in the second {sorted(there - here)}. Labels are indices into the sorted "
            "class folders, so they would mean different classes in the two splits; give every split the same "
            "class folders (remove or add the extra ones, an empty folder is enough)"
        )


def _check_sibling_splits(layout: Layout, folders: Mapping[str, Path], kind: str) -> None:
    """:func:`check_same_classes` between the split folder holding ``folders`` (its class folders) and every
    sibling split folder."""
    split_folder = next(iter(folders.values())).parent
    base = split_folder.parent
    if kind == "folder":
        siblings = [d for d in _subdirs(base) if d.name.lower() in _SPLIT_NAMES and d != split_folder]
    else:
        siblings = [d for name in layout.split_dirs.values() if (d := _find_dir(base, name)) not in (None, split_folder)]
    for sibling in siblings:
        check_same_classes(split_folder, sibling, layout.class_pattern)


def _images(folder: Path, image_dirs: Sequence[str], extensions: Sequence[str]) -> list[Path]:
    """Sorted image files of one class folder, from the first of ``image_dirs`` that exists."""
    for sub in image_dirs:
        inner = folder if sub in ("", "**") else _find_dir(folder, sub)
        if inner is not None:
            files = inner.rglob("*") if sub == "**" else inner.iterdir()
            return sorted(
                p for p in files if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file()
            )
    return []


def _scan(
    root: str | os.PathLike[str], layout: Layout, split_dir: str, extensions: Sequence[str] = IMG_EXTENSIONS,
) -> tuple[Path, list[str], list[list[Path]]]:
    """``(root, class folder names, per-class sorted image paths)`` of one split folder layout."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{layout.name} {str(root)!r} does not exist; expected {layout.expected(split_dir)}")
    if not root.is_dir():
        raise NotADirectoryError(f"{layout.name} {str(root)!r} is not a directory")
    exts = tuple(e.lower() for e in extensions)
    folders = _locate(root, layout, split_dir)
    per_class = [_images(folder, layout.image_dirs, exts) for folder in folders.values()]
    empty = [name for name, paths in zip(folders, per_class) if not paths]
    if len(empty) == len(folders) or (layout.classes and empty):
        raise ValueError(
            f"{layout.name} {str(root)!r} has class sub-folders {list(folders)} but no images with extensions "
            f"{list(exts)} in {empty} (expected {layout.expected(split_dir)})"
        )
    return root, list(folders), per_class


class ImageFolderDataset(ImageListDataset):
    """Labelled images in class sub-folders: ``root/<class>/**/<file>`` -> (image, label).

    ``classes`` are the sorted sub-folder names (``label = classes.index(name)``); ``samples`` are sorted
    by class, then path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Tensor] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ) -> None:
        root, classes, per_class = _scan(root, LAYOUTS["folder"], "", extensions)
        samples = [(path, label) for label, paths in enumerate(per_class) for path in paths]
        super().__init__(root, samples, classes, transform)


def _split_by_fraction(
    per_class: Mapping[str, list[Path]], fractions: Mapping[str, float], split: str, seed: int,
) -> list[list[Path]]:
    """Stratified split: each class's sorted paths are shuffled (seeded by ``seed`` and the class name, so
    classes are independent) and cut in ``fractions`` order; the first split takes the rounding remainder."""
    names = list(fractions)
    index = names.index(split)
    chosen = []
    for cls, paths in per_class.items():
        order = list(paths)
        random.Random(f"{seed}/{cls}").shuffle(order)
        sizes = [round(len(order) * fractions[name]) for name in names[1:]]
        bounds = list(accumulate([len(order) - sum(sizes), *sizes], initial=0))
        chosen.append(sorted(order[bounds[index]:bounds[index + 1]]))
    return chosen


def _read_class_names(path: str | os.PathLike[str], classes: Sequence[str]) -> list[str]:
    """Readable names for ``classes`` from a class-names file (formats: module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"class-names file {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"class-names file {path}: expected a JSON object, got {type(data).__name__}")
        pairs = all(isinstance(v, list) and len(v) == 2 for v in data.values())  # Keras {"0": [wnid, name]}
        mapping = {v[0]: v[1] for v in data.values()} if pairs else data
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        pairs = [line.split(maxsplit=1) for line in lines]
        if all(len(p) == 2 and p[0] in classes for p in pairs):
            mapping = {p[0]: p[1].split(",")[0].strip() for p in pairs}
        elif len(lines) == len(classes):
            return lines
        else:
            raise ValueError(
                f"class-names file {path}: expected '<folder> name' lines for folders like {list(classes)[:3]} "
                f"or one name per line for {len(classes)} classes; got {len(lines)} lines"
            )
    missing = [c for c in classes if c not in mapping]
    if missing:
        more = " ..." if len(missing) > 8 else ""
        raise ValueError(f"class-names file {path} has no name for classes {missing[:8]}{more}")
    return [str(mapping[c]) for c in classes]


def _default_class_names(kind: str, classes: list[str]) -> list[str]:
    if kind == "imagenet" and len(classes) == 1000:
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return classes


def load_dataset(
    kind: str,
    root: str | os.PathLike[str] | None,
    split: str | None = None,
    *,
    subset: int | None = None,
    seed: int = 42,
    preprocess: Preprocess | None = None,
    class_names: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageListDataset:
    """One split of a dataset in a recognised layout (see the module docstring), preprocessed.

    Args:
        kind: one of :data:`LAYOUTS` ("folder", "covid-qu-ex", "hyperkvasir", "imagenet", and any registered).
        root: the dataset folder (or any folder above the layout's split / class folders); None only for a
            layout with a :class:`SplitSource` (its default folder).
        split: "train" / "val" / "test" as the layout has them; "folder" also takes any sub-folder name, or
            None for ``root/<class>/...`` itself.
        subset: keep this many items, drawn with ``seed`` and kept in sorted order; None = all.
        seed: seed of the subset and of seeded splits (HyperKvasir).
        preprocess: overrides the layout's standard preprocessing.
        class_names: class-names file; readable names in ``class_names`` (e.g. for CLIP prompts).
        cache_dir: where a :class:`SplitSource` keeps decoded images (default: the user cache folder).

    Returns:
        An :class:`ImageListDataset` of ``(image (3, H, W), label)`` items (a :class:`SplitSource`'s own dataset
        class, exposing the same attributes, for such layouts).

    Raises:
        ValueError: unknown kind or split, no root, no layout / no images under ``root``, bad subset or class
            names, or class folders that differ from a sibling split's (labels would shift between splits).
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[kind]
    split = _SPLIT_ALIASES.get(split.lower(), split.lower()) if split is not None else None
    if kind == "folder" and split is not None:
        layout = replace(layout, class_dirs=("{split}/{cls}",), split_dirs={split: split})
    if split not in (layout.splits or [None]):
        raise ValueError(f"split={split!r} for {layout.name}; expected one of {layout.splits or [None]}")
    cache = Path(cache_dir) if cache_dir is not None else None
    if layout.source is not None:
        root, samples = layout.source.files(Path(root) if root is not None else None, split, cache)
        classes = list(layout.classes)
        if not samples:
            raise ValueError(f"{layout.name} {str(root)!r}: split {split!r} is empty")
    else:
        if root is None:
            raise ValueError(f"{layout.name} needs root, the dataset folder (expected {layout.expected('')} below it)")
        samples, root, classes = _folder_samples(kind, layout, root, split, seed)
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or not 0 < subset <= len(samples):
            raise ValueError(f"subset={subset!r}; expected an int in 1..{len(samples)} (images in split {split!r})")
        samples = [samples[i] for i in sorted(random.Random(seed).sample(range(len(samples)), subset))]
    names = _read_class_names(class_names, classes) if class_names is not None else _default_class_names(kind, classes)
    preprocess = preprocess if preprocess is not None else layout.preprocess
    if layout.source is not None:
        return layout.source.read(root, samples, names, preprocess, cache)  # type: ignore[return-value]
    return ImageListDataset(root, samples, classes, build_transform(preprocess), class_names=names)


def _folder_samples(
    kind: str, layout: Layout, root: str | os.PathLike[str], split: str | None, seed: int,
) -> tuple[Samples, Path, list[str]]:
    """``(samples sorted by label then path, root, classes)`` of ``split`` found in ``layout``'s folders."""
    root, classes, per_class = _scan(root, layout, layout.split_dirs.get(split, "") if split else "")
    if split is not None and layout.split_dirs and not layout.classes:  # discovered classes, one folder per split
        _check_sibling_splits(layout, _locate(root, layout, layout.split_dirs[split]), kind)
    if layout.split_fractions:
        per_class = _split_by_fraction(dict(zip(classes, per_class)), layout.split_fractions, split, seed)
    samples = [(path, label) for label, paths in enumerate(per_class) for path in paths]
    if not samples:
        raise ValueError(f"{layout.name} {str(root)!r}: split {split!r} is empty ({sum(map(len, per_class))} images)")
    return samples, root, classes
