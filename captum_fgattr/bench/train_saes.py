"""Train one SAE per layer of a run description's model on an image folder (``fgattr train-sae``).

The model runs once over the images; patch-token activations of every requested layer go to an
on-disk cache (``numpy.memmap``), from which each layer's SAE is trained (one run per learning rate,
selected by the thesis rule, :func:`captum_fgattr.sae.layers.train_layer_saes`; a selection at the edge of
the learning-rate grid extends the grid by up to ``lr_extensions`` steps beyond that edge). Output::

    OUTPUT/layer_{L}/config.json, sae.safetensors   the selected SAE of block L (0-based)
    OUTPUT/metrics.csv                              one row per (layer, lr) run, ``selected`` marks the pick;
                                                    heldout_* columns: explained variance, dead fraction
                                                    and L0 on the held-out images' tokens
    OUTPUT/run.json                                 the settings, the model, and the held-out images

With several SAE seeds (``seeds``, for replication across SAE initialisations and token orders), one SAE per layer
and seed, from the one activation cache, the learning rate selected per seed::

    OUTPUT/seed_{s}/layer_{L}/...                   the selected SAE of block L for SAE seed s
    OUTPUT/metrics.csv                              one row per (seed, layer, lr) run (a ``seed`` column)

``OUTPUT/seed_{s}`` is an SAE source folder as a single-seed run's ``OUTPUT`` (``fgattr run --saes``), and holds the
SAEs a run with ``seeds=[s]`` trains. ``seed`` keeps seeding the held-out split and a model without checkpoint.

A seeded, per-class fraction of the images (``heldout_fraction``, default 0.1) is held out of SAE
training: the SAEs are judged on tokens they never saw, not only on their training tokens.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from captum_fgattr.adapters import get_adapter
from captum_fgattr.bench.config import RunConfig
from captum_fgattr.bench.data.layouts import ImageFolderDataset, build_transform
from captum_fgattr.bench.models.loading import check_device
from captum_fgattr.bench.resolve import load_model, normalisation_note, preprocessing, thesis_layers
from captum_fgattr.sae.layers import check_seeds, train_layer_saes
from captum_fgattr.sae.train import TrainConfig, sae_config_for

__all__ = ["SAETraining", "train_saes", "heldout_split", "sized_defaults"]


@dataclass(frozen=True)
class SAETraining:
    """What to train and how (the flags of ``fgattr train-sae``); None: sized from the model and data
    (:func:`sized_defaults`)."""

    data: str  # image folder root/<class>/<image>
    output: str
    layers: Sequence[int] | None = None  # 0-based blocks
    expansion: int | None = None  # n_features = expansion * width
    activation: str = "topk"  # or "relu"
    k: int | None = None  # TopK active features
    normalize: str = "none"
    l1: float = 1e-5  # L1 coefficient for relu
    lrs: Sequence[float] = (5e-4, 1e-3)  # swept, one selected per layer
    lr_extensions: int = 2  # a selection at the grid's edge extends it by up to this many steps beyond it
    epochs: int = 3
    batch_tokens: int | None = None
    warmup_steps: int | None = None
    ev_threshold: float = 0.95  # selection rule: EV above this, then fewest dead
    seed: int = 0  # the held-out split, a model without checkpoint and, without seeds, the SAEs
    seeds: Sequence[int] | None = None  # SAE seeds: one SAE per layer and seed in OUTPUT/seed_{s}/; None: seed's only
    device: str = "auto"  # cuda if available
    batch_size: int = 32  # images per forward pass
    num_workers: int = 0
    heldout_fraction: float = 0.1
    cache_dir: str | None = None  # default OUTPUT/activation_cache
    cache_dtype: str = "float32"
    keep_cache: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "batch_tokens", "expansion", "k"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')}={value}; expected a positive int")
        if self.lr_extensions < 0:
            raise ValueError(f"--lr-extensions={self.lr_extensions}; expected an int >= 0")
        if self.seeds is not None:
            check_seeds(self.seeds, "--seeds")


def sized_defaults(depth: int, width: int, tokens: int) -> dict[str, Any]:
    """SAE defaults sized by the model and the data (the thesis's values for ViT-B/16 on a large set).

    layers: the thesis's positions 2..10 of 12 blocks scaled to ``depth``, as ``fgattr run`` sizes them
    (:func:`captum_fgattr.bench.resolve.thesis_layers`); expansion: 64 from width
    512 up, 32 from 256, else 16; k: width / 6 (128 for 768); batch_tokens: the power of two nearest
    tokens / 256, within 64..4096 (a few hundred steps per epoch). The warm-up (5 % of all steps, at
    most 500) follows once the batch size is known.

    Example::

        >>> sized_defaults(12, 768, 2_000_000) == {"layers": list(range(2, 11)), "expansion": 64, "k": 128,
        ...                                        "batch_tokens": 4096}
        True
        >>> sized_defaults(6, 96, 134_464)
        {'layers': [1, 2, 3, 4], 'expansion': 16, 'k': 16, 'batch_tokens': 512}
    """
    batch = 2 ** round(math.log2(max(tokens / 256, 1)))
    return {"layers": thesis_layers(depth), "expansion": 64 if width >= 512 else 32 if width >= 256 else 16,
            "k": max(1, round(width / 6)), "batch_tokens": int(min(4096, max(64, batch)))}


def heldout_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, held-out indices)``: per class, a seeded ``round(fraction * n)`` of its images
    (at least one when ``fraction > 0`` and the class has two or more) are held out; both sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--heldout-fraction={fraction}; expected a number in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    heldout: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        n = max(1, round(fraction * len(members))) if fraction > 0 and len(members) >= 2 else 0
        heldout += [members[j] for j in torch.randperm(len(members), generator=gen)[:n].tolist()]
    held = set(heldout)
    return [i for i in range(len(labels)) if i not in held], sorted(heldout)


def train_saes(config: RunConfig, training: SAETraining) -> list[dict[str, Any]]:
    """Train and save the SAEs of ``training.layers`` for ``config``'s model (its model section and data
    preprocessing, as ``fgattr run`` sees them) on ``training.data``, one per layer and SAE seed with
    ``training.seeds``; the sizing and the split are printed to stderr. Returns the metrics rows (also in
    ``OUTPUT/metrics.csv``).

    Raises:
        ValueError: no model, a layer out of range, or an SAE the model cannot take.
    """
    if training.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = check_device(training.device, "--device")
    torch.manual_seed(training.seed)

    if not config.model.name:
        raise ValueError("no model: give --model (e.g. timm:vit_base_patch16_224) or a --config file with model.name")
    classes = ImageFolderDataset(training.data).classes  # a file listing: the class names CLIP classifies over
    model = load_model(config.model, class_names=classes).to(device)
    adapter = get_adapter(model)
    if training.layers is not None:
        bad = [layer for layer in training.layers if not 0 <= layer < adapter.depth]
        if bad:
            raise ValueError(f"--layers {bad} out of range for {config.model.name} with {adapter.depth} blocks "
                             f"(0..{adapter.depth - 1})")
    preprocess = preprocessing(config.data, model)
    note = normalisation_note(config.data, preprocess)
    if note is not None:
        print(note, file=sys.stderr)
    dataset = ImageFolderDataset(training.data, build_transform(preprocess))
    train_ids, heldout_ids = heldout_split(dataset.targets, training.heldout_fraction, training.seed)

    def loader_of(ids: list[int]) -> torch.utils.data.DataLoader:
        subset = torch.utils.data.Subset(dataset, ids)
        return torch.utils.data.DataLoader(subset, batch_size=training.batch_size, shuffle=False,
                                           num_workers=training.num_workers)

    grid = adapter.grid_size()
    patches = grid[0] * grid[1]
    tokens = len(train_ids) * patches
    sized = sized_defaults(adapter.depth, adapter.embed_dim, tokens)
    given = {"layers": training.layers, "expansion": training.expansion, "k": training.k,
             "batch_tokens": training.batch_tokens}
    resolved = {name: value if value is not None else sized[name] for name, value in given.items()}
    steps = math.ceil(tokens / resolved["batch_tokens"]) * training.epochs
    resolved["warmup_steps"] = (training.warmup_steps if training.warmup_steps is not None
                                else min(500, max(1, steps // 20)))
    layers = sorted(set(resolved["layers"]))
    sized_names = [name for name in (*given, "warmup_steps") if getattr(training, name) is None]
    print(f"{config.model.name}: {adapter.depth} blocks of width {adapter.embed_dim}, {patches} patches; "
          f"{tokens} training tokens -> layers {layers}, expansion {resolved['expansion']}, k {resolved['k']}, "
          f"batch {resolved['batch_tokens']} tokens, {steps} steps, warm-up {resolved['warmup_steps']} steps "
          f"(sized from the model and data: {', '.join(sized_names) or 'none'})", file=sys.stderr)
    sae_configs = {
        layer: sae_config_for(
            adapter.embed_dim, expansion=resolved["expansion"], k=resolved["k"], activation=training.activation,
            normalize=training.normalize, hook_layer=layer, model_name=config.model.name,
        )
        for layer in layers
    }  # bad k / expansion fail here, before the model runs
    train_cfg = TrainConfig(
        lr=training.lrs[0], epochs=training.epochs, batch_tokens=resolved["batch_tokens"],
        warmup_steps=resolved["warmup_steps"], l1_coefficient=training.l1, seed=training.seed,
        progress=training.progress,
    )

    output = Path(training.output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(training), "resolved": resolved, "model": config.to_dict()["model"], "device": str(device),
                "num_images": len(dataset), "classes": dataset.classes, "preprocess": repr(preprocess),
                "heldout_images": [dataset.ids[i] for i in heldout_ids]}
    seeds = f"; SAE seeds {', '.join(map(str, training.seeds))} (one cache)" if training.seeds is not None else ""
    print(f"training on {len(train_ids)} images, {len(heldout_ids)} held out for the held-out metrics{seeds}",
          file=sys.stderr)
    (output / "run.json").write_text(json.dumps(settings, indent=2))
    return train_layer_saes(model, loader_of(train_ids), sae_configs, train_cfg, output, lrs=training.lrs,
                            ev_threshold=training.ev_threshold, lr_extensions=training.lr_extensions,
                            cache_dir=training.cache_dir,
                            cache_dtype=training.cache_dtype, keep_cache=training.keep_cache, device=device,
                            heldout_loader=loader_of(heldout_ids) if heldout_ids else None, seeds=training.seeds)
