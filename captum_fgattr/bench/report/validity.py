"""The report's "Metric validity" section: agreement between the metrics on the test experiment, and the checks
run on a seeded subset (randomisation, test–retest, replacement value), each finding in one generated sentence."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from captum_fgattr.bench.analysis.validity import (
    MetricAgreement, ValiditySummary, metric_agreement, oriented_scores, validity_summary,
)
from captum_fgattr.bench.experiments import TEST
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.metrics import metric_spec
from captum_fgattr.bench.store import ResultStore
from captum_fgattr.bench.validity import read_validity, validity_methods

__all__ = ["validity_section", "agreement_word"]

#: |τ| bands the sentences use
ALIKE, PARTLY = 0.6, 0.2


def agreement_word(tau: float) -> str:
    """How a Kendall τ between two rankings reads: alike (τ ≥ 0.6), partly alike (≥ 0.2), unrelated (|τ| < 0.2),
    reversed (≤ −0.2)."""
    if not math.isfinite(tau):
        return "cannot be compared (too few methods or constant means)"
    return ("alike" if tau >= ALIKE else "partly alike" if tau >= PARTLY else "in opposite order" if tau <= -PARTLY
            else "unrelated")


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _ranks(store: ResultStore, methods: Sequence[MethodSpec], metric: str) -> dict[str, int]:
    """Method key -> 1-based rank by the oriented mean over the test images (1 = best)."""
    ids = store.experiment_ids(TEST, "test")
    means = {s.key: float(np.nanmean(oriented_scores(store, "test", s, metric, ids))) for s in methods}
    order = sorted(means, key=lambda k: -means[k] if math.isfinite(means[k]) else math.inf)
    return {key: i + 1 for i, key in enumerate(order)}


def _agreement_lines(agreement: Sequence[MetricAgreement]) -> list[str]:
    lines = ["| metrics | methods | Kendall τ of the rankings | per-image Spearman ρ, median over methods [range] |",
             "|---|---|---|---|"]
    for a in agreement:
        lines.append(f"| {metric_spec(a.a).short} – {metric_spec(a.b).short} | {a.n_methods} | {_fmt(a.kendall_tau)} | "
                     f"{_fmt(a.image_rho_median)} [{_fmt(a.image_rho_min)}, {_fmt(a.image_rho_max)}] |")
    return lines


def _findings(summary: ValiditySummary, agreement: Sequence[MetricAgreement], store: ResultStore,
              methods: Sequence[MethodSpec]) -> list[str]:
    """One sentence per finding, generated from the numbers."""
    lines = []
    by_label = {s.label: s for s in methods}
    threshold = summary.methods[0].threshold if summary.methods else 0.5
    ignoring = [m for m in summary.methods if not m.depends_on_weights]
    if ignoring:
        ranks = {metric: _ranks(store, methods, metric) for metric in ("saco", "fc", "pf_auc")}
        placed = "; ".join(f"{m.label} (MPRT ρ {_fmt(m.mprt)}; ranks " + ", ".join(
            f"{ranks[metric][by_label[m.label].key]} of {len(methods)} on {metric_spec(metric).short}"
            for metric in ranks) + ")" for m in ignoring)
        one = len(ignoring) == 1
        lines.append(f"MPRT flags {len(ignoring)} method{'' if one else 's'} whose map{'' if one else 's'} hardly "
                     f"change{'s' if one else ''} when every layer of the model is re-initialised (mean ρ ≥ "
                     f"{threshold:g}), so {'it does' if one else 'they do'} not explain what the model learned, "
                     f"whatever the faithfulness scores: {placed}.")
    else:
        lines.append(f"Every method's map changes when the model's weights are randomised (MPRT mean ρ < {threshold:g}).")
    blind = [m for m in summary.methods if not m.depends_on_class]
    lines.append(f"RandomLogit: {', '.join(m.label for m in blind)} give{'s' if len(blind) == 1 else ''} nearly the "
                 f"same map for another class (mean ρ ≥ {threshold:g})." if blind else
                 f"Every method's map changes with the explained class (RandomLogit mean ρ < {threshold:g}).")
    for a in agreement:
        lines.append(f"{metric_spec(a.a).short} and {metric_spec(a.b).short} rank the methods "
                     f"{agreement_word(a.kendall_tau)} (τ {_fmt(a.kendall_tau)}); per image, the median correlation "
                     f"between them over the methods is {_fmt(a.image_rho_median)}.")
    retest = [m.fc_retest for m in summary.methods if math.isfinite(m.fc_retest)]
    if retest:
        lines.append(f"FC under another subset seed: per-image ρ median {_fmt(float(np.median(retest)))} (range "
                     f"{_fmt(min(retest))} to {_fmt(max(retest))}) and the methods' ranking "
                     f"{agreement_word(summary.retest_tau)} (τ {_fmt(summary.retest_tau)}).")
    for fill, what in (("black", "a black image"), ("blur", "a blurred copy")):
        taus = ", ".join(f"{metric_spec(m).short} {agreement_word(t)} (τ {_fmt(t)})"
                         for (f, m), t in summary.replacement_tau.items() if f == fill)
        lines.append(f"Replacing the removed patches by {what} instead of the image mean ranks the methods: {taus}.")
    return lines


def _with_undefined(rho: float, undefined: int, n: int) -> str:
    """'-0.71', or '-0.71 (19 of 50 undefined: constant map)' where some images have no ρ."""
    return _fmt(rho) + (f" ({undefined} of {n} undefined: constant map)" if undefined else "")


def validity_section(store: ResultStore, metrics: Sequence[str]) -> list[str]:
    """The section's Markdown lines ([] without a test experiment): the agreement table over ``metrics`` on every
    test image, and, where the run computed them, the checks' table and the findings."""
    if (TEST, "test") not in store.experiments():
        return []
    methods = validity_methods(store)
    agreement = metric_agreement(store, TEST, "test", metrics, methods)
    n = len(store.experiment_ids(TEST, "test"))
    lines = ["## Metric validity", "",
             f"Agreement between the metrics over the {len(methods)} ranked methods (FG's controls left out) and the "
             f"{n} test images (scores oriented so that higher is better; τ ≥ {ALIKE:g}: alike, ≥ {PARTLY:g}: partly "
             f"alike, |τ| < {PARTLY:g}: unrelated, ≤ −{PARTLY:g}: opposite order):", "", *_agreement_lines(agreement), ""]
    results = read_validity(store.run_dir)
    if results is None or not results.get("methods"):
        return lines + ["The randomisation, test–retest and replacement checks were not run "
                        "(`protocol.validity_images`).", ""]
    summary = validity_summary(store, results, methods)
    lines += [f"Checks on a seeded subset of {summary.n_images} test images (MPRT: every layer re-initialised, "
              "top-down; RandomLogit: another class; FC retest: the next subset seed):", "",
              "| method | MPRT ρ | depends on weights | RandomLogit ρ | depends on class | FC retest ρ |",
              "|---|---|---|---|---|---|"]
    for m in summary.methods:
        lines.append(f"| {m.label} | {_with_undefined(m.mprt, m.mprt_undefined, summary.n_images)} | "
                     f"{'yes' if m.depends_on_weights else '**no**'} | "
                     f"{_with_undefined(m.random_logit, m.random_logit_undefined, summary.n_images)} | "
                     f"{'yes' if m.depends_on_class else '**no**'} | {_fmt(m.fc_retest)} |")
    lines += ["", "Ranking of the methods with other replacement values vs the image mean (Kendall τ, subset):", "",
              "| replacement | " + " | ".join(metric_spec(m).short for m in ("saco", "fc", "pf_auc")) + " |",
              "|---|---|---|---|"]
    for fill in ("black", "blur"):
        lines.append(f"| {fill} | " + " | ".join(_fmt(summary.replacement_tau[(fill, m)])
                                                 for m in ("saco", "fc", "pf_auc")) + " |")
    lines += ["", "Findings:", "", *[f"* {line}" for line in _findings(summary, agreement, store, methods)], ""]
    return lines
