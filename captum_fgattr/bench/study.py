"""The whole study in one call: validation sweeps and selections, the test with controls, the report; and the
same for a run description (:class:`~captum_fgattr.bench.config.RunConfig`), as ``fgattr run`` and ``fgattr demo``
run it."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from captum_fgattr.adapters import get_adapter
from captum_fgattr.bench.config import EvalConfig, Protocol, ReplicateConfig, RunConfig
from captum_fgattr.bench.distributed import current_shard
from captum_fgattr.bench.plugins import BENCH_PLUGINS
from captum_fgattr.bench.experiments import (
    DataSource, Replicate, StudyClock, as_dataset, run_replicates, run_sweep, run_test,
)
from captum_fgattr.bench.report.setup import CLASS_NAMES_KEY, class_names, run_header
from captum_fgattr.bench.report.study_report import write_report
from captum_fgattr.bench.resolve import (
    StudyInputs, input_digests, load_model, load_saes, load_split, load_study_inputs, preprocessing,
)
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.validity import run_validity
from captum_fgattr.files import atomic_write
from captum_fgattr.registry import Registry
from captum_fgattr.sae import SparseAutoencoder

__all__ = ["run_study", "run_configured_study", "record_config", "check_metrics",
           "with_black_input", "stored_run_config", "HEADER_KEY", "CLASS_NAMES_KEY", "HASH_CACHE", "REPORT_HEADERS"]

#: key of the run's description (``[[name, text], ...]``: data, model, SAEs) stored with its configuration
HEADER_KEY = "header"
#: ``RunConfig.report_header`` names: (run description, its resolved inputs) -> ``[[name, text], ...]`` rows at the
#: top of the report (registered by the packages whose presets name them; other runs get
#: :func:`~captum_fgattr.bench.report.setup.run_header`)
REPORT_HEADERS: Registry[Callable[[RunConfig, StudyInputs], list[list[str]]]] = Registry("report header", BENCH_PLUGINS)
#: file in the run folder remembering input files' sha256 by size / mtime / inode (a resume does not rehash them)
HASH_CACHE = ".input_sha256.json"


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
    command: str = "run_study",
    pf_scale: str | None = None,
    replicates: Sequence[Replicate] = (),
) -> Path:
    """The whole protocol: sweep on ``val``, test on ``test``, then (rank 0) the report. Resumable; prints the
    study's progress with an ETA to stderr (:class:`~captum_fgattr.bench.experiments.StudyClock`).

    Args:
        model: classifier in eval mode, (B, C, H, W) -> (B, classes) logits.
        val, test: splits (datasets of (image, label) or (images, labels) tensors).
        saes: {layer: SAE} for every layer of ``protocol.gated_layers()``.
        run_dir: run folder (store, configuration, ``report/``).
        resolved_config: configuration to store with the run under ``command`` (default: protocol + evaluation
            settings).
        pf_scale: PF column of the report ("unit" / "patches"; default: the metric settings').
        replicates: further (model, SAEs) pairs the selected configuration is tested on after the test experiment
            (:func:`~captum_fgattr.bench.experiments.run_replicates`); the report pools over them.

    Returns:
        ``run_dir``.

    Example (tiny random ViT, 2 layers, a few images)::

        run_study(vit, (x_val, y_val), (x_test, y_test), {1: sae1, 2: sae2}, "runs/demo",
                  Protocol(layers=(1, 2), multi_layers=((1, 2),), kappas=(0.5,), c_maxes=(10.0,),
                           baselines=("random",)), EvalConfig(batch_size=4, progress=False))
    """
    run_dir = Path(run_dir)
    check_metrics(config, model)
    with ResultStore(run_dir) as store:
        if current_shard().rank == 0:
            store.log_invocation(command, resolved_config or {"protocol": asdict(protocol),
                                                              "evaluation": asdict(config)})
        val, test = as_dataset(val, "validation data"), as_dataset(test, "test data")
        clock = StudyClock.for_study(protocol, len(val), len(test), len(replicates))  # type: ignore[arg-type]
        run_sweep(model, val, saes, store, protocol, config, clock)
        run_test(model, test, saes, store, protocol, config, clock)
        run_replicates(replicates, store, protocol, config, clock)
        if current_shard().rank == 0:
            run_validity(model, test, saes, store, protocol, config)
    if report and current_shard().rank == 0:
        write_report(run_dir, None, pf_scale)
    return run_dir


def check_metrics(config: EvalConfig, model: nn.Module) -> None:
    """Refuse metric settings ``model``'s patch count cannot take (:meth:`~captum_fgattr.bench.config.MetricConfig.resolved`), before a run
    folder records them: a refused setting recorded first would refuse its corrected rerun in the same folder."""
    grid = get_adapter(model).grid_size()
    config.metrics.resolved(grid[0] * grid[1])


def with_black_input(config: RunConfig, model: nn.Module) -> Protocol:
    """The protocol with the IG baseline set to a black image in the model's input space, unless given."""
    if config.protocol.black_input is not None:
        return config.protocol
    pre = preprocessing(config.data, model)
    mean, std = (v if isinstance(v, tuple) else (v,) for v in (pre.mean, pre.std))
    return replace(config.protocol, black_input=tuple(-m / s for m, s in zip(mean, std)))


def record_config(store: ResultStore, config: RunConfig, splits: Sequence[str], model: nn.Module,
                  header: Sequence[Sequence[str]] | None = None,
                  names: Sequence[str] | None = None) -> dict[str, Any]:
    """Refuse metric settings ``model`` cannot be evaluated with, a run folder filled from another model / data
    (the ``splits`` of ``config``) or from other checkpoint / SAE contents (their sha256,
    :func:`~captum_fgattr.bench.resolve.input_digests`, cached in ``RUN_DIR/`` :data:`HASH_CACHE`), before anything
    is recorded; on rank 0 write ``RUN_DIR/config.json`` (atomically). An input without a recorded digest (e.g. the
    SAE of a layer new to the folder) has it recorded. Returns the configuration to store with the command
    (``header`` rows and the class ``names`` added)."""
    check_metrics(config.evaluation, model)
    store.check_fingerprint(asdict(config.model), "model")
    for split in splits:
        store.check_fingerprint(config.data.fingerprint(split), f"data.{split}")
    for name, (what, sha256) in input_digests(config, store.run_dir / HASH_CACHE).items():
        store.check_content(name, sha256, what)
    for replicate in config.replicates:  # the same checks for every replicate's checkpoint and SAEs
        own = replace(config, model=replicate.model or config.model, saes=replicate.saes, replicates=())
        for name, (what, sha256) in input_digests(own, store.run_dir / HASH_CACHE).items():
            store.check_content(f"replicate.{replicate.name}.{name}", sha256, f"{what} (replicate {replicate.name})")
    if current_shard().rank == 0:
        text = json.dumps(config.to_dict(), indent=2) + "\n"
        atomic_write(Path(config.run_dir) / "config.json", lambda tmp: tmp.write_text(text))
    return {**config.to_dict(), **({HEADER_KEY: [list(row) for row in header]} if header else {}),
            **({CLASS_NAMES_KEY: list(names)} if names else {})}


def stored_run_config(stored: Mapping[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of a configuration :func:`record_config` stored (header and class names left out)."""
    return RunConfig.from_dict({key: value for key, value in stored.items() if key not in (HEADER_KEY, CLASS_NAMES_KEY)})


def run_configured_study(config: RunConfig, inputs: StudyInputs | None = None,
                         header: Sequence[Sequence[str]] | None = None, pf_scale: str | None = None,
                         command: str = "run") -> Path:
    """``fgattr run``: the whole protocol as ``config`` describes it, into ``config.run_dir`` (resumable), with
    the configuration recorded (``config.json`` and the store, command ``run``) and ``header`` (``[name, text]``
    rows; default: those of ``config.report_header``, :data:`REPORT_HEADERS`, else
    :func:`~captum_fgattr.bench.report.setup.run_header`) at the top of the report.
    ``inputs``: already resolved ones (default :func:`load_study_inputs`); ``command``: the name stored with the
    configuration (``fgattr demo`` stores "demo"). Returns the run folder.

    Raises:
        ValueError: ``config.report_header`` names no registered report header.
    """
    if config.report_header is not None and config.report_header not in REPORT_HEADERS:
        raise ValueError(f"report_header={config.report_header!r}; expected one of {sorted(REPORT_HEADERS)}")
    inputs = inputs if inputs is not None else load_study_inputs(config)
    replicates = [load_replicate(config, inputs, r) for r in config.replicates]
    if header is None:
        header = (REPORT_HEADERS[config.report_header](config, inputs) if config.report_header is not None
                  else run_header(config, inputs))
    with ResultStore(config.run_dir) as store:
        stored = record_config(store, config, ("val", "test"), inputs.model, header, class_names(inputs.test))
    return run_study(inputs.model, inputs.val, inputs.test, inputs.saes, config.run_dir,
                     with_black_input(config, inputs.model), config.evaluation, resolved_config=stored, command=command,
                     pf_scale=pf_scale, replicates=replicates)


def load_replicate(config: RunConfig, inputs: StudyInputs, replicate: ReplicateConfig) -> Replicate:
    """A replicate's model (the run's own one unless it names another), the run's test split preprocessed for it,
    and its SAEs of every gated layer of the protocol."""
    if replicate.model is None:
        model, test = inputs.model, inputs.test
    else:
        model = load_model(replicate.model, class_names(inputs.test), config.cache_dir, config.evaluation.progress)
        test = load_split(config.data, "test", preprocessing(config.data, model), config.cache_dir)
    return Replicate(replicate.name, model, test, load_saes(replicate.saes, config.protocol.gated_layers(), model))
