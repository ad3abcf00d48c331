"""Metric-validity checks of a finished test experiment, on a seeded subset of its images (docs/method.md §5,
"Metric validity"): for every ranked method (TransMM, the FG configurations, the baselines; not FG's controls)

* **randomisation**: MPRT (the map on the trained model vs on the model with every layer re-initialised, top-down)
  and RandomLogit (the map for the target vs for another class), Spearman ρ per image
  (:func:`quantus_saco.randomisation.weight_dependence`);
* **test–retest**: Faithfulness Correlation again with another subset seed (``metrics.seed + 1``);
* **replacement value**: SaCo, FC and PF with the removed patches replaced by a black image (the model-input value
  of a black pixel, ``protocol.black_input``) and by a blurred copy of the image, instead of the image's mean.

Results go to ``RUN_DIR/validity.json``, written after each method, so a rerun resumes where it stopped; the report
reads them with the stored test scores (:mod:`captum_fgattr.bench.analysis.validity`).
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms.functional import gaussian_blur

from captum_fgattr.adapters import get_adapter
from captum_fgattr.bench.config import EvalConfig, Protocol
from captum_fgattr.bench.evaluate import select_ids
from captum_fgattr.bench.experiments import TEST, control_name
from captum_fgattr.bench.methods import MethodSpec, build_method
from captum_fgattr.bench.metrics import MetricBatch
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.files import atomic_write
from captum_fgattr.sae import SparseAutoencoder
from quantus_saco.forwards import PerturbedForwards
from quantus_saco.randomisation import weight_dependence

__all__ = ["VALIDITY_FILE", "FILLS", "validity_methods", "validity_images", "run_validity", "read_validity",
           "blurred"]

#: the run folder's file of validity results
VALIDITY_FILE = "validity.json"
#: replacements compared with the image mean
FILLS = ("black", "blur")


def validity_methods(store: ResultStore) -> list[MethodSpec]:
    """The test experiment's ranked methods: all but FG's controls, in table order."""
    return [s for s in store.experiment_methods(TEST, "test") if not (s.is_fg and control_name(s) is not None)]


def validity_images(store: ResultStore, protocol: Protocol) -> list[int]:
    """The seeded subset (``protocol.validity_images`` of the test experiment's images, seed
    ``protocol.subset_seed``), sorted."""
    ids = store.experiment_ids(TEST, "test")
    chosen = select_ids(len(ids), protocol.validity_images, protocol.subset_seed)
    return [ids[i] for i in chosen]


def blurred(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> the images under a Gaussian blur of σ = patch_size / 2 (kernel 2·patch_size + 1)."""
    return gaussian_blur(images, [2 * patch_size + 1] * 2, [patch_size / 2] * 2)


def read_validity(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored validity results of a run (None if it has none)."""
    path = Path(run_dir) / VALIDITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class _Batch:
    """One chunk of the subset with what every method's checks share: the model's outputs on the images, the
    replacement images, and the outputs on perturbed images (one store per replacement, shared by the methods)."""

    ids: Tensor  # (B,) dataset ids
    images: Tensor  # (B, C, H, W)
    labels: Tensor  # (B,)
    logits: Tensor  # (B, classes) on ``images``
    fills: dict[str, Tensor]  # FILLS name -> (B, C, H, W) replacement image
    forwards: dict[str, PerturbedForwards]  # "mean" and FILLS names -> shared outputs on perturbed images


def _batches(model: nn.Module, data: Dataset, ids: Sequence[int], size: int, black_input: Sequence[float],
             patch_size: int) -> list[_Batch]:
    """The subset in chunks of ``size`` ids, on the model's device."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), size):
        chunk = list(ids[start:start + size])
        items = [data[i] for i in chunk]
        x = torch.stack([torch.as_tensor(image) for image, _ in items]).to(device)
        with torch.no_grad():
            logits = model(x).float()
        black = torch.tensor(black_input, dtype=x.dtype, device=device).reshape(1, -1, 1, 1).expand_as(x).contiguous()
        fills = {"black": black, "blur": blurred(x, patch_size)}
        forwards = {"mean": PerturbedForwards(model, x, patch_size),
                    **{name: PerturbedForwards(model, x, patch_size, fill) for name, fill in fills.items()}}
        out.append(_Batch(torch.tensor(chunk, device=device), x,
                          torch.as_tensor([int(y) for _, y in items], device=device), logits, fills, forwards))
    return out


def _method_results(model: nn.Module, spec: MethodSpec, saes: Mapping[int, SparseAutoencoder],
                    batches: Sequence[_Batch], config: EvalConfig, patch_size: int) -> dict[str, Any]:
    """One method's randomisation, retest and replacement scores on the subset (lists in image order)."""
    metrics = replace(config.metrics, pf_replacement="original_mean")  # the fills replace patches by fixed images
    method = build_method(spec, model, saes)
    out: dict[str, Any] = {"label": spec.label, "fc_retest": [], **{fill: {"saco": [], "fc": [], "pf_auc": []}
                                                                     for fill in FILLS}}
    targets = []
    for b in batches:
        target = b.logits.argmax(dim=1) if config.target == "prediction" else b.labels
        attr = method(b.images, target, b.ids).detach().float()
        batch = MetricBatch(model, b.images, attr, target, b.ids, b.logits, patch_size, metrics,
                            max_batch=config.metric_batch, forwards=b.forwards["mean"])
        out["fc_retest"] += batch.engine(("fc",), seed=metrics.seed + 1)["fc"].tolist()
        for fill in FILLS:
            scores = replace(batch, forwards=b.forwards[fill]).engine(fill=b.fills[fill])
            for name in ("saco", "fc", "pf_auc"):
                out[fill][name] += scores[name].tolist()
        targets.append(target)

    device = batches[0].images.device

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
        order = torch.arange(len(x), device=device)  # id-seeded methods (random): the same ids for both models
        return build_method(spec, model, saes)(x, torch.as_tensor(targets, device=device).long(),
                                               order).detach().cpu().numpy()

    checks = weight_dependence(model, torch.cat([b.images for b in batches]).cpu().numpy(),
                               torch.cat(targets).cpu().numpy(), explain, patch_size, batch_size=config.batch_size,
                               device=str(device))
    out["mprt"], out["random_logit"] = checks.mprt.tolist(), checks.random_logit.tolist()
    return out


def run_validity(model: nn.Module, test: Dataset, saes: Mapping[int, SparseAutoencoder], store: ResultStore,
                 protocol: Protocol, config: EvalConfig) -> Path | None:
    """Compute the checks of every ranked method not yet in ``RUN_DIR/validity.json`` (see the module docstring);
    returns the file, or None when ``protocol.validity_images`` is None (no checks configured).

    Raises:
        ValueError: no ``protocol.black_input`` (the black replacement's model-input value), or the test
            experiment has not run.
    """
    if protocol.validity_images is None:
        return None
    if protocol.black_input is None:
        raise ValueError("the validity checks replace patches by black: set protocol.black_input")
    if (TEST, "test") not in store.experiments():
        raise ValueError("run the test experiment before the validity checks")
    model.eval()
    patch_size = get_adapter(model).patch_size[0]
    ids = validity_images(store, protocol)
    path = store.run_dir / VALIDITY_FILE
    stored = read_validity(store.run_dir) or {}
    if stored.get("images") != ids or stored.get("seed") != config.metrics.seed:
        stored = {"images": ids, "seed": config.metrics.seed, "methods": {}}
    metrics = config.metrics.resolved(math.prod(get_adapter(model).grid_size()))
    config = replace(config, metrics=metrics)
    batches = _batches(model, test, ids, config.batch_size, protocol.black_input, patch_size)
    todo = [spec for spec in validity_methods(store) if spec.key not in stored["methods"]]
    for n, spec in enumerate(todo, start=1):
        stored["methods"][spec.key] = _method_results(model, spec, saes, batches, config, patch_size)
        text = json.dumps(stored, indent=1)
        atomic_write(path, lambda tmp: tmp.write_text(text))
        if config.progress:
            print(f"fgattr: validity checks {n}/{len(todo)} ({spec.label})", file=sys.stderr)
    return path
