"""The benchmark's metrics, described once: the store's columns, the tables' titles, the direction of "better".

Every part of the benchmark that lists metrics (store, statistics, selection, comparisons, report, feature study)
iterates :data:`METRIC_SPECS`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MetricSpec", "METRIC_SPECS", "METRICS", "HIGHER_IS_BETTER", "SPEC_OF"]


@dataclass(frozen=True)
class MetricSpec:
    """One per-image faithfulness score."""

    name: str  # store column, e.g. "pf_auc"
    short: str  # in sentences and headers, e.g. "PF"
    higher_is_better: bool

    @property
    def title(self) -> str:
        """Table header with the direction of better, e.g. "PF ↓"."""
        return f"{self.short} {'↑' if self.higher_is_better else '↓'}"


METRIC_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("saco", "SaCo", True),
    MetricSpec("fc", "FC", True),
    MetricSpec("pf_auc", "PF", False),  # Pixel-Flipping AUC on the [0, 1] scale
)
METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_SPECS)  # score columns, in table order
HIGHER_IS_BETTER: dict[str, bool] = {m.name: m.higher_is_better for m in METRIC_SPECS}
SPEC_OF: dict[str, MetricSpec] = {m.name: m for m in METRIC_SPECS}
