"""The benchmark's metrics, registered once: how each is computed, its title, the direction of "better".

A metric is one :class:`MetricSpec` in :data:`METRICS`: ``compute`` turns a :class:`MetricBatch` (a batch of
images with their attributions) into (B,) per-image scores. Every part of the benchmark that lists metrics
(evaluation, store, statistics, selection, comparisons, report, feature study) reads :func:`metric_specs`
when it runs, so a metric added with :func:`register_metric` is computed, stored and reported everywhere.
A metric's own settings are declared with their defaults in its spec (``settings={"k": 3}``), set in a run as
``evaluation.metrics.settings.<metric>.<setting>`` and read by ``compute`` as
``batch.metrics.settings_of(<metric>)[<setting>]`` (see :class:`~captum_fgattr.bench.config.MetricConfig`).

The built-in SaCo, FC and PF share one joint call of :func:`quantus_saco.engine.evaluate_patch_metrics` per
batch (:meth:`MetricBatch.patch_metrics`), whose perturbed images go through one batched forward; the methods
evaluated on one batch share its :class:`~quantus_saco.forwards.PerturbedForwards` (``MetricBatch.forwards``), so
a perturbed image common to several methods (FC's subsets, equal SaCo groups or PF steps) is forwarded once.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from captum_fgattr.registry import Registry
from quantus_saco.engine import METRICS as ENGINE_METRICS, evaluate_patch_metrics
from quantus_saco.forwards import PerturbedForwards
from quantus_saco.region import ORDERS, evaluate_region_perturbation, evaluate_road


__all__ = ["MetricBatch", "MetricSpec", "METRICS", "metric_specs", "metric_names", "metric_spec", "register_metric",
           "unregister_metric", "run_metric_specs"]


@dataclass(frozen=True, eq=False)
class MetricBatch:
    """One batch of images with one method's attributions, as every metric's ``compute`` sees it."""

    model: nn.Module  # classifier in eval mode on the images' device, (N, C, H, W) -> (N, classes) logits
    images: Tensor  # (B, C, H, W) preprocessed images
    attributions: Tensor  # (B, P) float32 patch attributions, row-major over the patch grid
    targets: Tensor  # (B,) classes explained and scored
    sample_ids: Tensor  # (B,) dataset image ids (seed per-image randomness independently of batching)
    logits: Tensor  # (B, classes) the model's outputs on ``images``
    patch_size: int  # square patches of patch_size × patch_size pixels
    metrics: Any  # the resolved bench.config.MetricConfig (no preset left); not imported: config imports this module
    max_batch: int = 256  # most perturbed images per forward
    autocast: bool = False  # forwards under torch.autocast
    forwards: PerturbedForwards | None = None  # outputs on perturbed images, shared by the methods of the batch

    def engine(self, metrics: Sequence[str] = ENGINE_METRICS, seed: int | None = None,
               fill: Tensor | None = None) -> dict[str, Tensor]:
        """One call of the batched patch-metric engine with this batch's settings -> {name: (B,) float64}.

        ``metrics``: any of "saco", "fc", "pf"; ``seed`` (FC's subsets) defaults to ``self.metrics.seed``; ``fill``:
        (B, C, H, W) images whose pixels replace the removed patches instead of each image's mean (``forwards``, if
        set, made with the same fill).
        """
        m = self.metrics
        return evaluate_patch_metrics(
            self.model, self.images, self.attributions, self.targets, self.patch_size, metrics=metrics,
            seed=m.seed if seed is None else seed, saco_groups=m.saco_groups, fc_subset_size=m.fc_subset_size,
            fc_runs=m.fc_runs, fc_correlation=m.fc_correlation, pf_patches_per_step=m.pf_patches_per_step,
            saco_target=m.saco_target, saco_tie_order=m.saco_tie_order, saco_pairing=m.saco_pairing,
            fc_sampling=m.fc_sampling, pf_tie_order=m.pf_tie_order, pf_replacement=m.pf_replacement,
            undefined_score=m.undefined_score, sample_ids=self.sample_ids, logits=self.logits, max_batch=self.max_batch,
            autocast=self.autocast, forwards=self.forwards, fill=fill)

    @cached_property
    def patch_metrics(self) -> Mapping[str, Tensor]:
        """SaCo, FC (seed ``metrics.seed``) and PF of the batch from one joint engine call, made once and shared
        by the three built-in metrics: {"saco", "fc", "pf_auc": (B,), "pf_curve": (B, S + 1)}."""
        return self.engine()


@dataclass(frozen=True)
class MetricSpec:
    """One per-image score: its store name, how it reads in tables, its direction and its computation."""

    name: str  # stored name and CSV column prefix, e.g. "pf_auc"
    short: str  # in sentences and headers, e.g. "PF"
    higher_is_better: bool
    compute: Callable[[MetricBatch], Tensor]  # batch -> (B,) float64 per-image scores, NaN where undefined
    definition: str = ""  # one sentence for the report's setup section (Markdown)
    settings: Mapping[str, Any] = field(default_factory=dict)  # its own settings with their defaults, e.g. {"k": 3}
    extra: bool = False  # computed only where a run names it (``evaluation.metrics.extra``), on the test experiment;
    # in its table and the validity section, never in the selection or the Holm families

    @property
    def title(self) -> str:
        """Table header with the direction of better, e.g. "PF ↓"."""
        return f"{self.short} {'↑' if self.higher_is_better else '↓'}"


def _saco(batch: MetricBatch) -> Tensor:
    """SaCo (Wu et al. 2024), (B,) in [−1, 1]."""
    return batch.patch_metrics["saco"].double()


def _fc(batch: MetricBatch) -> Tensor:
    """Faithfulness Correlation, (B,); with ``fc_repeats`` > 1 the mean over seeds seed, seed + 1, ... (the thesis
    code's 3 seeds), NaN if any repeat is undefined (``undefined_score="nan"``)."""
    m = batch.metrics
    first = batch.patch_metrics["fc"]
    if m.fc_repeats == 1:
        return first.double()
    repeats = [first] + [batch.engine(metrics=("fc",), seed=m.seed + r)["fc"] for r in range(1, m.fc_repeats)]
    return torch.stack(repeats).mean(dim=0).double()


def _pf_auc(batch: MetricBatch) -> Tensor:
    """Pixel-Flipping AUC on the [0, 1] scale, (B,)."""
    return batch.patch_metrics["pf_auc"].double()


def _srg(batch: MetricBatch) -> Tensor:
    """Symmetric relevance gain AUC(LeRF) − AUC(MoRF), (B,) in [−1, 1], at its ``patches_per_step`` (None: PF's
    step) and PF's tie order with the image mean replacing patches; its MoRF images are PF's where its step is a
    multiple of PF's (forwarded once through the batch's shared outputs), so only LeRF costs forwards."""
    m = batch.metrics
    step = m.settings_of("srg")["patches_per_step"] or m.pf_patches_per_step
    return evaluate_region_perturbation(
        batch.model, batch.images, batch.attributions, batch.targets, batch.patch_size, orders=ORDERS,
        patches_per_step=step, tie_order=m.pf_tie_order, logits=batch.logits,
        max_batch=batch.max_batch, autocast=batch.autocast, forwards=batch.forwards)["srg"].double()


def _road(batch: MetricBatch) -> Tensor:
    """ROAD's gap AUC(LeRF) − AUC(MoRF) with removed patches imputed by noisy linear imputation (Rong et al. 2022),
    (B,) in [−1, 1], at the default removal fractions, noise seeded by ``metrics.seed`` and the sample ids."""
    m = batch.metrics
    return evaluate_road(
        batch.model, batch.images, batch.attributions, batch.targets, batch.patch_size, orders=ORDERS, seed=m.seed,
        sample_ids=batch.sample_ids, tie_order=m.pf_tie_order, logits=batch.logits, max_batch=batch.max_batch,
        autocast=batch.autocast)["road_srg"].double()


#: names a metric cannot take: the other columns of :meth:`ResultStore.scores`
_RESERVED = frozenset({"image_id", "label", "prediction", "target", "n_patches"})
#: the registered metrics by name, in table order; add one with :func:`register_metric` (it checks the name)
METRICS = Registry[MetricSpec]("metric")


def metric_specs() -> tuple[MetricSpec, ...]:
    """The registered metrics every run computes (not the extra ones), in table order (SaCo, FC, PF first): the
    metrics of the selection, the comparisons and the figures."""
    return tuple(spec for spec in METRICS.values() if not spec.extra)


def metric_names() -> tuple[str, ...]:
    """Names of :func:`metric_specs`, in table order."""
    return tuple(spec.name for spec in metric_specs())


def run_metric_specs(extra: Sequence[str] = ()) -> tuple[MetricSpec, ...]:
    """The metrics an evaluation computes: :func:`metric_specs` and the named extra ones, in table order."""
    return tuple(spec for spec in METRICS.values() if not spec.extra or spec.name in extra)


def metric_spec(name: str) -> MetricSpec:
    """The registered metric called ``name``.

    Raises:
        KeyError: no such metric (names the registered ones).
    """
    return METRICS[name]


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` after the registered metrics: from now on it is computed, stored and reported.

    Raises:
        ValueError: the name is taken, reserved or not a lower-case identifier.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name) or spec.name in _RESERVED:
        raise ValueError(f"metric name {spec.name!r}: expected a lower-case identifier other than {sorted(_RESERVED)}")
    return METRICS.add(spec.name, spec)


def unregister_metric(name: str) -> None:
    """Remove the metric called ``name`` (e.g. one a test registered).

    Raises:
        KeyError: no such metric.
    """
    METRICS.remove(name)


register_metric(MetricSpec(
    "saco", "SaCo", True, _saco,
    "**SaCo** (Wu et al. 2024): patches ranked by attribution, cut into K groups; each group is replaced alone and "
    "the drop in the target's probability should order like the groups' attribution sums. In [−1, 1], higher is better."))
register_metric(MetricSpec(
    "fc", "FC", True, _fc,
    "**FC**, Faithfulness Correlation (Bhatt et al. 2020): correlation, over random patch subsets, between the subset's "
    "attribution sum and the logit drop when it is replaced. Higher is better."))
register_metric(MetricSpec(  # Pixel-Flipping AUC on the [0, 1] scale
    "pf_auc", "PF", False, _pf_auc,
    "**PF**, Pixel Flipping (Bach et al. 2015): patches replaced cumulatively, most relevant first; area under the "
    "target-probability curve. Lower is better."))
register_metric(MetricSpec(
    "srg", "SRG", True, _srg,
    "**SRG**, symmetric relevance gain (Blücher et al. 2024): area under the target-probability curve when the least "
    "relevant patches are replaced first (LeRF) minus the same area most relevant first (MoRF, PF's curve); it "
    "cancels much of what the replacement value does to the model. In [−1, 1], higher is better.",
    settings={"patches_per_step": None}, extra=True))
register_metric(MetricSpec(
    "road", "ROAD", True, _road,
    "**ROAD** (Rong et al. 2022): as SRG, but the removed patches are imputed from their neighbours (noisy linear "
    "imputation) instead of replaced by a value, at removal fractions 0.1 … 0.9. In [−1, 1], higher is better.",
    extra=True))
