"""The report's opening "Findings": the study's answer in plain words, generated from the run's computed results
(the claims and ranking families of the test experiment, the selections, the run's sizes); no sentence is fixed
text about the outcome."""
from __future__ import annotations

import math
from collections.abc import Sequence

from captum_fgattr.bench.analysis.comparisons import (
    AGAINST_TITLES, Comparison, Ranking, format_p, ranking_lines, verdict_lines,
)
from captum_fgattr.bench.analysis.replication import PooledComparison
from captum_fgattr.bench.metrics import metric_spec
from captum_fgattr.bench.stats import ALPHA, PairedComparison

__all__ = ["findings_section"]


def _test_p(outcome: str, result: PairedComparison) -> str:
    """The Holm-adjusted p-value the outcome rests on: the equivalence test's for "equivalent", else the
    difference test's."""
    if outcome == "equivalent":
        return f"p_TOST,Holm {format_p(result.p_tost_holm)}"
    return f"p_Holm {format_p(result.p_holm)}"


def _gain_line(configuration_key: str, comparisons: Sequence[Comparison]) -> str:
    """'FG … vs TransMM: SaCo better (Δ +0.139 [+0.073, +0.205], p_Holm 0.0016), FC inconclusive (…), …'."""
    rows = [c for c in comparisons if c.configuration.key == configuration_key and c.against == "transmm"]
    parts = [f"{metric_spec(c.metric).short} **{c.outcome}** (Δ {c.result.delta:+.3f} [{c.result.ci_low:+.3f}, "
             f"{c.result.ci_high:+.3f}], {_test_p(c.outcome, c.result)})" for c in rows]
    return f"{rows[0].configuration.label} vs TransMM: " + ", ".join(parts) + "." if rows else ""


def _limits(comparisons: Sequence[Comparison], n_val: int | None, replicates: Sequence[str] = ()) -> str:
    """n, the smallest detectable effects of the last configuration vs TransMM at the family's α/m, and the run's
    single model and SAE set."""
    n_tests = sum(math.isfinite(c.result.p) for c in comparisons)
    last = comparisons[-1].configuration.key
    mde = [f"{metric_spec(c.metric).short} {c.result.mde_holm:.3f}" for c in comparisons
           if c.configuration.key == last and c.against == "transmm" and math.isfinite(c.result.mde_holm)]
    n_test = max((c.result.n for c in comparisons if c.result.unit != "seeds"), default=0)
    sizes = f"{n_test} test images" + (f", {n_val} validation images (selection and margins)" if n_val else "")
    text = (f"{sizes}; the smallest mean difference FG vs TransMM detectable with 80 % power at α/m = {ALPHA:g}/"
            f"{n_tests}: " + (", ".join(mde) if mde else "–") + " (smaller true effects can be missed). ")
    if len(replicates) > 1:
        return text + (f"The selected configuration was tested on {len(replicates)} replicates ({', '.join(replicates)}); "
                       "the rest of the protocol (selection, the other configurations, the baselines) on the run's own "
                       "model and SAEs only.")
    return text + ("Everything rests on one model and one SAE per gated layer: whether the answer holds for other SAE "
                   "or model seeds is not tested by this run.")


def _replicated(pooled: Sequence[PooledComparison]) -> list[str]:
    """One line per pooled claim: its pooled outcome and how many replicates agree."""
    n = len(pooled[0].replicates)
    lines = []
    for p in pooled:
        c = p.pooled.comparison
        lines.append(f"* {p.first.configuration.label} vs {AGAINST_TITLES.get(p.first.against, p.first.against)}, "
                     f"{metric_spec(p.metric).short}: pooled **{p.outcome}** (Δ {c.delta:+.3f} [{c.ci_low:+.3f}, "
                     f"{c.ci_high:+.3f}], {_test_p(p.outcome, c)}); {p.pooled.agree_in_sign} of {n} replicates "
                     f"agree in sign, {p.agree_in_outcome} of {n} in outcome.")
    return lines


def findings_section(comparisons: Sequence[Comparison], ranking: Ranking | None, n_val: int | None,
                     pooled: Sequence[PooledComparison] = ()) -> list[str]:
    """The report's opening section (Markdown lines): per FG configuration its effect vs TransMM and the conclusion
    its controls allow, the replicated claims (``pooled``), the rankings the tests support, the run's limits."""
    if not comparisons and ranking is None:
        return []
    n_tests = sum(math.isfinite(c.result.p) for c in comparisons)
    lines = ["## Findings", "",
             f"Generated from this run's test results. Outcomes are Holm-adjusted at family-wise α = {ALPHA:g} (claims "
             f"family: {n_tests} tests; intervals are unadjusted 95 % CIs, so one that excludes 0 can still be "
             "inconclusive).", ""]
    if comparisons:
        keys = list(dict.fromkeys(c.configuration.key for c in comparisons))
        conclusions = [line for line in verdict_lines(comparisons) if line.startswith("Conclusion for ")]
        lines.append("**The answer, per selected FG configuration:**")
        lines.append("")
        for key, conclusion in zip(keys, conclusions):
            lines += [f"* {_gain_line(key, comparisons)}", f"  {conclusion}"]
        lines.append("")
    if pooled:
        lines += [f"**Replicated over {len(pooled[0].replicates)} replicates** (random-effects pooled, Holm over the "
                  f"{len(pooled)} pooled claims; section Replication):", "", *_replicated(pooled), ""]
    if ranking is not None:
        lines += ["**Most faithful methods as tested** (ranking family):", "",
                  *[f"* {line}" for line in ranking_lines(ranking)], ""]
    if comparisons:
        replicates = pooled[0].replicates if pooled else ()
        lines += [f"**Limits:** {_limits(comparisons, n_val, replicates)}", ""]
    return lines

