"""Tables and figures of a run, read from its store only (thesis Tables 7.2/7.3 and Chapter 7 figures).

Per experiment: ``{experiment}.md`` / ``{experiment}.csv`` (method, layers, every registered metric — SaCo ↑, FC ↑,
PF ↓, … — as mean ± SE, % improvement over TransMM, unadjusted Welch and paired p-values, undefined-value counts),
and figures (one panel per metric):
``single_layer.png`` (per-layer curves per variant, TransMM line), ``multi_layer.png`` (bars),
``kappa_cmax.png`` (heatmaps of the selection's d_z, selected cell framed), ``overlays_{experiment}.png`` (image / TransMM / FG, for
the test and any other non-sweep experiment).
Test experiment: ``comparisons_test.md`` / ``.csv`` (the claims family: FG real vs TransMM and vs each control, per
metric: mean paired Δ with 95 % CI, d_z, paired and Holm-adjusted p, equivalence margin and Holm-adjusted TOST p, the
outcome, the MDE at the family's α/m, the maps' median Spearman ρ; random controls at the level of their seeds with
each seed's row), ``comparisons_test.png`` (paired Δ with 95 % CIs and outcomes), one verdict line per claim; and
``ranking_test.md`` / ``.csv`` (the ranking family: every method vs TransMM and vs the selected FG configuration,
the best mean per metric vs every other method) with the rankings the tests support.
``report.md`` opens with the generated Findings (:mod:`~captum_fgattr.bench.report.findings`), then the run's setup
(data, model, SAEs, the evaluated images with the model's accuracy on them, metric settings, definitions:
:mod:`~captum_fgattr.bench.report.setup`), the validation selections (a selection worse than TransMM said so), the
tables, the verdicts and the figures, each with a caption. % improvement is only shown over a TransMM mean of at
least :data:`~captum_fgattr.bench.stats.PCT_MIN_BASELINE`.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from captum_fgattr.bench.analysis.comparisons import (
    Comparison, Margin, Ranking, claim_comparisons, format_p, identity_notes, ranking_comparisons, ranking_lines,
    stored_protocol, verdict_lines,
)
from captum_fgattr.bench.config import PF_SCALES
from captum_fgattr.bench.experiments import (
    GRID, MULTI, SINGLE, TEST, control_groups, control_name, selection_score, standardised_effects,
)
from captum_fgattr.bench.methods import OPTIONAL_METHODS, MethodSpec
from captum_fgattr.bench.metrics import METRICS, MetricSpec, metric_spec, metric_specs, run_metric_specs
from captum_fgattr.bench.analysis.replication import pooled_comparisons
from captum_fgattr.bench.report.findings import findings_section
from captum_fgattr.bench.report.replication import replication_section
from captum_fgattr.bench.report.setup import CLASS_NAMES_KEY, evaluated_images_line
from captum_fgattr.bench.report.validity import validity_section
from captum_fgattr.bench.stats import (
    ALPHA, PCT_MIN_BASELINE, Summary, TTest, paired_ttest, percent_improvement, summarize, welch_ttest,
)
from captum_fgattr.bench.store import STORE_NAME, ResultStore
from captum_fgattr.files import atomic_write

__all__ = ["MetricCell", "TableRow", "experiment_table", "write_report", "summary_text", "PF_SCALES"]


@dataclass(frozen=True)
class MetricCell:
    """One metric of one method in a table."""

    summary: Summary  # mean ± SE over the experiment's images (NaN dropped, counted)
    pct: float  # % improvement over TransMM (sign flipped if lower is better); NaN for TransMM itself / no baseline
    welch: TTest  # vs TransMM (NaN fields for TransMM itself)
    paired: TTest  # vs TransMM on the same image ids


@dataclass(frozen=True)
class TableRow:
    method: MethodSpec  # with the label registered in the experiment
    layers: str  # gated layers ("–" for non-FG methods)
    n_images: int
    cells: dict[str, MetricCell]  # metric name -> cell, every registered metric in table order


def _layers(spec: MethodSpec) -> str:
    return ",".join(map(str, spec.fg.layers)) if spec.is_fg else "–"


def _columns(store: ResultStore, split: str, spec: MethodSpec, ids: Sequence[int], pf_scale: str) -> dict[str, np.ndarray]:
    columns = store.scores(split, spec.key, ids)
    if pf_scale == "patches":
        columns["pf_auc"] = columns["pf_auc"] * columns["n_patches"]
    return columns


def experiment_table(store: ResultStore, experiment: str, split: str, pf_scale: str = "unit") -> list[TableRow]:
    """Rows of one experiment's table, methods in registration order; TransMM (if present) is the baseline.

    Args:
        pf_scale: "unit" (AUC in [0, 1]) or "patches" (× number of patches, the thesis tables' scale).
    """
    if pf_scale not in PF_SCALES:
        raise ValueError(f"pf_scale={pf_scale!r}; expected one of {list(PF_SCALES)}")
    ids = store.experiment_ids(experiment, split)
    specs = store.experiment_methods(experiment, split)
    base = next((_columns(store, split, s, ids, pf_scale) for s in specs if s.is_transmm), None)
    stored = {spec.key: _columns(store, split, spec, ids, pf_scale) for spec in specs}
    shown = [m for m in run_metric_specs([m.name for m in METRICS.values() if m.extra])  # extras where computed
             if not m.extra or any(np.isfinite(columns[m.name]).any() for columns in stored.values())]
    rows = []
    for spec in specs:
        columns = stored[spec.key]
        cells = {}
        for metric in shown:
            values = columns[metric.name]
            summary = summarize(values)
            if base is None or spec.is_transmm:
                none = TTest(math.nan, math.nan, math.nan, 0)
                cells[metric.name] = MetricCell(summary, math.nan, none, none)
                continue
            _, mine, theirs = np.intersect1d(columns["image_id"], base["image_id"], return_indices=True)
            reference = base[metric.name]
            cells[metric.name] = MetricCell(
                summary,
                percent_improvement(summary.mean, summarize(reference).mean, metric.higher_is_better),
                welch_ttest(values, reference),
                paired_ttest(values[mine], reference[theirs]),
            )
        rows.append(TableRow(spec, _layers(spec), len(columns["image_id"]), cells))
    return rows


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _p(test: TTest) -> str:
    return format_p(test.p, marks=False)


def _table_metrics(rows: Sequence[TableRow]) -> list[MetricSpec]:
    """The metrics of a table's columns (every run's, then the extra ones the experiment computed)."""
    return [metric_spec(name) for name in rows[0].cells] if rows else list(metric_specs())


def _markdown(rows: Sequence[TableRow], title: str) -> str:
    specs = _table_metrics(rows)
    header = ["Method", "Layers", "n"]
    for metric in specs:
        header += [metric.title, "%", "p Welch", "p paired"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.method.label, row.layers, str(row.n_images)]
        for metric in specs:
            c = row.cells[metric.name]
            pct = "–" if not math.isfinite(c.pct) else f"{c.pct:+.1f}%"
            cells += [f"{_fmt(c.summary.mean)} ± {_fmt(c.summary.se)}", pct, _p(c.welch), _p(c.paired)]
        lines.append("| " + " | ".join(cells) + " |")
    lower = ", ".join(m.short for m in specs if not m.higher_is_better)
    flipped = f" ({lower} sign flipped)" if lower else ""
    lines += ["", f"Mean ± standard error; % = improvement over TransMM{flipped}, \"–\" where TransMM's mean is below "
              f"{PCT_MIN_BASELINE:g} (negative or near zero: the ratio would be meaningless; the paired comparisons give "
              "the differences); p: two-sided t-tests vs TransMM, unadjusted and without stars (the verdicts and stars "
              "come from the Holm families of the comparisons and the ranking)."]
    for metric in specs:
        nan = [(row.method.label, row.cells[metric.name].summary.n_nan) for row in rows
               if row.cells[metric.name].summary.n_nan]
        if nan:
            lines.append(f"Undefined {metric.short} (excluded): " + ", ".join(f"{label}: {n}" for label, n in nan) + ".")
    at_mean = [row.method.label for row in rows if _integrates_from_zero(row.method)]
    if at_mean:
        lines.append("Note: " + ", ".join(at_mean) + " integrates from the normalisation mean (input 0), close to the "
                     "metrics' replacement value (each image's mean): the metrics' perturbations then resemble its "
                     "baseline, which favours it.")
    return "\n".join(lines) + "\n"


def _convergence_lines(store: ResultStore, rows: Sequence[TableRow], split: str) -> str:
    """The stored convergence deltas (Integrated Gradients' completeness gap), one line per method."""
    lines = []
    for row in rows:
        deltas = np.abs(store.convergence_deltas(split, row.method.key))
        if len(deltas):
            lines.append(f"Convergence delta of {row.method.label} (Σ attributions − (f(x) − f(baseline)), target "
                         f"logit): median |δ| {np.median(deltas):.3g}, max {deltas.max():.3g} over {len(deltas)} images. "
                         "δ = 0 for exact Integrated Gradients; a large |δ| means its path integral is not converged at "
                         "this number of steps, so its rows score an approximation whose maps more steps would change.")
    return "\n".join(lines) + "\n" if lines else ""


def _skipped_baselines(config: dict, rows: Sequence[TableRow]) -> str:
    """A line per optional baseline of the stored protocol that is not in the test table: its extra was missing."""
    run = {row.method.name for row in rows}
    configured = (config.get("protocol") or {}).get("baselines") or []
    return "".join(f"\nSkipped baseline {name}: it needs an optional package that could not be imported when the test "
                   f"experiment ran ({OPTIONAL_METHODS[name][1]}).\n"
                   for name in configured if name in OPTIONAL_METHODS and name not in run)


def _integrates_from_zero(spec: MethodSpec) -> bool:
    """Integrated Gradients whose baseline is the model-input 0 (the normalisation mean)."""
    baseline = spec.params.get("baseline", 0.0)
    return spec.name == "integrated_gradients" and not any(baseline if isinstance(baseline, list) else [baseline])


def _csv(rows: Sequence[TableRow], experiment: str, split: str, path: Path) -> None:
    fields = ["experiment", "split", "method", "method_key", "layers", "n_images"]
    for m in (spec.name for spec in _table_metrics(rows)):
        fields += [f"{m}_{k}" for k in ("mean", "se", "n", "n_nan", "pct", "t_welch", "p_welch", "t_paired", "p_paired")]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                record: dict[str, object] = {"experiment": experiment, "split": split, "method": row.method.label,
                                             "method_key": row.method.key, "layers": row.layers,
                                             "n_images": row.n_images}
                for m, c in row.cells.items():
                    record.update({f"{m}_mean": c.summary.mean, f"{m}_se": c.summary.se, f"{m}_n": c.summary.n,
                                   f"{m}_n_nan": c.summary.n_nan, f"{m}_pct": c.pct, f"{m}_t_welch": c.welch.t,
                                   f"{m}_p_welch": c.welch.p, f"{m}_t_paired": c.paired.t,
                                   f"{m}_p_paired": c.paired.p})
                writer.writerow(record)
    atomic_write(path, write)


def _baseline(rows: Sequence[TableRow]) -> TableRow | None:
    return next((row for row in rows if row.method.is_transmm), None)


def _baseline_line(ax: Axes, base: TableRow | None, metric: str) -> None:
    """TransMM's mean as a dashed line over the data, the y range widened to keep it inside the frame."""
    if base is None:
        return
    mean = base.cells[metric].summary.mean
    if not math.isfinite(mean):
        return
    ax.autoscale_view()
    low, high = ax.get_ylim()
    low, high = min(low, mean), max(high, mean)
    pad = 0.08 * (high - low) or 0.05 * (abs(mean) or 1.0)
    ax.set_ylim(low - pad, high + pad)
    ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, zorder=3, label="TransMM")


def _metric_panels() -> tuple[Figure, list[Axes]]:
    """One panel per registered metric, room for a legend outside the data on the right."""
    n = len(metric_specs())
    fig = Figure(figsize=(4.6 * n + 1.6, 3.6), layout="constrained")
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def _finish_panels(fig: Figure, axes: Sequence[Axes], path: Path) -> None:
    """Titles say what the error bars are; one legend beside the panels; the y axes fit the data (never from 0
    only because it is 0: PF AUCs around 0.6 would look equal)."""
    for ax in axes:
        ax.set_title(f"{ax.get_title()}  (mean ± SE)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def _layer_curves(rows: Sequence[TableRow], path: Path) -> None:
    """Per gated layer, one series per score variant, each offset a little along x so that their error bars do not
    overlap."""
    fg = [row for row in rows if row.method.is_fg and len(row.method.fg.layers) == 1]
    variants = list(dict.fromkeys(row.method.fg.variant for row in fg))
    fig, axes = _metric_panels()
    for ax, metric in zip(axes, metric_specs()):
        for i, variant in enumerate(variants):
            offset = 0.12 * (i - (len(variants) - 1) / 2)
            series = sorted((row.method.fg.layers[0], row.cells[metric.name].summary) for row in fg
                            if row.method.fg.variant == variant)
            ax.errorbar([x + offset for x, _ in series], [s.mean for _, s in series], yerr=[s.se for _, s in series],
                        marker="o", capsize=3, label=variant)
        _baseline_line(ax, _baseline(rows), metric.name)
        ax.set_xticks(sorted({row.method.fg.layers[0] for row in fg}))
        ax.set(title=metric.title, xlabel="gated layer (0-based block)")
    _finish_panels(fig, axes, path)


def _bars(rows: Sequence[TableRow], path: Path) -> None:
    """Multi-layer configurations as points with SE bars (not bars from 0)."""
    fg = [row for row in rows if row.method.is_fg]
    fig, axes = _metric_panels()
    for ax, metric in zip(axes, metric_specs()):
        x = np.arange(len(fg))
        cells = [row.cells[metric.name].summary for row in fg]
        ax.errorbar(x, [c.mean for c in cells], yerr=[c.se for c in cells],
                    fmt="o", capsize=4, color="tab:blue", label="FG (combined)")
        ax.set_xticks(x, [f"[{row.layers}]" for row in fg], rotation=30)
        ax.set_xlim(-0.5, len(fg) - 0.5)
        _baseline_line(ax, _baseline(rows), metric.name)
        ax.set(title=metric.title, xlabel="gated layers")
    _finish_panels(fig, axes, path)


@dataclass(frozen=True)
class GridCell:
    """One κ × c_max candidate of the grid experiment: its standardised effects vs TransMM (positive = better)."""

    kappa: float
    c_max: float
    effects: dict[str, float]  # metric -> d_z, sign flipped where lower is better
    selected: bool


def _candidate_effects(store: ResultStore, experiment: str, split: str) -> list[tuple[MethodSpec, dict[str, float]]]:
    """Each finished FG candidate of a validation experiment with its standardised effects vs TransMM on the same
    images (the selection's quantity); [] without TransMM."""
    ids = store.experiment_ids(experiment, split)
    specs = store.experiment_methods(experiment, split)
    base = next((s for s in specs if s.is_transmm), None)
    if base is None:
        return []
    base_columns = store.scores(split, base.key, ids)
    out = []
    for spec in (s for s in specs if s.is_fg):
        columns = store.scores(split, spec.key, ids)
        if len(columns["image_id"]) == len(base_columns["image_id"]):  # else unfinished
            out.append((spec, standardised_effects(columns, base_columns)))
    return out


def grid_cells(store: ResultStore, experiment: str, split: str) -> list[GridCell]:
    """The κ × c_max candidates with the quantity selection ranks them by (d_z vs TransMM on the same images) and
    which one the stored selection chose."""
    chosen = store.selection(experiment)
    return [GridCell(spec.fg.kappa, spec.fg.c_max, effects, chosen is not None and chosen.method_key == spec.key)
            for spec, effects in _candidate_effects(store, experiment, split)]


def is_grid_corner(cells: Sequence[GridCell]) -> bool:
    """Whether the selected cell lies at the extreme κ and the extreme c_max of a grid of at least 2 × 2 (the best
    setting may then lie outside the grid)."""
    chosen = next((c for c in cells if c.selected), None)
    kappas, c_maxes = sorted({c.kappa for c in cells}), sorted({c.c_max for c in cells})
    if chosen is None or len(kappas) < 2 or len(c_maxes) < 2:
        return False
    return chosen.kappa in (kappas[0], kappas[-1]) and chosen.c_max in (c_maxes[0], c_maxes[-1])


def _heatmaps(cells: Sequence[GridCell], path: Path) -> None:
    """d_z per metric and their mean (the selection criterion) over κ × c_max, one diverging colour scale centred
    at 0 with positive (blue) = better on every panel; the selected cell framed."""
    kappas, c_maxes = sorted({c.kappa for c in cells}), sorted({c.c_max for c in cells})
    panels = {f"{m.title}": {(c.kappa, c.c_max): c.effects[m.name] for c in cells} for m in metric_specs()}
    panels["mean d_z (selection)"] = {(c.kappa, c.c_max): float(np.mean(list(c.effects.values()))) for c in cells}
    chosen = next((c for c in cells if c.selected), None)
    fig = Figure(figsize=(4.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, values) in zip(axes, panels.items()):
        grid = np.array([[values.get((k, c), math.nan) for c in c_maxes] for k in kappas])
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, _fmt(v, 2), ha="center", va="center", fontsize=8,
                    color="white" if abs(v) > 0.6 * bound else "black")
        if chosen is not None:
            i, j = kappas.index(chosen.kappa), c_maxes.index(chosen.c_max)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
        ax.set_xticks(range(len(c_maxes)), [f"{c:g}" for c in c_maxes])
        ax.set_yticks(range(len(kappas)), [f"{k:g}" for k in kappas])
        ax.set(title=f"{title}\nd_z vs TransMM (+ = better)", xlabel="c_max", ylabel="κ")
        fig.colorbar(image, ax=ax, shrink=0.8)
    if is_grid_corner(cells):
        fig.suptitle("selected cell (framed) is a corner of the grid: the best setting may lie outside it", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def _gallery_ids(store: ResultStore, split: str, ids: Sequence[int], base: MethodSpec | None,
                 real: MethodSpec | None, per_class: int = 2) -> dict[int, str]:
    """Image id -> caption: up to ``per_class`` stored images per class, then the images FG (``real``) improved and
    degraded most on the tables' first metric (SaCo; by its paired difference to TransMM, ``base``, sign flipped if
    lower is better)."""
    columns = store.scores(split, base.key, ids) if base is not None else None
    if columns is None or not len(columns["image_id"]):
        return {int(i): "" for i in ids[:2 * per_class]}
    chosen: dict[int, str] = {}
    for label in np.unique(columns["label"]):
        chosen.update({int(i): "" for i in columns["image_id"][columns["label"] == label][:per_class]})
    if real is not None:
        lead = metric_specs()[0]
        mine = store.scores(split, real.key, ids)
        delta = mine[lead.name] - columns[lead.name] if len(mine["image_id"]) == len(columns["image_id"]) else None
        if delta is not None and np.isfinite(delta).any():
            better = delta if lead.higher_is_better else -delta
            order = np.argsort(np.where(np.isfinite(better), better, 0.0))
            for what, index in (("most improved", order[-1]), ("most degraded", order[0])):
                chosen[int(columns["image_id"][index])] = f"{what} by FG (Δ{lead.short} {delta[index]:+.2f})"
    return chosen


def _short_label(spec: MethodSpec, real: MethodSpec | None) -> str:
    """A control's name beside its real method (the configuration is in the real method's title)."""
    if real is None or not spec.is_fg or spec == real:
        return spec.label.replace(" combined ", "\n") if spec.is_fg else spec.label
    control = control_name(spec)
    if control == "shuffled_decoder":
        return f"shuffled decoder s{spec.fg.shuffle_seed}"
    return "permuted gates" if control == "permuted_gates" else control or spec.label


def _overlays(store: ResultStore, experiment: str, split: str, path: Path, names: Sequence[str] | None = None) -> bool:
    """Image / TransMM / FG (real features) / its controls for images of every class and the most improved and
    degraded (SaCo) images among the stored gallery, classes by ``names`` where known; False if none stored."""
    images = store.images(split)
    specs = store.experiment_methods(experiment, split)
    groups = control_groups(specs)
    real = groups[-1].real if groups else None
    shown = [s for s in specs if s.is_transmm]
    for group in groups[-1:]:  # the last selected configuration (multi-layer) and one method per control
        shown += [group.real] + [controls[0] for controls in group.controls.values()]
    if not groups:
        shown += [s for s in specs if s.is_fg]
    stored = [i for i in store.experiment_ids(experiment, split) if i in images
              and all(store.attribution(split, s.key, i) is not None for s in shown)]
    captions = _gallery_ids(store, split, stored, next((s for s in specs if s.is_transmm), None), real)
    ids = list(captions)
    if not ids or not shown:
        return False
    info = store.scores(split, shown[0].key, ids)
    label_of = dict(zip(info["image_id"].tolist(), zip(info["label"].tolist(), info["prediction"].tolist())))
    fig = Figure(figsize=(2.0 * (1 + len(shown)) + 1.0, 2.2 * len(ids)), layout="constrained")
    axes = fig.subplots(len(ids), 1 + len(shown), squeeze=False)
    for r, image_id in enumerate(ids):
        image = images[image_id]
        label, prediction = label_of.get(image_id, (-1, -1))
        axes[r, 0].imshow(image, cmap="gray")
        caption = f"\n{captions[image_id]}" if captions[image_id] else ""
        axes[r, 0].set_title(f"image {image_id}\nclass {_class(label, names)}, predicted {_class(prediction, names)}"
                             f"{caption}", fontsize=7)
        for c, spec in enumerate(shown, start=1):
            attr = store.attribution(split, spec.key, image_id)
            lo, hi = float(attr.min()), float(attr.max())
            axes[r, c].imshow(image, cmap="gray")
            heat = axes[r, c].imshow((attr - lo) / (hi - lo) if hi > lo else np.zeros_like(attr), cmap="jet",
                                     alpha=0.5, vmin=0.0, vmax=1.0, interpolation="nearest",
                                     extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
            axes[r, c].set_title(_short_label(spec, real), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(heat, ax=axes, shrink=0.5, label="attribution (min–max per map)")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return True


def _class(label: int, names: Sequence[str] | None) -> str:
    return names[label] if names is not None and 0 <= label < len(names) else str(label)


def _n(c: Comparison) -> str:
    r = c.result
    return f"{r.n} seeds (SD {_fmt(r.sd)})" if r.unit == "seeds" else str(r.n)


def _comparisons_markdown(comparisons: Sequence[Comparison], title: str, family: str, margins: Sequence[str]) -> str:
    """The table of one Holm family: one row per comparison, a random control's seeds as untested rows beneath."""
    header = ["method", "vs", "metric", "n", "mean Δ [95 % CI]", "d_z", "p", "p Holm", "margin ±δ", "p TOST Holm",
              "outcome", "MDE α/m", "ρ maps"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        r = c.result
        lines.append("| " + " | ".join([
            c.configuration.label, c.title, metric_spec(c.metric).short, _n(c),
            f"{_fmt(r.delta)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]", _fmt(r.d_z, 2), format_p(r.p, marks=False),
            format_p(r.p_holm), _fmt(r.margin), format_p(r.p_tost_holm), f"**{c.outcome}**", _fmt(r.mde_holm),
            _fmt(c.agreement, 2)]) + " |")
        for seed, s in zip(c.references, c.per_seed):
            lines.append("| " + " | ".join(["", f"↳ {seed.label.rsplit(' ', 1)[-1]}", "", str(s.n),
                                            f"{_fmt(s.delta)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]", _fmt(s.d_z, 2)]
                                           + ["–"] * 7) + " |")
    n_tests = sum(math.isfinite(c.result.p) for c in comparisons)
    directions = "; ".join(f"{_and(m.short for m in metric_specs() if m.higher_is_better == higher)}: "
                           f"{'positive' if higher else 'negative'} Δ is better"
                           for higher in (True, False) if any(m.higher_is_better == higher for m in metric_specs()))
    lines += ["", f"Δ = method − reference on the same images (pairs with an undefined value dropped; n = pairs used), "
              f"on the stored scale (PF AUC in [0, 1]). {directions}. d_z = mean Δ / SD Δ. **{family}**: one Holm "
              f"family of {n_tests} tests at family-wise α = {ALPHA:g}; p is unadjusted (no stars), p Holm and p TOST Holm "
              "are Holm-adjusted over the family (stars *** < 0.001, ** < 0.01, * < 0.05 only there). Outcome: "
              "*better* / *worse* (p Holm < α), else *equivalent* (TOST: both one-sided tests at ±δ reject, p TOST "
              "Holm < α), else *inconclusive*. A random control (shuffled decoder, permuted gates) is a random "
              "effect: its row tests the per-seed mean differences (n = seeds, seeds − 1 df, SD between seeds); the "
              "↳ rows show each seed over the images, untested. MDE α/m: the smallest |mean Δ| detected with 80 % "
              f"power at α/m = {ALPHA:g}/{n_tests}, Holm's strictest threshold (the unadjusted MDE is in the CSV). ρ maps: "
              "median over images of the Spearman correlation between the two methods' patch maps (why two methods "
              "score alike).", "", "Equivalence margins δ (fixed from validation, before the test set is read):", "",
              *[f"* {line}" for line in margins]]
    return "\n".join(lines) + "\n"


def _margin_line(label: str, metric: str, margin: Margin) -> str:
    return f"{label}, {metric_spec(metric).short}: ±{_fmt(margin.value)} — {margin.origin}"


def _and(names: Iterable[str]) -> str:
    """"SaCo", "SaCo and FC", "SaCo, FC and X"."""
    names = list(names)
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def _comparisons_csv(comparisons: Sequence[Comparison], family: str, path: Path) -> None:
    fields = ["family", "method", "method_key", "against", "n_references", "metric", "unit", "n", "n_dropped", "delta",
              "ci_low", "ci_high", "sd", "d_z", "t", "p", "p_holm", "margin", "p_tost", "p_tost_holm", "outcome",
              "mde", "mde_holm", "alpha", "agreement", "per_seed_delta"]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for c in comparisons:
                r = c.result
                writer.writerow({"family": family, "method": c.configuration.label, "method_key": c.configuration.key,
                                 "against": c.against, "n_references": c.n_references, "metric": c.metric,
                                 "unit": r.unit, "n": r.n, "n_dropped": r.n_dropped, "delta": r.delta,
                                 "ci_low": r.ci_low, "ci_high": r.ci_high, "sd": r.sd, "d_z": r.d_z, "t": r.t, "p": r.p,
                                 "p_holm": r.p_holm, "margin": r.margin, "p_tost": r.p_tost,
                                 "p_tost_holm": r.p_tost_holm, "outcome": c.outcome, "mde": r.mde,
                                 "mde_holm": r.mde_holm, "alpha": ALPHA, "agreement": c.agreement,
                                 "per_seed_delta": ";".join(repr(e) for e in r.per_seed)})
    atomic_write(path, write)


def _comparisons_figure(comparisons: Sequence[Comparison], path: Path) -> None:
    """Paired Δ (FG real − reference) with 95 % CIs and each comparison's outcome, one panel per metric, a zero line."""
    specs = metric_specs()
    fig = Figure(figsize=(4.6 * len(specs), 1.6 + 0.32 * max(1, len(comparisons) // len(specs))), layout="constrained")
    axes = fig.subplots(1, len(specs), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, specs):
        rows = [c for c in comparisons if c.metric == metric.name]
        y = np.arange(len(rows))[::-1]
        deltas = np.array([c.result.delta for c in rows])
        err = np.array([[c.result.delta - c.result.ci_low for c in rows], [c.result.ci_high - c.result.delta for c in rows]])
        ax.errorbar(deltas, y, xerr=err, fmt="o", capsize=3, color="tab:blue")
        for c, row_y in zip(rows, y):
            ax.annotate(c.outcome, (1.0, row_y), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", fontsize=6, va="center")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{c.configuration.label.split(' ')[1]} vs {c.title}" for c in rows], fontsize=7)
        better = "→ FG better" if metric.higher_is_better else "← FG better"
        ax.set(title=f"{metric.title}: mean paired Δ, 95 % CI", xlabel=f"Δ (FG real − reference)  {better}")
    fig.suptitle(f"outcomes at family-wise α = {ALPHA:g} (Holm over the {len(comparisons)} claims)", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def _validation_summary(store: ResultStore) -> str | None:
    """Thesis Table 7.2 form: per variant its best single layer, and the best multi-layer configuration, ranked
    by the selection criterion (mean standardised paired effect vs TransMM on the validation images)."""
    rows = []
    for experiment in (SINGLE, MULTI):
        if (experiment, "val") not in store.experiments():
            continue
        best: dict[str, tuple[float, MethodSpec, dict[str, float]]] = {}
        for spec, effects in _candidate_effects(store, experiment, "val"):
            key = spec.fg.variant if experiment == SINGLE else "multi-layer"
            score = selection_score(effects)
            if key not in best or score > best[key][0]:
                best[key] = (score, spec, effects)
        for key, (score, spec, effects) in best.items():
            rows.append("| " + " | ".join([key, spec.label] + [_fmt(effects[m.name], 2) for m in metric_specs()]
                                          + [_fmt(score, 2)]) + " |")
    if not rows:
        return None
    header = ["variant", "best configuration"] + [f"d_z {m.short}" for m in metric_specs()] + ["mean d_z"]
    return "\n".join(["### Validation summary (best per variant)", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header), *rows, "",
                      "d_z: standardised paired effect vs TransMM (positive = better, sign flipped if lower is "
                      "better). The non-combined variants are ablations: reported, never carried to the test."]) + "\n"


def _figure(name: str, file: str, caption: str) -> list[str]:
    """A figure and its caption, as report lines."""
    return [f"![{name}]({file})", "", f"*{caption}*", ""]


def _directions() -> str:
    """"higher is better for SaCo and FC, lower for PF"."""
    specs = metric_specs()
    up = _and(m.short for m in specs if m.higher_is_better)
    down = _and(m.short for m in specs if not m.higher_is_better)
    return "; ".join(filter(None, [f"higher is better for {up}" if up else "", f"lower for {down}" if down else ""]))


def _sweep_figure(store: ResultStore, experiment: str, split: str, rows: Sequence[TableRow], out: Path,
                  name: str) -> list[str]:
    """The sweep experiment's figure with its caption (report lines); [] where it has none."""
    n = len(store.experiment_ids(experiment, split))
    path, file = out / f"{name}.png", f"{name}.png"
    if experiment == SINGLE:
        _layer_curves(rows, path)
        return _figure(experiment, file, f"Single-layer sweep on {n} {split} images: each metric's mean ± SE per gated "
                       f"block and score variant (variants offset along x), dashed: TransMM; {_directions()}.")
    if experiment == MULTI:
        _bars(rows, path)
        return _figure(experiment, file, f"Multi-layer configurations on {n} {split} images: mean ± SE per metric, "
                       f"dashed: TransMM; {_directions()}.")
    cells = grid_cells(store, experiment, split)
    if not cells:
        return []
    _heatmaps(cells, path)
    corner = (" The selected cell is a corner of the grid: the best setting may lie outside it."
              if is_grid_corner(cells) else "")
    return _figure(experiment, file, f"κ × c_max grid on {n} {split} images: the standardised paired effect d_z vs "
                   "TransMM per metric and their mean, the quantity selection ranks by (sign flipped where lower is "
                   f"better, so blue = better on every panel); the framed cell is the selected one.{corner}")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, pf_scale: str | None = None) -> Path:
    """Write every table and figure of the run into ``out_dir`` (default ``run_dir/report``).

    ``pf_scale``: "unit" or "patches" for the tables' PF column; default: the run's metric settings
    (``thesis-code`` preset: patches).

    Returns:
        Path of ``report.md``.

    Raises:
        FileNotFoundError: no store in ``run_dir``.
        ValueError: the store holds no experiment.
    """
    run_dir = Path(run_dir)
    if not (run_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"no {STORE_NAME} in {run_dir}; run `fgattr sweep` / `fgattr evaluate` first")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    with ResultStore(run_dir) as store:
        experiments = store.experiments()
        if not experiments:
            raise ValueError(f"the store in {run_dir} holds no experiment")
        invocations = store.invocations()
        config = invocations[-1][2] if invocations else {}
        pf_scale = pf_scale or _stored_pf_scale(config)
        protocol = stored_protocol(store)
        experiments = [(e, split) for e, split in experiments if not split.startswith("test@")]  # replicates: below
        families = {(e, split): (claim_comparisons(store, e, split, protocol),
                                 ranking_comparisons(store, e, split, protocol))
                    for e, split in experiments if e not in (SINGLE, MULTI, GRID)}
        pooled = pooled_comparisons(store, protocol)
        single = store.selection(SINGLE)
        sections = [f"# Results of {run_dir}", "",
                    *findings_section(*families.get((TEST, "test"), ([], None)),
                                      single.details.get("n_images") if single is not None else None, pooled),
                    *_header(config, pf_scale, store)]
        sections += _selections(store)
        summary = _validation_summary(store)
        if summary:
            sections += [summary, ""]
        names = [e for e, _ in experiments]
        test_rows: list[TableRow] = []
        for experiment, split in experiments:
            rows = experiment_table(store, experiment, split, pf_scale)
            if (experiment, split) == (TEST, "test"):
                test_rows = rows
            name = experiment if names.count(experiment) == 1 else f"{experiment}_{split}"
            table = _markdown(rows, f"{experiment} ({split}, {len(store.experiment_ids(experiment, split))} images)")
            table += _convergence_lines(store, rows, split)
            table += _skipped_baselines(config, rows) if experiment == TEST else ""
            atomic_write(out / f"{name}.md", lambda tmp: tmp.write_text(table))
            _csv(rows, experiment, split, out / f"{name}.csv")
            sections += [table, f"CSV: `{name}.csv`", ""]
            if (experiment, split) not in families:
                if any(row.method.is_fg for row in rows):
                    sections += _sweep_figure(store, experiment, split, rows, out, name)
                continue
            sections += _claims_and_ranking(*families[(experiment, split)], split, name, out)
            n = len(store.experiment_ids(experiment, split))
            if _overlays(store, experiment, split, out / f"overlays_{name}.png", config.get(CLASS_NAMES_KEY)):
                sections += _figure("overlays", f"overlays_{name}.png", f"Patch maps on {split} images of each class "
                                    "and on the images FG improved and degraded most (SaCo): the image, TransMM, the "
                                    f"selected FG configuration and one map per control, each map min–max scaled "
                                    f"(chosen among the {n} {split} images).")
        sections += replication_section(pooled, out)
        sections += validity_section(store, [m.name for m in _table_metrics(test_rows)])
        if invocations:
            command, started, _ = invocations[-1]
            sections += ["## Configuration (last command)", "",
                         f"`fgattr {command}` started at {started} (finished work it found in the store was reused, "
                         "not recomputed)", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    path = out / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(sections)))
    return path


def _claims_and_ranking(comparisons: Sequence[Comparison], ranking: Ranking | None, split: str, name: str,
                        out: Path) -> list[str]:
    """The claims family (table, CSV, figure, verdicts) and the ranking family (table, CSV, supported rankings) of a
    non-sweep experiment, written to ``out``; the report's sections."""
    sections = []
    if comparisons:
        margins = {(c.configuration.label, c.metric): Margin(c.result.margin, c.margin_origin) for c in comparisons}
        text = _comparisons_markdown(comparisons, f"Paired comparisons ({split})", "The claims family",
                                     [_margin_line(label, metric, m) for (label, metric), m in margins.items()])
        notes = identity_notes(comparisons)
        if notes:
            text += "\nReferences reported once:\n\n" + "\n".join(f"* {note}" for note in notes) + "\n"
        n_tests = sum(math.isfinite(c.result.p) for c in comparisons)
        verdicts = "\n".join([
            "### Verdicts", "",
            f"Claims family: Holm over {n_tests} tests at family-wise α = {ALPHA:g}; the intervals are unadjusted 95 % "
            "CIs and the outcomes read the Holm-adjusted p, so an interval that excludes 0 can still be inconclusive.",
            "", *[f"* {line}" for line in verdict_lines(comparisons)]]) + "\n"
        atomic_write(out / f"comparisons_{name}.md", lambda tmp: tmp.write_text(text + "\n" + verdicts))
        _comparisons_csv(comparisons, "claims", out / f"comparisons_{name}.csv")
        _comparisons_figure(comparisons, out / f"comparisons_{name}.png")
        n = max(c.result.n for c in comparisons)
        sections += [text, f"CSV: `comparisons_{name}.csv`", "", verdicts,
                     *_figure("paired differences", f"comparisons_{name}.png",
                              f"Mean paired difference (FG − reference) with its unadjusted 95 % CI on {n} {split} "
                              f"images (random controls: over their seeds), per metric; {_directions()}; the outcome "
                              f"beside each row at family-wise α = {ALPHA:g} (Holm over the {n_tests} claims).")]
    if ranking is not None:
        text = _comparisons_markdown(ranking.comparisons, f"Methods ranked ({split})", "The ranking family",
                                     [_margin_line("every comparison (the selected configuration's)", metric, m)
                                      for metric, m in ranking.margins.items()])
        text += "\n" + "\n".join(["### Rankings the tests support", "",
                                   *[f"* {line}" for line in ranking_lines(ranking)]]) + "\n"
        atomic_write(out / f"ranking_{name}.md", lambda tmp: tmp.write_text(text))
        _comparisons_csv(ranking.comparisons, "ranking", out / f"ranking_{name}.csv")
        sections += [text, f"CSV: `ranking_{name}.csv`", ""]
    return sections


#: what the report's methods are (the metrics are defined by their specs: ``MetricSpec.definition``)
METHOD_DEFINITIONS = [
    "**FG (real SAE)**, the method: gates from s_t = Σ_k f_tk⟨g_t, d_k⟩ (SAE codes f, decoder rows d, gradient g of the "
    "target logit at the gated block's output) rescale TransMM's attention columns.",
    "**Controls** (same layers, κ, c_max and gate formula; only the score changes): *shuffled decoder* — decoder rows "
    "permuted, codes kept; *grad_input* — ⟨g_t, x_t⟩, no SAE; *grad_input_centered* — ⟨g_t, x_t − b_dec⟩, what the "
    "combined score equals for a perfect SAE; *bias_projection* — −⟨g_t, b_dec⟩, one direction for every token; "
    "*permuted gates* — the real gates shuffled over patch positions. FG better than all of them credits the SAE's "
    "features; a no-SAE control equivalent to FG shows the gain does not need them.",
]


def _stored_metrics(config: dict) -> dict:
    """The metric settings of a stored run configuration ({} if none)."""
    return (config.get("evaluation") or {}).get("metrics") or {}


def _stored_pf_scale(config: dict) -> str:
    metrics = _stored_metrics(config)
    return "patches" if metrics.get("preset") == "thesis-code" else metrics.get("pf_scale", "unit")


def _header(config: dict, pf_scale: str, store: ResultStore) -> list[str]:
    """The run's own description: data, model, SAEs (from the configuration's ``header``, [name, text] pairs, if
    the caller stored one), the evaluated images with the model's accuracy on them (from the store), metric settings
    (those set; a preset by name) and definitions."""
    lines = ["## Setup", ""]
    header = config.get("header") or []
    for key, text in header.items() if isinstance(header, dict) else header:
        lines.append(f"* **{key}**: {text}")
    evaluated = evaluated_images_line(store, ("test", "val"), config.get(CLASS_NAMES_KEY))
    if evaluated:
        lines.append(f"* **evaluated images**: {evaluated}")
    metrics = {k: v for k, v in _stored_metrics(config).items() if v is not None and v != {}}
    if metrics:
        lines.append("* **metric settings**: " + ", ".join(f"{k} = {v}" for k, v in sorted(metrics.items())))
    lines.append(f"* **PF AUC scale**: {pf_scale} ({'× number of patches' if pf_scale == 'patches' else 'in [0, 1]'})")
    extra = [metric_spec(name) for name in metrics.get("extra", ()) if name in METRICS]
    definitions = [m.definition for m in (*metric_specs(), *extra) if m.definition] + METHOD_DEFINITIONS
    return lines + ["", *[f"* {d}" for d in definitions], ""]


def _selections(store: ResultStore) -> list[str]:
    selections = [s for s in (store.selection(n) for n in (SINGLE, MULTI, GRID)) if s is not None]
    if not selections:
        return []
    lines = ["## Selections on validation", "", f"Rule: {selections[0].rule}.", ""]
    for s in selections:
        chosen = s.details["candidates"][s.method_key]
        effect = (f"mean standardised effect {_fmt(chosen['mean_dz'], 2)}, " if "mean_dz" in chosen else "")
        lines.append(f"* {s.name}: **{chosen['label']}** ({effect}mean % improvement {_fmt(chosen['mean_pct'], 2)}; "
                     f"{s.details.get('n_images', '?')} images){_worse_note(chosen)}")
    return lines + [""]


def _worse_note(chosen: dict) -> str:
    """' — worse than TransMM on validation …' for a selected candidate whose mean standardised effect is negative
    (the best of the candidates; the protocol still carries it to the test)."""
    effect = chosen.get("mean_dz", math.nan)
    if not (isinstance(effect, (int, float)) and math.isfinite(effect) and effect < 0):
        return ""
    return (f" — the best candidate is worse than TransMM on validation (mean d_z {effect:.2f}); it is carried on as "
            "the protocol fixes, expect no gain on test")


def summary_text(run_dir: str | Path) -> str:
    """What a run found, as printed at its end: the validation selections, the test table, the paired comparisons
    and the verdicts, then the ranking (from the files :func:`write_report` wrote)."""
    run_dir = Path(run_dir)
    with ResultStore(run_dir) as store:
        selections = [s for s in (store.selection(n) for n in (SINGLE, MULTI, GRID)) if s is not None]
    parts = ["Selected on validation (mean standardised paired effect vs TransMM):"]
    parts += [f"  {s.name}: {s.details['candidates'][s.method_key]['label']}"
              f"{_worse_note(s.details['candidates'][s.method_key])}" for s in selections]
    for name in (TEST, f"comparisons_{TEST}", f"ranking_{TEST}"):
        path = run_dir / "report" / f"{name}.md"
        if path.is_file():
            parts += ["", path.read_text()]
    return "\n".join(parts)
