"""The bodies of ``fgattr sweep / evaluate / run / report`` (:mod:`captum_fgattr.bench.cli.run` parses their flags
and imports this module only when one of them runs, so that their ``--help`` imports no torch)."""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Concatenate, ParamSpec

from torch import nn

from captum_fgattr.bench.config import RunConfig
from captum_fgattr.bench.distributed import current_shard, process_group, sync_ranks
from captum_fgattr.bench.evaluate import evaluate_methods, select_ids
from captum_fgattr.bench.experiments import final_specs, run_sweep, run_test, transmm_spec
from captum_fgattr.bench.methods import fg_layers
from captum_fgattr.bench.methods_json import parse_methods
from captum_fgattr.bench.report.study_report import summary_text, write_report
from captum_fgattr.bench.resolve import load_inputs, load_saes
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.study import record_config, run_configured_study, with_black_input

__all__ = ["sweep", "evaluate", "run", "report"]

_P = ParamSpec("_P")


def _on_device(body: Callable[Concatenate[RunConfig, _P], None]) -> Callable[Concatenate[RunConfig, _P], None]:
    """``body`` run in the process group of the configured device (one GPU per rank under ``torchrun``), with
    that rank's device in the configuration."""
    @wraps(body)
    def run(config: RunConfig, *args: _P.args, **kwargs: _P.kwargs) -> None:
        with process_group(config.evaluation.device) as device:
            body(config.merged({"evaluation.device": device}), *args, **kwargs)
    return run


def _record(store: ResultStore, command: str, config: RunConfig, split: str, model: nn.Module) -> None:
    """Refuse settings ``model`` cannot be evaluated with and a run folder filled from another model / data;
    store the resolved configuration."""
    stored = record_config(store, config, (split,), model)
    if current_shard().rank == 0:
        store.log_invocation(command, stored)


@_on_device
def sweep(config: RunConfig) -> None:
    """Experiments 1-3 on the validation split, printing each selection."""
    model, val = load_inputs(config, "val")
    saes = load_saes(config.saes, config.protocol.gated_layers(), model)
    with ResultStore(config.run_dir) as store:
        _record(store, "sweep", config, "val", model)
        selections = run_sweep(model, val, saes, store, config.protocol, config.evaluation)
    if current_shard().rank == 0:
        for name, selection in selections.items():
            print(f"selected ({name}): {selection.details['candidates'][selection.method_key]['label']}")


@_on_device
def evaluate(config: RunConfig, methods: str | None, experiment: str, split: str) -> None:
    """The protocol's test experiment, or the ``methods`` (JSON or a JSON file) on ``split`` filed as
    ``experiment``, TransMM added as the baseline."""
    model, data = load_inputs(config, split)
    with ResultStore(config.run_dir) as store:
        _record(store, "evaluate", config, split, model)
        if methods is None:  # the protocol's test experiment
            protocol = with_black_input(config, model)
            layers = fg_layers(final_specs(store, protocol))
            run_test(model, data, load_saes(config.saes, layers, model), store, protocol, config.evaluation)
            return
        text = Path(methods).read_text() if Path(methods).is_file() else methods
        given = parse_methods(text)
        specs = given if any(s.is_transmm for s in given) else [transmm_spec(), *given]
        layers = fg_layers(specs)
        limit = config.protocol.test_images if split == "test" else config.protocol.val_images
        evaluate_methods(model, data, specs, store, experiment=experiment, split=split,
                         image_ids=select_ids(len(data), limit, config.protocol.subset_seed),
                         saes=load_saes(config.saes, layers, model), config=config.evaluation, shard=current_shard())
    sync_ranks()


@_on_device
def run(config: RunConfig, pf_scale: str | None) -> None:
    """Sweep, evaluate and report; prints the report's place and summary."""
    run_dir = run_configured_study(config, pf_scale=pf_scale)
    if current_shard().rank == 0:
        print(f"wrote {run_dir / 'report' / 'report.md'}")
        print(summary_text(run_dir))


def report(run_dir: str, out: str | None, pf_scale: str | None) -> None:
    """The report of the run in ``run_dir``."""
    print(f"wrote {write_report(run_dir, out, pf_scale)}")
