"""What every run's report opens with: the data, the model and the SAEs it was run on, described from the resolved
inputs at run time (stored with the run's configuration, ``[[name, text], ...]`` rows), and the model's accuracy
and class counts on the images the run evaluated (read from the store at report time).

A preset may register its own description (``RunConfig.report_header``, :data:`~captum_fgattr.bench.study.REPORT_HEADERS`);
every other run gets :func:`run_header`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from captum_fgattr.adapters import get_adapter
from captum_fgattr.bench.config import RunConfig
from captum_fgattr.bench.resolve import StudyInputs, preprocessing
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.sae import SparseAutoencoder
from captum_fgattr.sae.layers import sae_quality

__all__ = ["run_header", "class_names", "evaluated_images_line", "CLASS_NAMES_KEY"]

#: key of the test split's class names (``[name, ...]``, label order), stored with the run's configuration
CLASS_NAMES_KEY = "class_names"


def class_names(data: Dataset) -> list[str] | None:
    """The class names of a split (its own ``class_names``, or its underlying dataset's for a subset); None when
    the data does not name its classes (tensors)."""
    while data is not None:
        names = getattr(data, "class_names", None)
        if names is not None:
            return [str(name) for name in names]
        data = getattr(data, "dataset", None)
    return None


def _sae_line(layer: int, sae: SparseAutoencoder) -> str:
    quality = sae_quality(sae)
    size = f"block {layer}: {sae.config.n_features} features, k = {sae.config.k}"
    if "heldout_explained_variance" in quality:
        return (f"{size}, held-out EV {quality['heldout_explained_variance']:.3f}, L0 "
                f"{quality.get('heldout_mean_l0', math.nan):.1f}, dead {quality.get('heldout_dead_fraction', math.nan):.3f}")
    if "explained_variance" in quality:
        return (f"{size}, training-token EV {quality['explained_variance']:.3f}, L0 "
                f"{quality.get('mean_l0', math.nan):.1f}, dead {quality.get('dead_fraction', math.nan):.3f} "
                "(no held-out measurement saved)")
    return f"{size} (no quality measurement saved with it)"


def _model_line(config: RunConfig, model: nn.Module) -> str:
    adapter = get_adapter(model)
    grid = adapter.grid_size()
    size = "×".join(str(s) for s in adapter.img_size)
    outputs = getattr(model, "num_classes", None)
    checkpoint = config.model.checkpoint or f"no checkpoint: random weights (seed {config.model.seed})"
    return (f"{config.model.spec} ({checkpoint}), {size} input, {grid[0]}×{grid[1]} = {grid[0] * grid[1]} patch tokens "
            f"+ {adapter.num_prefix_tokens} prefix, {adapter.depth} blocks"
            + (f", {outputs} classes" if outputs is not None else ""))


def _data_line(config: RunConfig, model: nn.Module, val: Dataset, test: Dataset) -> str:
    data = config.data
    where = ", ".join(f"{name} {value}" for name, value in (("root", data.root), ("val", data.val), ("test", data.test))
                      if value is not None)
    names = class_names(test)
    pre = preprocessing(data, model)
    classes = f"classes {' / '.join(names)}; " if names else ""
    return (f"{data.kind}" + (f" ({where})" if where else "") + f"; {classes}splits val {len(val)}, test {len(test)}"
            f" images; resize {pre.resize or pre.img_size}, normalisation mean {pre.mean} / std {pre.std}")


def run_header(config: RunConfig, inputs: StudyInputs) -> list[list[str]]:
    """The report's description of a run's data (kind, folders, classes, split sizes, preprocessing), model
    (checkpoint, input, patch grid, depth, classes) and SAEs (size and the quality saved with each, per layer)."""
    rows = [["data", _data_line(config, inputs.model, inputs.val, inputs.test)],
            ["model", _model_line(config, inputs.model)]]
    if inputs.saes:
        rows.append(["SAEs", "; ".join(_sae_line(layer, sae) for layer, sae in sorted(inputs.saes.items()))])
    return rows


def evaluated_images_line(store: ResultStore, splits: Sequence[str], names: Sequence[str] | None) -> str | None:
    """'test 300 images (no 150, yes 150), model accuracy 0.913; val …' over the images each split's experiments
    scored (labels and predictions as stored with TransMM's results, else the first method's); None if nothing is
    stored."""
    parts = []
    for split in splits:
        ids = sorted({i for experiment, s in store.experiments() if s == split
                      for i in store.experiment_ids(experiment, split)})
        specs = [spec for experiment, s in store.experiments() if s == split
                 for spec in store.experiment_methods(experiment, split)]
        if not ids or not specs:
            continue
        spec = next((s for s in specs if s.is_transmm), specs[0])
        facts = store.scores(split, spec.key, ids)
        labels, predictions = facts["label"], facts["prediction"]
        if not len(labels):
            continue
        counts = ", ".join(f"{names[c] if names and c < len(names) else f'class {c}'} {int((labels == c).sum())}"
                           for c in np.unique(labels))
        parts.append(f"{split} {len(labels)} images ({counts}), model accuracy {float(np.mean(labels == predictions)):.3f}")
    return "; ".join(parts) or None
