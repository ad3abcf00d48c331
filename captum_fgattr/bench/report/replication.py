"""The report's "Replication" section: per claim, each replicate's effect and the pooled random-effects estimate
with its verdict, a forest plot per metric, and one generated sentence per claim saying whether it holds in every
replicate."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from captum_fgattr.bench.analysis.comparisons import AGAINST_TITLES, format_p
from captum_fgattr.bench.analysis.replication import PooledComparison
from captum_fgattr.bench.metrics import metric_spec
from captum_fgattr.bench.stats import ALPHA
from captum_fgattr.files import atomic_write

__all__ = ["replication_section", "forest_plot"]


def _ci(delta: float, low: float, high: float) -> str:
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]"


def _title(p: PooledComparison) -> str:
    return f"{p.first.configuration.label} vs {AGAINST_TITLES.get(p.first.against, p.first.against)}"


def forest_plot(pooled: Sequence[PooledComparison], path: Path) -> None:
    """One panel per metric: per claim, one row per replicate (its mean difference and 95 % CI) and the pooled row
    (diamond, the random-effects CI) beneath, a zero line."""
    metrics = list(dict.fromkeys(p.metric for p in pooled))
    n_rows = max(len([p for p in pooled if p.metric == m]) for m in metrics) * (len(pooled[0].replicates) + 2)
    fig = Figure(figsize=(4.8 * len(metrics), 1.2 + 0.22 * n_rows), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        y, labels, ticks = 0.0, [], []
        for p in [p for p in pooled if p.metric == metric]:
            for name, c in zip(p.replicates, p.per_replicate):
                r = c.result
                ax.errorbar([r.delta], [-y], xerr=[[r.delta - r.ci_low], [r.ci_high - r.delta]], fmt="o",
                            color="tab:blue", capsize=2, markersize=4)
                labels.append(f"{name}")
                ticks.append(-y)
                y += 1
            c = p.pooled.comparison
            ax.errorbar([c.delta], [-y], xerr=[[c.delta - c.ci_low], [c.ci_high - c.delta]], fmt="D",
                        color="black", capsize=3, markersize=6)
            ax.annotate(p.outcome, (1.0, -y), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", fontsize=6, va="center")
            labels.append(f"pooled: {AGAINST_TITLES.get(p.first.against, p.first.against)}")
            ticks.append(-y)
            y += 1.6
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(ticks, labels, fontsize=6)
        better = "→ FG better" if metric_spec(metric).higher_is_better else "← FG better"
        ax.set(title=f"{metric_spec(metric).title}: FG − reference", xlabel=f"mean paired Δ, 95 % CI  {better}")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def replication_section(pooled: Sequence[PooledComparison], out: Path) -> list[str]:
    """The section's Markdown lines and its forest plot (``out/forest_test.png``); [] without replicates."""
    if not pooled:
        return []
    names = pooled[0].replicates
    n = len(names)
    lines = ["## Replication", "",
             f"The selected configuration on {n} replicates ({', '.join(names)}; \"run\" is this run's own model and "
             "SAEs), on the same test images. Per replicate: its mean paired difference with 95 % CI and its outcome "
             "(Holm over its own claims family). Pooled: random-effects meta-analysis over the replicates "
             "(DerSimonian–Laird τ, Hartung–Knapp CI on n − 1 df), the CI includes the variation between replicates; "
             f"its outcome is Holm-adjusted over the {len(pooled)} pooled claims at family-wise α = {ALPHA:g}.", "",
             "| claim | metric | " + " | ".join(names) + " | pooled Δ [95 % CI] | τ | p Holm | p TOST Holm | outcome | "
             "same sign | same outcome |", "|" + "---|" * (n + 9)]
    for p in pooled:
        per = [f"{_ci(c.result.delta, c.result.ci_low, c.result.ci_high)} {c.outcome}" for c in p.per_replicate]
        c = p.pooled.comparison
        lines.append(f"| {_title(p)} | {metric_spec(p.metric).short} | " + " | ".join(per) + f" | "
                     f"{_ci(c.delta, c.ci_low, c.ci_high)} | {p.pooled.tau:.3f} | {format_p(c.p_holm)} | "
                     f"{format_p(c.p_tost_holm)} | "
                     f"**{p.outcome}** | {p.pooled.agree_in_sign} of {n} | {p.agree_in_outcome} of {n} |")
    forest_plot(pooled, out / "forest_test.png")
    lines += ["", "![forest plot](forest_test.png)", "",
              f"*Forest plot: per metric and claim, each replicate's mean paired difference (FG − reference) with its "
              f"95 % CI (dots) and the pooled random-effects estimate (diamond) with its outcome at family-wise α = "
              f"{ALPHA:g}.*", "", "Replicated:", ""]
    for p in pooled:
        sign = "agree" if p.pooled.agree_in_sign == n else f"do not all agree ({p.pooled.agree_in_sign} of {n})"
        held = ("holds in every replicate" if p.agree_in_outcome == n else
                f"holds in {p.agree_in_outcome} of {n} replicates")
        c = p.pooled.comparison
        lines.append(f"* {_title(p)}, {metric_spec(p.metric).short}: pooled **{p.outcome}** "
                     f"(Δ {_ci(c.delta, c.ci_low, c.ci_high)}, between-replicate SD τ {p.pooled.tau:.3f}); the "
                     f"replicates' signs {sign}, and the outcome {held}.")
    return lines + [""]
