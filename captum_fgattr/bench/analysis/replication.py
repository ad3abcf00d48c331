"""The study's answer pooled over replicates: the run's own (model, SAEs) and each ``RunConfig.replicates`` pair the
selected configuration was tested on (split "test@<name>").

Per replicate, the claims of its test experiment (:func:`~captum_fgattr.bench.analysis.comparisons.claim_comparisons`:
FG vs TransMM and vs each control, Holm over the replicate's own family). Per comparison present in every replicate,
the replicates' paired effects pooled by a random-effects meta-analysis
(:func:`~captum_fgattr.bench.stats.random_effects`: DerSimonian–Laird τ², Hartung–Knapp CI on k − 1 df), whose CI
includes the variation between replicates; the pooled comparisons form one Holm family, and their outcomes are the
replicated verdicts. "k of n replicates agree" counts the replicates whose own effect has the pooled sign, and
whose own outcome is the pooled one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from captum_fgattr.bench.analysis.comparisons import Comparison, claim_comparisons, stored_protocol
from captum_fgattr.bench.config import Protocol
from captum_fgattr.bench.experiments import TEST
from captum_fgattr.bench.metrics import metric_spec
from captum_fgattr.bench.stats import ALPHA, PooledEffect, holm_adjust, random_effects, verdict
from captum_fgattr.bench.store import ResultStore

__all__ = ["RUN_REPLICATE", "PooledComparison", "replicate_splits", "pooled_comparisons"]

#: the name the run's own (model, SAEs) goes by among the replicates
RUN_REPLICATE = "run"


@dataclass(frozen=True)
class PooledComparison:
    """One claim (configuration vs a reference, one metric) over the replicates."""

    replicates: tuple[str, ...]  # replicate names, the run's own first
    per_replicate: tuple[Comparison, ...]  # each replicate's comparison (Holm over its own claims family)
    pooled: PooledEffect  # ``pooled.comparison.p_holm`` / ``p_tost_holm`` over the pooled family

    @property
    def first(self) -> Comparison:
        return self.per_replicate[0]

    @property
    def metric(self) -> str:
        return self.first.metric

    @property
    def outcome(self) -> str:
        """The replicated verdict: better / worse / equivalent / inconclusive from the pooled estimate."""
        return verdict(self.pooled.comparison, metric_spec(self.metric).higher_is_better)

    @property
    def agree_in_outcome(self) -> int:
        """Replicates whose own outcome is the pooled one."""
        return sum(c.outcome == self.outcome for c in self.per_replicate)


def replicate_splits(store: ResultStore) -> list[tuple[str, str]]:
    """(name, split) of every replicate with a test experiment: the run's own ("run", "test") first."""
    splits = [split for experiment, split in store.experiments() if experiment == TEST]
    if "test" not in splits:
        return []
    return [(RUN_REPLICATE, "test")] + [(split.removeprefix("test@"), split) for split in splits
                                        if split.startswith("test@")]


def pooled_comparisons(store: ResultStore, protocol: Protocol | None = None) -> list[PooledComparison]:
    """The claims present in every replicate, pooled (see the module docstring); [] with fewer than 2 replicates."""
    splits = replicate_splits(store)
    if len(splits) < 2:
        return []
    protocol = protocol if protocol is not None else stored_protocol(store)
    per = [{(c.configuration.key, c.against, c.metric): c for c in claim_comparisons(store, TEST, split, protocol)}
           for _, split in splits]
    keys = [key for key in per[0] if all(key in replicate for replicate in per[1:])]
    raw = [random_effects([replicate[key].result for replicate in per], per[0][key].result.margin) for key in keys]
    adjusted = holm_adjust([p.comparison for p in raw], ALPHA)
    names = tuple(name for name, _ in splits)
    return [PooledComparison(names, tuple(replicate[key] for replicate in per), replace(p, comparison=a))
            for key, p, a in zip(keys, raw, adjusted)]
