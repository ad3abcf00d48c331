"""The whole study in one call: validation sweeps and selections, the test with controls, the report."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from captum_fgattr.bench.config import EvalConfig, Protocol
from captum_fgattr.bench.experiments import DataSource, StudyClock, as_dataset, current_shard, run_sweep, run_test
from captum_fgattr.bench.report import write_report
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.sae import SparseAutoencoder

__all__ = ["run_study"]


def run_study(
    model: nn.Module,
    val: DataSource,
    test: DataSource,
    saes: Mapping[int, SparseAutoencoder],
    run_dir: str | Path,
    protocol: Protocol = Protocol(),
    config: EvalConfig = EvalConfig(),
    report: bool = True,
    resolved_config: Mapping[str, Any] | None = None,
) -> Path:
    """The whole protocol: sweep on ``val``, test on ``test``, then (rank 0) the report. Resumable; prints one
    progress line per finished experiment (elapsed time and an ETA) to stderr.

    Args:
        model: classifier in eval mode, (B, C, H, W) -> (B, classes) logits.
        val, test: splits (datasets of (image, label) or (images, labels) tensors).
        saes: {layer: SAE} for every layer of ``protocol.gated_layers()``.
        run_dir: run folder (store, configuration, ``report/``).
        resolved_config: configuration to store with the run (default: protocol + evaluation settings).

    Returns:
        ``run_dir``.

    Example (tiny random ViT, 2 layers, a few images)::

        run_study(vit, (x_val, y_val), (x_test, y_test), {1: sae1, 2: sae2}, "runs/demo",
                  Protocol(layers=(1, 2), multi_layers=((1, 2),), kappas=(0.5,), c_maxes=(10.0,),
                           baselines=("random",)), EvalConfig(batch_size=4, progress=False))
    """
    run_dir = Path(run_dir)
    with ResultStore(run_dir) as store:
        if current_shard().rank == 0:
            store.log_invocation("run_study", resolved_config or {"protocol": asdict(protocol),
                                                                  "evaluation": asdict(config)})
        val, test = as_dataset(val, "validation data"), as_dataset(test, "test data")
        clock = StudyClock.for_study(protocol, len(val), len(test))  # type: ignore[arg-type]
        run_sweep(model, val, saes, store, protocol, config, clock)
        run_test(model, test, saes, store, protocol, config, clock)
    if report and current_shard().rank == 0:
        write_report(run_dir)
    return run_dir
