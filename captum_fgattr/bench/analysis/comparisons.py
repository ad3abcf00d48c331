"""The test experiment's claims as paired comparisons: FG (real SAE) vs TransMM and vs each of its controls.

For every selected FG configuration and every registered metric, the per-image scores of the real method are paired
with those of TransMM and of each control on the same image ids (the shuffled decoder: the per-image mean
over its seeds). One family: all comparisons of the experiment, Holm-adjusted together; the verdicts read it.

A second family places FG among the field's methods: each configuration vs each baseline of the experiment
(Integrated Gradients, AttnLRP, ...), Holm-adjusted among themselves (:func:`baseline_comparisons`), so adding a
baseline never changes the claims' p-values.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from captum_fgattr.bench.experiments import ControlGroup, control_groups
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.metrics import metric_names, metric_spec
from captum_fgattr.bench.analysis.stats import PairedComparison, holm_adjust, paired_comparison, stars, verdict
from captum_fgattr.bench.store import ResultStore

__all__ = ["Comparison", "AGAINST_TITLES", "claim_comparisons", "baseline_comparisons", "format_p", "verdict_lines"]


#: how each comparison reads in tables and verdicts
AGAINST_TITLES = {
    "transmm": "TransMM",
    "shuffled_decoder": "shuffled decoder",
    "grad_input": "grad_input ⟨g, x⟩",
    "grad_input_centered": "grad_input_centered ⟨g, x − b_dec⟩",
    "bias_projection": "bias_projection −⟨g, b_dec⟩",
    "token_norm": "token_norm ‖x‖",
    "permuted_gates": "permuted gates",
}


@dataclass(frozen=True)
class Comparison:
    """FG (real SAE) at one configuration vs one reference, on one metric."""

    configuration: MethodSpec  # the real-feature FG method
    against: str  # key of :data:`AGAINST_TITLES`, or a baseline's label
    n_references: int  # methods averaged per image into the reference (the shuffled-decoder seeds), else 1
    metric: str  # name of a registered metric
    result: PairedComparison  # real − reference, p_holm over the experiment's family

    @property
    def title(self) -> str:
        title = AGAINST_TITLES.get(self.against, self.against)
        return f"{title} (mean of {self.n_references} seeds)" if self.n_references > 1 else title


def _aligned(store: ResultStore, split: str, specs: Sequence[MethodSpec], ids: Sequence[int], metric: str) -> np.ndarray:
    """(len(ids),) per-image mean over ``specs`` of ``metric`` (NaN where undefined or missing)."""
    index = {image_id: i for i, image_id in enumerate(ids)}
    table = np.full((len(specs), len(ids)), math.nan)
    for row, spec in enumerate(specs):
        columns = store.scores(split, spec.key, ids)
        for image_id, value in zip(columns["image_id"], columns[metric]):
            table[row, index[int(image_id)]] = value
    with np.errstate(all="ignore"):
        mean = np.nanmean(table, axis=0) if len(specs) > 1 else table[0]
    return np.where(np.isnan(table).all(axis=0), math.nan, mean)


def _family(store: ResultStore, split: str, ids: Sequence[int], specs: Sequence[MethodSpec],
            references: Callable[[ControlGroup], list[tuple[str, list[MethodSpec]]]]) -> list[Comparison]:
    """FG real vs each of ``references(group)`` for every configuration and metric, Holm-adjusted together."""
    raw: list[Comparison] = []
    for group in control_groups(specs):
        for metric in metric_names():
            real = _aligned(store, split, [group.real], ids, metric)
            for against, reference in references(group):
                result = paired_comparison(real, _aligned(store, split, reference, ids, metric))
                raw.append(Comparison(group.real, against, len(reference), metric, result))
    adjusted = holm_adjust([c.result for c in raw])
    return [replace(c, result=r) for c, r in zip(raw, adjusted)]


def claim_comparisons(store: ResultStore, experiment: str, split: str) -> list[Comparison]:
    """Every paired comparison of ``experiment`` (FG real vs TransMM and vs each control), Holm-adjusted."""
    specs = store.experiment_methods(experiment, split)
    transmm = [s for s in specs if s.is_transmm]
    return _family(store, split, store.experiment_ids(experiment, split), specs,
                   lambda group: ([("transmm", transmm)] if transmm else []) + list(group.controls.items()))


def baseline_comparisons(store: ResultStore, experiment: str, split: str) -> list[Comparison]:
    """FG real vs each baseline of ``experiment`` (every method that is neither FG nor TransMM), per configuration
    and metric: a family of its own, Holm-adjusted among themselves; [] without baselines."""
    specs = store.experiment_methods(experiment, split)
    baselines = [(s.label, [s]) for s in specs if not s.is_fg and not s.is_transmm]
    if not baselines:
        return []
    return _family(store, split, store.experiment_ids(experiment, split), specs, lambda group: baselines)


def format_p(p: float) -> str:
    """A p-value for tables: two significant digits with stars (*** < 0.001, ** < 0.01, * < 0.05), – for NaN."""
    return "–" if not math.isfinite(p) else f"{p:.2g}{stars(p)}"


def _claim(comparisons: Sequence[Comparison]) -> str:
    """'SaCo better (Δ +0.10 [0.05, 0.15], p_Holm 0.001), FC no detectable difference (…), …'."""
    parts = []
    for c in comparisons:
        r = c.result
        spec = metric_spec(c.metric)
        parts.append(f"{spec.short} {verdict(r, spec.higher_is_better)} "
                     f"(Δ {r.delta:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p_Holm {format_p(r.p_holm)}, n {r.n})")
    return ", ".join(parts)


def _conclusion(configuration: MethodSpec, comparisons: Sequence[Comparison]) -> str:
    """Whether the configuration improves on TransMM, and whether every control falls short of that gain."""
    said = {(c.against, c.metric): verdict(c.result, metric_spec(c.metric).higher_is_better) for c in comparisons}
    gains = [m for m in metric_names() if said.get(("transmm", m)) == "better"]
    losses = [m for m in metric_names() if said.get(("transmm", m)) == "worse"]
    head = f"Conclusion for {configuration.label}: "
    names = lambda metrics: ", ".join(metric_spec(m).short for m in metrics)  # noqa: E731
    if not gains:
        return head + "no detectable improvement over TransMM" + (f" (worse on {names(losses)})" if losses else "") + "."
    controls = list(dict.fromkeys(c.against for c in comparisons if c.against != "transmm"))
    matched = [a for a in controls if not any(said.get((a, m)) == "better" for m in gains)]
    head += f"better than TransMM on {names(gains)}" + (f", worse on {names(losses)}" if losses else "")
    if not controls:
        return head + "; no controls were run, so nothing credits the SAE's features."
    if matched:
        return head + ("; matched by " + ", ".join(AGAINST_TITLES[a] for a in matched)
                       + " (not better than it on any of those metrics): the gain is not attributable to the SAE's features.")
    return head + "; better than every control on at least one of those metrics: consistent with a gain due to the SAE's features."


def verdict_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """One plain-language line per claim (configuration × reference, every metric's verdict), then one conclusion
    per configuration (Holm-adjusted p < 0.05 throughout)."""
    lines = []
    claims: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        claims.setdefault((c.configuration.key, c.against), []).append(c)
    for group in claims.values():
        first = group[0]
        lines.append(f"{first.configuration.label} vs {first.title}: {_claim(group)}.")
    configurations = {c.configuration.key: c.configuration for c in comparisons}
    for key, configuration in configurations.items():
        lines.append(_conclusion(configuration, [c for c in comparisons if c.configuration.key == key]))
    return lines
