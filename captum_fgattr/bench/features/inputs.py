"""What a finished run was computed with, rebuilt for its feature study: the model, the data and the SAEs from the
configuration stored in the run's database (the last ``sweep`` / ``evaluate`` / ``run`` configuration,
:mod:`captum_fgattr.bench.resolve`; ``fgattr demo`` stores its run description as ``run`` too)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from captum_fgattr.bench.resolve import load_inputs, load_saes, load_split, preprocessing
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import stored_run_config
from captum_fgattr.sae import SparseAutoencoder

__all__ = ["RunComponents", "load_run_components"]

_RUN_COMMANDS = ("sweep", "evaluate", "run", "demo")


@dataclass
class RunComponents:
    """What a stored run was computed with."""

    model: nn.Module  # eval mode
    splits: Mapping[str, Dataset]  # split name -> dataset (ids = indices, as evaluated)
    saes: Mapping[int, SparseAutoencoder]  # layer -> SAE
    class_names: Sequence[str] | None


def load_run_components(store: ResultStore, layers: Sequence[int], splits: Sequence[str],
                        progress: bool = True) -> RunComponents:
    """Rebuild the model, ``splits`` and the SAEs of ``layers`` from the run's last stored configuration
    (``fgattr sweep / evaluate / run / demo``); ``progress``: progress bars if the model has to be retrained.

    Raises:
        ValueError: the run stores no configuration it can be rebuilt from.
    """
    for command, _, config in reversed(store.invocations()):
        if command in _RUN_COMMANDS:
            run = stored_run_config(config).merged({"evaluation.progress": progress})
            model, first = load_inputs(run, splits[0])
            pre = preprocessing(run.data, model)
            data = {splits[0]: first, **{name: load_split(run.data, name, pre, run.cache_dir) for name in splits[1:]}}
            return RunComponents(model.eval(), data, load_saes(run.saes, list(layers), model),
                                 getattr(first, "class_names", None))
    raise ValueError(f"run {store.run_dir} stores no `fgattr sweep/evaluate/run/demo` configuration to rebuild "
                     "the model, data and SAEs from; use captum_fgattr.bench.features.study.analyze_features directly")
