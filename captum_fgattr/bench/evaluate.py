"""Batched, resumable, shardable evaluation: attribution + the run's metrics per image into the store (every
registered metric but the extra ones, and the extra ones ``config.metrics.extra`` names).

For each batch of images: one no-grad forward for the predictions, then per pending method one
attribution call (one forward + backward for TransMM / FG-TransMM) and each registered metric's
``compute`` (:mod:`captum_fgattr.bench.metrics`; SaCo, FC and PF share one call of the batched metric
engine :func:`quantus_saco.engine.evaluate_patch_metrics`, and the methods share the model's outputs on
the batch's perturbed images, :class:`~quantus_saco.forwards.PerturbedForwards`: FC's subsets are drawn per
image, so they are forwarded once per batch, not once per method); the batch's rows are committed at once. A
method is pending on a batch while some image lacks a score of one of the run's metrics.

Batches are fixed chunks of the sorted image ids (``batch_size`` consecutive ids), whatever has already
been done, and ``torchrun`` ranks take every ``world``-th chunk. Faithfulness Correlation draws its
random patch subsets per position in the batch, so fixed chunks make a resumed or sharded run give the
same numbers as one uninterrupted process (the batch size is therefore part of the run's fingerprint).

Output goes to stderr between the lines of the progress bar (:func:`note`): the warnings raised while the metrics
are computed (e.g. SaCo undefined for some images) are counted, not printed per batch, and summarised in one line
each when the evaluation ends.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TextIO

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_fgattr.adapters import get_adapter
from captum_fgattr.bench.config import EvalConfig, positive_int
from captum_fgattr.bench.distributed import Shard
from captum_fgattr.bench.methods import MethodSpec, build_method
from captum_fgattr.bench.metrics import MetricBatch, run_metric_specs
from captum_fgattr.bench.store import ResultRow, ResultStore
from captum_fgattr.sae import SparseAutoencoder
from quantus_saco.forwards import PerturbedForwards
from quantus_saco.scores import UndefinedScoreWarning

__all__ = ["select_ids", "display_image", "evaluate_methods", "note", "EvaluationProgress"]


def note(text: str, stream: TextIO | None = None) -> None:
    """Print ``text`` as a line on ``stream`` (default: ``sys.stderr`` at the time of the call) without breaking a
    progress bar: tqdm clears its bars, writes the line and draws them again."""
    tqdm.write(text, file=stream or sys.stderr)


class EvaluationProgress(Protocol):
    """What :func:`evaluate_methods` reports while it runs (e.g. to
    :class:`~captum_fgattr.bench.experiments.StudyClock`)."""

    def start(self, pending: int) -> None:
        """``pending`` evaluations (method × image) are left to compute; the others of the call are stored."""

    def advance(self, evaluations: int) -> None:
        """One batch of ``evaluations`` was computed and committed."""


@dataclass
class MetricWarnings:
    """Warnings raised while the metrics are computed, counted (:meth:`counting`) instead of printed into a progress
    bar, and summarised at the end (:meth:`summary`)."""

    undefined: Counter[tuple[str, str]] = field(default_factory=Counter)  # (metric, reason) -> undefined scores
    other: Counter[str] = field(default_factory=Counter)  # "Category: message" -> times raised

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Record the warnings raised inside instead of printing them: every
        :class:`~quantus_saco.scores.UndefinedScoreWarning`, and the others the warning filters would show."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UndefinedScoreWarning)
            yield
        for record in caught:
            if isinstance(record.message, UndefinedScoreWarning):
                self.undefined[record.message.metric, record.message.reason] += record.message.count
            else:
                self.other[f"{record.category.__name__}: {record.message}"] += 1

    def summary(self, evaluations: int) -> list[str]:
        """One line per kind of warning counted over ``evaluations`` evaluations, e.g. "SaCo undefined (all group
        saliences equal) for 3 of 480 evaluations; excluded and counted in the tables"."""
        return ([f"{metric} undefined ({reason}) for {n:,} of {evaluations:,} evaluations; excluded and counted in "
                 "the tables" for (metric, reason), n in self.undefined.items()]
                + [f"{text} (raised {n:,}×)" for text, n in self.other.items()])


def select_ids(n: int, limit: int | None = None, seed: int = 42) -> list[int]:
    """Sorted image ids of a split of ``n`` images: all, or ``limit`` drawn with a seeded permutation."""
    if n < 1:
        raise ValueError("the dataset is empty (0 images)")
    if limit is None or limit >= n:
        return list(range(n))
    positive_int("limit", limit)
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def display_image(image: Tensor) -> Tensor:
    """(C, H, W) preprocessed image -> (H, W, 3) uint8, min-max scaled (for figures only)."""
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo) if hi > lo else torch.zeros_like(image)
    pixels = (scaled * 255).round().to(torch.uint8).permute(1, 2, 0)
    return pixels.expand(-1, -1, 3) if pixels.shape[-1] == 1 else pixels


def _image_name(dataset: Dataset, image_id: int) -> str:
    samples = getattr(dataset, "samples", None)
    root = getattr(dataset, "root", None)
    if samples is None:
        return str(image_id)
    path = Path(samples[image_id][0])
    return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.as_posix()


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


def evaluate_methods(
    model: nn.Module,
    dataset: Dataset,
    specs: Sequence[MethodSpec],
    store: ResultStore,
    *,
    experiment: str,
    split: str,
    image_ids: Sequence[int] | None = None,
    saes: Mapping[int, SparseAutoencoder] | None = None,
    config: EvalConfig = EvalConfig(),
    shard: Shard = Shard(),
    on_batch: Callable[[int], None] | None = None,
    progress: EvaluationProgress | None = None,
) -> int:
    """Evaluate ``specs`` on ``image_ids`` of ``dataset`` and commit per-image rows; skips stored rows.

    Args:
        model: classifier in eval mode, (B, C, H, W) -> (B, classes) logits; moved to ``config.device``.
        dataset: items ``(image (C, H, W), label)``; image id = index.
        specs: methods, in the order the report lists them.
        store: the run's store (its fingerprint is checked against ``config``).
        experiment, split: names the rows are filed under.
        image_ids: ids to evaluate (default: all); duplicates are ignored.
        saes: {layer: SAE} for ``fg`` methods; moved to ``config.device``.
        shard: this rank's share (every ``world``-th batch).
        on_batch: called with the number of batches committed so far by this process.
        progress: told the evaluations left to compute, then each batch's as it is committed.

    Returns:
        Rows this process added.

    Raises:
        ValueError: empty dataset / ids out of range / no methods / a method that cannot be built
            (e.g. missing SAE for a gated layer) / settings differing from those stored in the run.
    """
    if not specs:
        raise ValueError("no methods to evaluate")
    n = len(dataset)  # type: ignore[arg-type]
    ids = sorted(set(range(n) if image_ids is None else (int(i) for i in image_ids)))
    if not ids:
        raise ValueError(f"no images to evaluate in split {split!r} (dataset of {n} images)")
    if ids[0] < 0 or ids[-1] >= n:
        raise ValueError(f"image ids must lie in [0, {n}) for split {split!r}; got {ids[0]}..{ids[-1]}")
    if len({spec.key for spec in specs}) != len(specs):
        raise ValueError(f"duplicate methods in {[spec.label for spec in specs]}")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before evaluating")
    device = torch.device(config.device)
    model.to(device)
    saes = {layer: sae.to(device) for layer, sae in (saes or {}).items()}
    methods = {spec.key: build_method(spec, model, saes) for spec in specs}
    adapter = get_adapter(model)
    if adapter.patch_size[0] != adapter.patch_size[1]:
        raise ValueError(f"patch size {adapter.patch_size} is not square; the patch metrics need square patches")
    grid = adapter.grid_size()
    config = replace(config, metrics=config.metrics.resolved(grid[0] * grid[1]))
    store.check_fingerprint(config.fingerprint())
    store.register_experiment(experiment, split, specs, ids)

    names = [metric.name for metric in run_metric_specs(config.metrics.extra)]
    done = {spec.key: store.done_ids(split, spec.key, names) for spec in specs}
    mine = _chunks(ids, config.batch_size)[shard.rank::shard.world]
    work = [(chunk, [s for s in specs if not set(chunk) <= done[s.key]]) for chunk in mine]
    work = [(chunk, todo) for chunk, todo in work if todo]
    gallery = set(ids[::max(1, len(ids) // config.gallery)][:config.gallery]) if config.gallery else set()
    loader = DataLoader(dataset, batch_sampler=[chunk for chunk, _ in work], num_workers=config.num_workers)
    desc = f"{experiment}/{split}" + (f" rank {shard.rank}" if shard.world > 1 else "")
    bar = tqdm(total=sum(len(todo) for _, todo in work), disable=not (config.progress and work), unit="batch", desc=desc)
    pending = sum(len(chunk) * len(todo) for chunk, todo in work)
    if progress is not None:
        progress.start(pending)
    warned = MetricWarnings()
    added = committed = 0
    with bar:
        for (chunk, todo), (images, labels) in zip(work, loader):
            images = images.to(device)
            labels = torch.as_tensor(labels).long().to(device)
            batch_ids = torch.tensor(chunk, device=device)
            with torch.no_grad(), torch.autocast(device.type, enabled=config.autocast):
                logits = model(images).float()
            predictions = logits.argmax(dim=1)
            targets = predictions if config.target == "prediction" else labels
            names = [_image_name(dataset, i) for i in chunk]
            shown = [(split, i, display_image(img).cpu().numpy()) for i, img in zip(chunk, images) if i in gallery]
            forwards = PerturbedForwards(model, images, adapter.patch_size[0])  # shared by the batch's methods
            for spec in todo:
                rows, attributions, deltas = _evaluate_batch(model, methods[spec.key], spec, images, logits, targets,
                                                             batch_ids, forwards, config, warned)
                added += store.add_batch(
                    [ResultRow(split, spec.key, i, name, int(y), int(p), int(t), scores, attributions.shape[1])
                     for i, name, y, p, t, scores in zip(chunk, names, labels.tolist(), predictions.tolist(),
                                                         targets.tolist(), rows)],
                    attributions=[(split, spec.key, i, a.reshape(adapter.grid_size(images)).cpu().numpy())
                                  for i, a in zip(chunk, attributions) if i in gallery],
                    images=shown if spec is todo[0] else (),  # display copies once per batch
                    deltas=[] if deltas is None else [(split, spec.key, i, d) for i, d in zip(chunk, deltas.tolist())])
                committed += 1
                bar.update(1)
                if on_batch is not None:
                    on_batch(committed)
                if progress is not None:
                    progress.advance(len(chunk))
    for line in warned.summary(pending):
        note(f"fgattr: {desc}: {line}")
    return added


def _evaluate_batch(
    model: nn.Module, method: Callable[[Tensor, Tensor, Tensor], Tensor], spec: MethodSpec, images: Tensor,
    logits: Tensor, targets: Tensor, ids: Tensor, forwards: PerturbedForwards, config: EvalConfig,
    warned: MetricWarnings,
) -> tuple[list[dict[str, float]], Tensor, Tensor | None]:
    """``logits`` (B, C): the model's outputs on ``images``, computed once per batch; ``forwards``: its outputs on
    perturbed ``images``, shared by the batch's methods; ``config.metrics`` resolved; ``warned`` counts the metrics'
    warnings.
    -> ({metric: score} per image for every registered metric, (B, P) float32 attributions, (B,) convergence
    deltas or None)."""
    with torch.autocast(images.device.type, enabled=config.autocast):
        attributions = method(images, targets, ids).detach().float()
    deltas = getattr(method, "convergence_delta", None)
    if not torch.isfinite(attributions).all():
        raise ValueError(f"method {spec.label} produced NaN/Inf attributions")
    batch = MetricBatch(model, images, attributions, targets, ids, logits, forwards.patch_size, config.metrics,
                        max_batch=config.metric_batch, autocast=config.autocast, forwards=forwards)
    with warned.counting():
        columns = {metric.name: _per_image(metric.name, metric.compute(batch), len(images))
                   for metric in run_metric_specs(config.metrics.extra)}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return rows, attributions, None if deltas is None else deltas.double().cpu()


def _per_image(name: str, scores: Tensor, n: int) -> list[float]:
    """(n,) scores of metric ``name`` -> n floats (float64).

    Raises:
        ValueError: the metric's ``compute`` returned another shape.
    """
    if tuple(scores.shape) != (n,):
        raise ValueError(f"metric {name!r} returned scores of shape {tuple(scores.shape)}; expected ({n},)")
    return scores.double().cpu().tolist()
