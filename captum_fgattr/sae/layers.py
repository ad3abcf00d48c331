"""Train one SAE per layer of a model over a DataLoader: collect, sweep learning rates, select, save.

Used by ``fgattr train-sae`` and the demo. Output folder::

    OUTPUT/layer_{L}/config.json, sae.safetensors   the selected SAE of block L (0-based)
    OUTPUT/metrics.csv                              one row per (layer, lr) run, ``selected`` marks the pick;
                                                    ``heldout_*``: quality on tokens of images the SAE
                                                    never saw (empty without held-out images)

With several SAE seeds (``seeds``: initialisation and token order), one SAE per layer and seed, all trained on the
one activation cache (the model runs once), each seed's learning rate selected on its own::

    OUTPUT/seed_{s}/layer_{L}/config.json, sae.safetensors   the selected SAE of block L for seed s
    OUTPUT/metrics.csv                                       one row per (seed, layer, lr) run: a ``seed`` column first

Resumable: a layer (and seed) whose folder already holds a saved SAE is kept, and its rows of an existing
``metrics.csv`` are carried over; only the missing layers are collected and trained.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captum_fgattr.files import atomic_write
from captum_fgattr.sae.collect import ActivationCache
from captum_fgattr.sae.io import read_sae_config
from captum_fgattr.sae.model import SAEConfig, SparseAutoencoder
from captum_fgattr.sae.train import TrainConfig, evaluate_sae, sweep_lr

__all__ = ["METRIC_FIELDS", "SEEDED_METRIC_FIELDS", "HELDOUT_FIELDS", "train_layer_saes", "layer_folder",
           "seed_folder", "check_seeds", "sae_quality"]

#: quality on held-out tokens (images not used for training), prefixed ``heldout_`` in rows and saved metrics
HELDOUT_FIELDS = ("heldout_explained_variance", "heldout_dead_fraction", "heldout_mean_l0", "heldout_num_tokens")
METRIC_FIELDS = ("layer", "lr", "explained_variance", "dead_fraction", "mean_l0", "mse", "num_tokens",
                 *HELDOUT_FIELDS, "selected", "train_seconds")
#: ``metrics.csv`` columns of a run over several SAE seeds (``seeds`` of :func:`train_layer_saes`)
SEEDED_METRIC_FIELDS = ("seed", *METRIC_FIELDS)


def layer_folder(output: str | Path, layer: int) -> Path:
    """Where the SAE of block ``layer`` is saved."""
    return Path(output) / f"layer_{layer}"


def seed_folder(output: str | Path, seed: int) -> Path:
    """Where the SAEs of SAE seed ``seed`` are saved by a run over several seeds: a folder of ``layer_{L}/``
    (:func:`layer_folder`), an SAE source folder as a single-seed run's output."""
    return Path(output) / f"seed_{seed}"


def check_seeds(seeds: Sequence[int], name: str = "seeds") -> None:
    """Refuse an empty ``seeds`` or one with repeated, negative or non-int values (``name``: the setting's name in
    the error)."""
    bad = not seeds or len(set(seeds)) != len(seeds)
    if bad or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"{name}={list(seeds)!r}; expected distinct ints >= 0, e.g. 0,1,2")


def _check_saved(folder: Path, expected: SAEConfig) -> None:
    """A saved SAE is only reused if its architecture (and the block it records, where both record one) is the
    one asked for."""
    saved = read_sae_config(json.loads((folder / "config.json").read_text()), source=str(folder))
    recorded = None not in (saved.hook_layer, expected.hook_layer)
    fields = ("d_in", "n_features", "activation", "k", "normalize") + (("hook_layer",) if recorded else ())
    differ = [f for f in fields if getattr(saved, f) != getattr(expected, f)]
    if differ:
        raise ValueError(
            f"{folder} holds an SAE with different {differ} ({[getattr(saved, f) for f in differ]} instead of "
            f"{[getattr(expected, f) for f in differ]}); use another output folder or delete it"
        )


def _read_rows(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of an existing ``metrics.csv`` (``layer`` and ``seed`` as ints).

    Raises:
        ValueError: it is from a run with (without) several seeds and ``fields`` are those of one without (with).
    """
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        seeded = "seed" in fields
        if ("seed" in (reader.fieldnames or ())) != seeded:
            raise ValueError(f"{path.parent} holds SAEs trained {'without' if seeded else 'with'} several seeds "
                             f"({'layer_{L}/' if seeded else 'seed_{s}/layer_{L}/'}); use another output folder")
        ints = [name for name in ("seed", "layer") if name in fields]
        return [{**row, **{name: int(row[name]) for name in ints}} for row in reader]


def _write_rows(path: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def train_layer_saes(
    model: nn.Module,
    loader: Iterable[Any],
    sae_configs: Mapping[int, SAEConfig],
    train_config: TrainConfig,
    output: str | Path,
    *,
    lrs: Sequence[float] | None = None,
    ev_threshold: float = 0.95,
    lr_extensions: int = 0,
    cache_dir: str | Path | None = None,
    cache_dtype: str = "float32",
    keep_cache: bool = False,
    device: torch.device | str | None = None,
    heldout_loader: Iterable[Any] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Train and save the SAE of every layer in ``sae_configs`` (0-based block -> architecture).

    Args:
        model: the ViT, in eval mode; its patch tokens at each layer's resid_post are the data.
        loader: batches of images (or (images, labels)).
        train_config: optimisation settings; ``lrs`` (default ``[train_config.lr]``) are swept per
            layer and one is selected (EV above ``ev_threshold``, then fewest dead features); a selection at
            the grid's edge extends it by up to ``lr_extensions`` steps (:func:`~captum_fgattr.sae.train.sweep_lr`).
        output: folder for ``layer_{L}/`` and ``metrics.csv``.
        cache_dir: activation cache (default ``OUTPUT/activation_cache``), deleted afterwards unless
            ``keep_cache``.
        heldout_loader: batches of images not in ``loader``; every run is also evaluated on their
            patch tokens (:data:`HELDOUT_FIELDS`; the selection still uses the training tokens).
        seeds: SAE seeds (initialisation and token order, each replacing ``train_config.seed``): one SAE per layer
            and seed in ``OUTPUT/seed_{s}/layer_{L}/`` (:func:`seed_folder`), the learning rate swept and selected
            per seed, all from one activation cache; each seed's SAEs equal those a run with only that seed trains.
            Rows and saved metrics gain a ``seed`` (:data:`SEEDED_METRIC_FIELDS`). None: ``train_config.seed``
            only, in ``OUTPUT/layer_{L}/``.

    Returns:
        The metrics rows of every layer (and seed; also in ``OUTPUT/metrics.csv``); the selected SAE's
        metrics, held-out ones included, are also saved with it (``SparseAutoencoder.config.extra["metrics"]``).

    Raises:
        ValueError: ``seeds`` not distinct ints >= 0; ``output`` holds SAEs of another architecture, or from a
            run with (without) ``seeds`` when this one is without (with).
    """
    if seeds is not None:
        check_seeds(seeds)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    lrs = list(lrs) if lrs else [train_config.lr]
    roots = {seed: seed_folder(output, seed) for seed in seeds} if seeds is not None else {train_config.seed: output}
    fields = SEEDED_METRIC_FIELDS if seeds is not None else METRIC_FIELDS
    metrics_path = output / "metrics.csv"
    runs = [(seed, layer) for layer in sorted(sae_configs) for seed in roots]  # (SAE seed, block)
    done = [(seed, layer) for seed, layer in runs if (layer_folder(roots[seed], layer) / "config.json").is_file()]
    for seed, layer in done:
        _check_saved(layer_folder(roots[seed], layer), sae_configs[layer])
    todo = [run for run in runs if run not in done]
    rows = [row for row in _read_rows(metrics_path, fields)
            if (row.get("seed", train_config.seed), row["layer"]) in done]
    if not todo:
        return rows
    layers = sorted({layer for _, layer in todo})
    cache_dir = Path(cache_dir) if cache_dir is not None else output / "activation_cache"
    print(f"collecting patch tokens of blocks {layers} -> {cache_dir}", file=sys.stderr)
    cache = ActivationCache.build(model, loader, layers, cache_dir, dtype=cache_dtype, device=device,
                                  progress=train_config.progress)
    print(f"cached {cache.num_tokens} patch tokens per layer (width {cache.d_model})", file=sys.stderr)
    heldout = None
    try:
        if heldout_loader is not None:
            heldout = ActivationCache.build(model, heldout_loader, layers, cache_dir / "heldout", dtype=cache_dtype,
                                            device=device, progress=train_config.progress)
            print(f"cached {heldout.num_tokens} held-out patch tokens per layer", file=sys.stderr)
        for seed, layer in todo:
            start = time.perf_counter()
            sweep = sweep_lr(cache.array(layer), lrs, sae_configs[layer], replace(train_config, seed=seed),
                             ev_threshold=ev_threshold, lr_extensions=lr_extensions, device=device)
            seconds = (time.perf_counter() - start) / len(sweep.results)
            held = [{} if heldout is None else _heldout_metrics(result.sae, heldout.array(layer), train_config)
                    for result in sweep.results]
            tag = {"seed": seed} if seeds is not None else {}
            for i, result in enumerate(sweep.results):
                rows.append({**tag, "layer": layer, "lr": result.config.lr, **result.metrics.as_dict(), **held[i],
                             "selected": i == sweep.best_index, "train_seconds": round(seconds, 2)})
            best = sweep.best
            saved = {**best.metrics.as_dict(), **held[sweep.best_index], "lr": best.config.lr, **tag}
            best.sae.save(layer_folder(roots[seed], layer), metrics=saved)
            _write_rows(metrics_path, rows, fields)  # after each layer (and seed): finished ones survive a crash
    finally:
        if not keep_cache:
            if heldout is not None:
                heldout.delete()
            cache.delete()
    return rows


def _heldout_metrics(sae: Any, tokens: Any, train_config: TrainConfig) -> dict[str, float]:
    """:data:`HELDOUT_FIELDS` of ``sae`` on all ``tokens`` (num_tokens, d_in)."""
    metrics = evaluate_sae(sae, tokens, batch_tokens=train_config.batch_tokens).as_dict()
    return {field: metrics[field.removeprefix("heldout_")] for field in HELDOUT_FIELDS}


def sae_quality(sae: SparseAutoencoder) -> dict[str, float]:
    """Quality saved with ``sae`` (:func:`train_layer_saes`): ``explained_variance``, ``dead_fraction``, ``mean_l0``
    (training tokens) and :data:`HELDOUT_FIELDS` (held-out tokens); keys missing when not measured (e.g. an SAE
    from elsewhere)."""
    metrics = sae.config.extra.get("metrics", {})
    keys = ("explained_variance", "dead_fraction", "mean_l0", *HELDOUT_FIELDS)
    return {key: metrics[key] for key in keys if key in metrics}
