"""The study's protocol on any model, data and SAEs: validation sweeps, selection, test with controls.

The method under test is FG-TransMM with the ``combined`` score (:attr:`Protocol.method_variant`).
Experiments, in order (each also evaluates TransMM, the baseline every effect refers to):

1. ``single_layer`` (validation): FG-TransMM gated at one layer, ``layers × variants`` at (κ, c_max); the
   variants other than the method's are ablations, reported per layer and never selected.
2. ``multi_layer`` (validation): each of ``multi_layers`` with the method's variant, at (κ, c_max).
3. ``kappa_cmax`` (validation): ``kappas × c_maxes`` on the selected multi-layer configuration.
4. ``test``: TransMM; FG (real SAE) at the selected single-layer and multi-layer configurations, each with
   its controls (``Protocol.controls``: shuffled decoder and permuted gates over several seeds each, grad_input,
   grad_input_centered, bias_projection; same layers, κ, c_max and gate formula); the baselines.

Selection rule (:func:`selection_rule`), stored in the run's ``selections`` table with every candidate's
scores: highest mean over the registered metrics (SaCo, FC and PF) of the standardised paired effect vs TransMM
on the same validation images (mean Δ / SD Δ, sign flipped where lower is better); ties go to the first
candidate in protocol order. The thesis's % improvement is stored beside it.

The steps are :func:`run_sweep` and :func:`run_test` (the whole study with its report:
:func:`captum_fgattr.bench.study.run_study`); :func:`control_groups` tells the report which rows are which control.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO, Union

from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from captum_fgattr.adapters import get_adapter
from captum_fgattr.bench.config import EvalConfig, MetricConfig, Protocol
from captum_fgattr.bench.distributed import current_shard, sync_ranks
from captum_fgattr.bench.evaluate import evaluate_methods, note, select_ids
from captum_fgattr.bench.methods import FGParams, MethodSpec, fg_layers, unavailable_methods
from captum_fgattr.bench.metrics import metric_specs
from captum_fgattr.bench.stats import paired_comparison, percent_improvement, summarize
from captum_fgattr.bench.store import ResultStore, Selection
from captum_fgattr.gates import RESIDUAL_VARIANTS
from captum_fgattr.sae import SparseAutoencoder

__all__ = [
    "selection_rule", "SINGLE", "MULTI", "GRID", "TEST", "DataSource", "fg_spec_of", "standardised_effects", "selection_score",
    "ControlGroup", "control_groups", "as_dataset", "transmm_spec", "fg_spec", "gate_mad_eps", "select_best", "final_specs", "run_sweep",
    "run_test", "control_specs", "control_name", "baseline_spec", "StudyClock",
]

SINGLE, MULTI, GRID, TEST = "single_layer", "multi_layer", "kappa_cmax", "test"


def selection_rule() -> str:
    """The selection rule in words, naming the registered metrics (stored with every selection), e.g. "highest
    mean over SaCo, FC and PF of the standardised paired effect vs TransMM ... (PF sign flipped ...)"."""
    specs = metric_specs()
    names = ", ".join(m.short for m in specs[:-1]) + (" and " if len(specs) > 1 else "") + specs[-1].short
    flipped = ", ".join(m.short for m in specs if not m.higher_is_better)
    sign = f", {flipped} sign flipped so positive is better" if flipped else ""
    return (f"highest mean over {names} of the standardised paired effect vs TransMM on the same validation images "
            f"(mean delta / SD delta{sign}); ties: first candidate")


#: a split: a dataset of (image (C, H, W), label) items, or (images (N, C, H, W), labels (N,)) tensors
DataSource = Union[Dataset, tuple[Tensor, Tensor]]


def as_dataset(data: DataSource, name: str = "data") -> Dataset:
    """A dataset of ``(image, label)`` items from a dataset or an ``(images, labels)`` tensor pair."""
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(f"{name}: expected a Dataset or a tuple (images (N, C, H, W), labels (N,))")
        images, labels = data
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                             "expected (N, C, H, W) and (N,)")
        data = TensorDataset(images, labels.long())
    if len(data) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} is empty (0 images)")
    return data


def transmm_spec() -> MethodSpec:
    return MethodSpec("transmm", {}, "TransMM")


def fg_spec(layers: Sequence[int], variant: str, kappa: float, c_max: float, shuffle_seed: int | None = None,
            permute_seed: int | None = None, mad_eps: str = "after_scale") -> MethodSpec:
    """FG-TransMM spec with every parameter explicit (so equal configurations share stored results)."""
    return fg_spec_of(FGParams(tuple(layers), variant, kappa, c_max, shuffle_seed, permute_seed, mad_eps))


def gate_mad_eps(protocol: Protocol, metrics: MetricConfig) -> str:
    """The robust scale of the gate scores: ``protocol.gate_mad_eps``, or by default the metric preset's
    (``thesis-code``: the author's ``"in_mad"``; otherwise ``"after_scale"``)."""
    if protocol.gate_mad_eps is not None:
        return protocol.gate_mad_eps
    return "in_mad" if metrics.preset == "thesis-code" else "after_scale"


def fg_spec_of(params: FGParams) -> MethodSpec:
    """The spec of typed FG parameters, labelled for tables (e.g. ``FG L[1,2] combined κ=1 c=50``)."""
    values = params.to_params()
    return MethodSpec("fg", values, params.label("fg", values))


def control_specs(real: MethodSpec, protocol: Protocol) -> dict[str, list[MethodSpec]]:
    """The controls of one FG configuration: control name -> specs (several for the shuffled decoder)."""
    p = real.fg
    out: dict[str, list[MethodSpec]] = {}
    for control in protocol.controls:
        if control == "shuffled_decoder":
            out[control] = [fg_spec_of(replace(p, shuffle_seed=seed)) for seed in protocol.shuffle_seeds]
        elif control == "permuted_gates":
            out[control] = [fg_spec_of(replace(p, permute_seed=seed)) for seed in protocol.permute_seeds]
        else:
            out[control] = [fg_spec_of(replace(p, variant=control))]
    return out


@dataclass(frozen=True)
class ControlGroup:
    """One FG configuration of the test experiment and its controls (same layers, κ, c_max)."""

    real: MethodSpec
    controls: dict[str, list[MethodSpec]]  # control name (``Protocol.controls``) -> its method specs


def control_name(spec: MethodSpec) -> str | None:
    """Which control an FG spec is (a name of ``Protocol.controls``), or None for a real-feature method."""
    p = spec.fg
    if p.shuffle_seed is not None:
        return "shuffled_decoder"
    if p.permute_seed is not None:
        return "permuted_gates"
    return p.variant if p.variant in RESIDUAL_VARIANTS else None


def control_groups(specs: Sequence[MethodSpec]) -> list[ControlGroup]:
    """Group an experiment's FG specs into real configurations and their controls (in registration order)."""
    fg = [s for s in specs if s.is_fg]
    groups = []
    for real in (s for s in fg if control_name(s) is None):
        controls: dict[str, list[MethodSpec]] = {}
        for spec in fg:
            name = control_name(spec)
            if name is not None and spec.fg.configuration == real.fg.configuration and (
                    name in RESIDUAL_VARIANTS or spec.fg.variant == real.fg.variant):
                controls.setdefault(name, []).append(spec)
        groups.append(ControlGroup(real, controls))
    return groups


def selection_score(effects: Mapping[str, float]) -> float:
    """A candidate's selection criterion: the mean of its standardised effects over the metrics (−inf if undefined,
    so it is never chosen over a defined one)."""
    score = sum(effects.values()) / len(effects)
    return score if math.isfinite(score) else -math.inf


def standardised_effects(candidate: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float]:
    """Registered metric -> d_z of ``candidate`` − ``base`` per-image scores (aligned columns of
    :meth:`ResultStore.scores`), sign flipped for lower-is-better metrics so that positive is better."""
    return {m.name: paired_comparison(candidate[m.name], base[m.name]).oriented_d_z(m.higher_is_better)
            for m in metric_specs()}


def select_best(
    store: ResultStore, name: str, experiment: str, split: str, candidates: Sequence[MethodSpec], image_ids: Sequence[int],
) -> Selection:
    """Apply :func:`selection_rule` to ``candidates`` (stored results on ``image_ids``) and store the choice.

    Raises:
        ValueError: a candidate or TransMM lacks results for some of the images (unfinished run).
    """
    def columns(spec: MethodSpec) -> dict[str, Any]:
        found = store.scores(split, spec.key, image_ids)
        if len(found["image_id"]) != len(image_ids):
            raise ValueError(f"{spec.label} has results for {len(found['image_id'])} of {len(image_ids)} "
                             f"{split} images; finish the {experiment!r} evaluation before selecting")
        return found  # rows ordered by image id, as the baseline's

    base = columns(transmm_spec())
    specs = metric_specs()
    base_means = {m.name: summarize(base[m.name]).mean for m in specs}
    scores: dict[str, dict[str, Any]] = {}
    ranking: dict[str, float] = {}
    for spec in candidates:
        mine = columns(spec)
        effects = standardised_effects(mine, base)
        ranking[spec.key] = selection_score(effects)
        record: dict[str, Any] = {"label": spec.label}
        for m in specs:
            mean = summarize(mine[m.name]).mean
            record.update({f"{m.name}_mean": mean,
                           f"{m.name}_pct": percent_improvement(mean, base_means[m.name], m.higher_is_better),
                           f"{m.name}_dz": effects[m.name]})
        defined = [record[f"{m.name}_pct"] for m in specs if math.isfinite(record[f"{m.name}_pct"])]
        record["mean_pct"] = sum(defined) / len(defined) if defined else math.nan  # over the metrics with a %
        record["mean_dz"] = sum(effects.values()) / len(specs)
        scores[spec.key] = record
    best = max(candidates, key=lambda spec: ranking[spec.key])  # the first of equals
    selection = Selection(name, experiment, best.key, selection_rule(),
                          {"candidates": scores, "chosen": {"name": best.name, "params": dict(best.params)},
                           "baseline": {f"{m}_mean": mean for m, mean in base_means.items()}, "split": split,
                           "n_images": len(image_ids)})
    store.set_selection(selection)
    return selection


def _check_saes(layers: Sequence[int], saes: Mapping[int, SparseAutoencoder], depth: int) -> None:
    out_of_range = [layer for layer in layers if layer >= depth]
    if out_of_range:
        raise ValueError(f"layers {out_of_range} out of range for a model with {depth} blocks (0-based indices)")
    missing = [layer for layer in layers if layer not in saes]
    if missing:
        raise ValueError(f"no SAE for layers {missing}; SAEs were given for layers {sorted(saes)}")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class StudyClock:
    """The study's progress in evaluations (method × image) with its ETA, printed between the progress bars
    (:func:`~captum_fgattr.bench.evaluate.note`): once ``first_eta`` seconds of computing are measured, then each
    time that time has doubled but at least every ``every`` seconds, and when an experiment finishes.

    ETA = seconds per evaluation × evaluations left. Seconds per evaluation: the time this process spent computing
    (from the start of an experiment's first pending batch to its last commit) over the evaluations it computed.
    Evaluations left: this process's pending ones in the current experiment plus the planned ones of the
    experiments to come (shared by ``world`` ranks), the replicates' (``RunConfig.replicates``) included.
    Evaluations found stored (a resumed run) count as done and enter neither the time nor the count of the rate.
    """

    planned: int  # method × image evaluations of the whole study (each method once per split)
    world: int = 1  # ranks sharing the evaluations
    replicate_evaluations: int = 0  # of ``planned``: the replicates' evaluations, which follow the test experiment
    stream: TextIO | None = None  # None: sys.stderr at the time of printing
    timer: Callable[[], float] = time.perf_counter  # seconds
    first_eta: float = 15.0  # seconds of computing measured before the first ETA line
    every: float = 300.0  # most seconds of computing between ETA lines
    started: float = field(init=False)  # timer() at construction
    experiment: str = field(default="", init=False)  # the current experiment, e.g. "single_layer/val"
    done: int = field(default=0, init=False)  # evaluations of the experiments begun (stored, computed or pending)
    pending: int = field(default=0, init=False)  # this process's evaluations still to compute in the experiment
    computed: int = field(default=0, init=False)  # evaluations this process computed
    busy: float = field(default=0.0, init=False)  # seconds this process spent computing them
    counted: set[tuple[str, str]] = field(default_factory=set, init=False)  # (split, method key) already in ``done``
    since: float = field(default=0.0, init=False)  # timer() at the experiment's start or its last commit
    next_eta: float = field(init=False)  # ``busy`` at which the next ETA line is due

    def __post_init__(self) -> None:
        self.started, self.next_eta = self.timer(), self.first_eta

    @classmethod
    def for_study(cls, protocol: Protocol, n_val: int, n_test: int, replicates: int = 0) -> StudyClock:
        """A clock for ``protocol`` on splits of ``n_val`` and ``n_test`` images and ``replicates`` replicates, shared
        by this run's ranks. The plan counts every distinct method of each split once and the available baselines;
        until the test experiment begins (then its methods are known) it assumes two distinct selected
        configurations. A replicate evaluates TransMM, the selected configuration and its replicate controls."""
        val = min(n_val, protocol.val_images or n_val)
        test = min(n_test, protocol.test_images or n_test)
        sweep = {((layer,), variant) for layer in protocol.layers for variant in protocol.variants}
        grid = 0
        if protocol.multi_layers:
            sweep |= {(layers, protocol.method_variant) for layers in protocol.multi_layers}
            if protocol.kappas and protocol.c_maxes:  # the selected layers at (κ, c_max) were evaluated in MULTI
                grid = len(protocol.kappas) * len(protocol.c_maxes) - (
                    protocol.kappa in protocol.kappas and protocol.c_max in protocol.c_maxes)
        configurations = 1 + bool(protocol.multi_layers)
        seeds = {"shuffled_decoder": len(protocol.shuffle_seeds), "permuted_gates": len(protocol.permute_seeds)}
        controls = sum(seeds.get(c, 1) for c in protocol.controls)
        baselines = len(set(protocol.baselines) - set(unavailable_methods(protocol.baselines)))
        per_replicate = 2 + sum(seeds.get(c, 1) for c in protocol.replicate_controls if c in protocol.controls)
        replicated = replicates * test * per_replicate
        return cls(val * (1 + len(sweep) + grid) + test * (1 + configurations * (1 + controls) + baselines)
                   + replicated, world=current_shard().world, replicate_evaluations=replicated)

    def begin(self, experiment: str, split: str, specs: Sequence[MethodSpec], n_images: int) -> None:
        """An experiment begins: ``specs`` on ``n_images`` of ``split`` (methods of the split counted before, e.g.
        TransMM in every validation experiment, are not counted again), all pending until :meth:`start` says
        which are stored."""
        new = {spec.key for spec in specs} - {key for done_split, key in self.counted if done_split == split}
        self.counted.update((split, key) for key in new)
        self.experiment, self.done = f"{experiment}/{split}", self.done + len(new) * n_images
        self.pending = math.ceil(len(new) * n_images / self.world)
        if (experiment, split) == (TEST, TEST):  # the plan's estimate gives way to its methods (and the replicates')
            self.planned = self.done + self.replicate_evaluations

    def start(self, pending: int) -> None:
        """This process has ``pending`` evaluations of the experiment to compute; the others are stored."""
        self.pending, self.since = pending, self.timer()

    def advance(self, evaluations: int) -> None:
        """A batch of ``evaluations`` was committed; prints the ETA line when one is due."""
        now = self.timer()
        self.busy += now - self.since
        self.since, self.computed, self.pending = now, self.computed + evaluations, self.pending - evaluations
        if self.busy >= self.next_eta:
            self.next_eta = self.busy + min(self.busy, self.every)
            self._print(f"{self.experiment} at {self._of_planned(self.done - self.pending * self.world)}")

    def finished(self, experiment: str) -> None:
        """The experiment ``experiment`` finished (on every rank); prints its line."""
        self.pending = 0
        self._print(f"{experiment} finished ({self._of_planned(self.done)})")

    def eta(self) -> float:
        """Seconds left: busy / computed × (pending + max(planned − done, 0) / world); 0 when nothing is left, NaN
        before anything was computed."""
        left = self.pending + max(self.planned - self.done, 0) / self.world
        if not left:
            return 0.0
        return self.busy / self.computed * left if self.computed else math.nan

    def _of_planned(self, done: int) -> str:
        return f"{max(done, 0):,} of ~{self.planned:,} evaluations"

    def _print(self, head: str) -> None:
        note(f"fgattr: {head}; elapsed {_duration(self.timer() - self.started)}, ETA {_duration(self.eta())}",
             self.stream)


def _experiment(model: nn.Module, data: Dataset, specs: Sequence[MethodSpec], store: ResultStore, experiment: str,
                split: str, ids: Sequence[int], saes: Mapping[int, SparseAutoencoder], config: EvalConfig,
                clock: StudyClock | None) -> None:
    clock = clock if current_shard().rank == 0 else None  # rank 0 reports
    if clock is not None:
        clock.begin(experiment, split, specs, len(ids))
    evaluate_methods(model, data, specs, store, experiment=experiment, split=split, image_ids=ids, saes=saes,
                     config=config, shard=current_shard(), progress=clock)
    sync_ranks()
    if clock is not None:
        clock.finished(split if split.startswith(f"{TEST}@") else experiment)  # a replicate: "test@<name>"


def run_sweep(
    model: nn.Module, val: DataSource, saes: Mapping[int, SparseAutoencoder], store: ResultStore,
    protocol: Protocol = Protocol(), config: EvalConfig = EvalConfig(), clock: StudyClock | None = None,
) -> dict[str, Selection]:
    """Validation experiments 1–3 with their selections (stored); resumes from the store.

    Args:
        model: classifier in eval mode (moved to ``config.device``).
        val: validation split; ``protocol.val_images`` of it are used.
        saes: {layer: SAE} for every layer in ``protocol.gated_layers()``.

    Returns:
        {"single_layer": ..., "multi_layer": ..., "kappa_cmax": ...} (the last two when configured).
    """
    data = as_dataset(val, "validation data")
    _check_saes(protocol.gated_layers(), saes, get_adapter(model).depth)
    config = replace(config, metrics=replace(config.metrics, extra=()))  # extra metrics: the test experiment's only
    ids = select_ids(len(data), protocol.val_images, protocol.subset_seed)  # type: ignore[arg-type]

    def run(experiment: str, candidates: list[MethodSpec]) -> None:
        _experiment(model, data, [transmm_spec(), *candidates], store, experiment, "val", ids, saes, config, clock)

    mad_eps = gate_mad_eps(protocol, config.metrics)
    singles = [fg_spec([layer], variant, protocol.kappa, protocol.c_max, mad_eps=mad_eps)
               for layer in protocol.layers for variant in protocol.variants]
    run(SINGLE, singles)
    variant = protocol.method_variant  # the other variants are ablations: reported, never selected
    method_singles = [spec for spec in singles if spec.fg.variant == variant]
    selected = {SINGLE: select_best(store, SINGLE, SINGLE, "val", method_singles, ids)}
    if protocol.multi_layers:
        multis = [fg_spec(layers, variant, protocol.kappa, protocol.c_max, mad_eps=mad_eps)
                  for layers in protocol.multi_layers]
        run(MULTI, multis)
        selected[MULTI] = select_best(store, MULTI, MULTI, "val", multis, ids)
        if protocol.kappas and protocol.c_maxes:
            layers = selected[MULTI].chosen.layers
            grid = [fg_spec(layers, variant, k, c, mad_eps=mad_eps) for k in protocol.kappas for c in protocol.c_maxes]
            run(GRID, grid)
            selected[GRID] = select_best(store, GRID, GRID, "val", grid, ids)
    return selected


def final_specs(store: ResultStore, protocol: Protocol) -> list[MethodSpec]:
    """Methods of the test experiment from the stored selections: TransMM, each selected FG configuration
    followed by its controls (:func:`control_specs`), the baselines.

    Raises:
        ValueError: the run has no single-layer selection (run the sweep first).
    """
    chosen: list[FGParams] = []
    for name in (SINGLE, GRID if store.selection(GRID) else MULTI):
        selection = store.selection(name)
        if selection is None:
            if name == SINGLE:
                raise ValueError(f"run folder {store.run_dir} has no {name!r} selection; run the sweep first")
            continue
        chosen.append(selection.chosen)
    specs = [transmm_spec()]
    for params in chosen:
        real = fg_spec_of(params)
        if real in specs:  # the multi-layer choice can equal the single-layer one
            continue
        specs.append(real)
        for controls in control_specs(real, protocol).values():
            specs += controls
    skipped = unavailable_methods(protocol.baselines)
    for name, why in skipped.items():
        print(f"fgattr: skipping the optional baseline {name!r}: {why}", file=sys.stderr, flush=True)
    return specs + [baseline_spec(name, protocol) for name in protocol.baselines if name not in skipped]


@dataclass(frozen=True)
class Replicate:
    """Another (model, SAEs) pair the selected configuration is tested on (``RunConfig.replicates``)."""

    name: str  # its results are filed under split ``replicate_split(name)``
    model: nn.Module  # classifier in eval mode (the run's own one for an SAE replicate)
    test: Dataset  # the run's test split, preprocessed for ``model`` (image ids as the run's)
    saes: Mapping[int, SparseAutoencoder]  # {layer: SAE} for the selected configuration's layers


def replicate_split(name: str) -> str:
    """The store split of a replicate's results: "test@<name>"."""
    return f"test@{name}"


def replicate_specs(store: ResultStore, protocol: Protocol) -> list[MethodSpec]:
    """What a replicate evaluates: TransMM, the selected (last) FG configuration and those of its controls named in
    ``protocol.replicate_controls`` that the run has (never the random ones' seeds beyond the run's)."""
    groups = control_groups(store.experiment_methods(TEST, "test"))
    if not groups:
        raise ValueError("the test experiment has no FG configuration; run the test before its replicates")
    real = groups[-1].real
    controls = control_specs(real, protocol)
    return [transmm_spec(), real, *(spec for name in protocol.replicate_controls if name in controls
                                    for spec in controls[name])]


def run_replicates(replicates: Sequence[Replicate], store: ResultStore, protocol: Protocol = Protocol(),
                   config: EvalConfig = EvalConfig(), clock: StudyClock | None = None) -> None:
    """Evaluate :func:`replicate_specs` in every replicate on the test experiment's images (resumable), each into
    experiment "test" of its own split."""
    if not replicates:
        return
    specs = replicate_specs(store, protocol)
    ids = store.experiment_ids(TEST, "test")
    config = replace(config, metrics=replace(config.metrics, extra=()))
    for replicate in replicates:
        _check_saes(fg_layers(specs), replicate.saes, get_adapter(replicate.model).depth)
        _experiment(replicate.model, replicate.test, specs, store, TEST, replicate_split(replicate.name), ids,
                    replicate.saes, config, clock)


def baseline_spec(name: str, protocol: Protocol) -> MethodSpec:
    """A baseline as the field runs it: Integrated Gradients from a black image (``protocol.black_input``)."""
    if name == "integrated_gradients" and protocol.black_input is not None:
        black = protocol.black_input
        return MethodSpec(name, {"baseline": list(black) if len(set(black)) > 1 else black[0]}, "integrated_gradients")
    return MethodSpec(name)


def run_test(
    model: nn.Module, test: DataSource, saes: Mapping[int, SparseAutoencoder], store: ResultStore,
    protocol: Protocol = Protocol(), config: EvalConfig = EvalConfig(), clock: StudyClock | None = None,
) -> list[MethodSpec]:
    """Experiment 4 on the test split with the stored selections; resumes from the store. Returns its methods."""
    data = as_dataset(test, "test data")
    specs = final_specs(store, protocol)
    layers = fg_layers(specs)
    _check_saes(layers, saes, get_adapter(model).depth)
    ids = select_ids(len(data), protocol.test_images, protocol.subset_seed)  # type: ignore[arg-type]
    _experiment(model, data, specs, store, TEST, "test", ids, saes, config, clock)
    return specs
