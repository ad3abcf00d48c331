"""Tables and figures of a run, read from its store only (thesis Tables 7.2/7.3 and Chapter 7 figures).

Per experiment: ``{experiment}.md`` / ``{experiment}.csv`` (method, layers, SaCo ↑, FC ↑, PF ↓ as mean ± SE,
% improvement over TransMM, Welch and paired p-values with stars, NaN SaCo counts), and figures:
``single_layer.png`` (per-layer curves per variant, TransMM line), ``multi_layer.png`` (bars),
``kappa_cmax.png`` (heatmaps of % improvement), ``overlays_{experiment}.png`` (image / TransMM / FG, for
the test and any other non-sweep experiment).
``report.md`` gathers the tables, the validation selections and the figures.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from captum_fgattr.bench.experiments import GRID, MULTI, SINGLE
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.stats import Summary, TTest, paired_ttest, percent_improvement, stars, summarize, welch_ttest
from captum_fgattr.bench.store import HIGHER_IS_BETTER, METRICS, STORE_NAME, ResultStore

__all__ = ["MetricCell", "TableRow", "experiment_table", "write_report", "PF_SCALES"]

TITLES = {"saco": "SaCo ↑", "fc": "FC ↑", "pf_auc": "PF ↓"}
PF_SCALES = ("unit", "patches")


@dataclass(frozen=True)
class MetricCell:
    """One metric of one method in a table."""

    summary: Summary  # mean ± SE over the experiment's images (NaN dropped, counted)
    pct: float  # % improvement over TransMM (PF sign flipped); NaN for TransMM itself / no baseline
    welch: TTest  # vs TransMM (NaN fields for TransMM itself)
    paired: TTest  # vs TransMM on the same image ids


@dataclass(frozen=True)
class TableRow:
    method: MethodSpec  # with the label registered in the experiment
    layers: str  # gated layers ("–" for non-FG methods)
    n_images: int
    cells: dict[str, MetricCell]  # metric -> cell, keys METRICS


def _layers(spec: MethodSpec) -> str:
    return ",".join(map(str, spec.params["layers"])) if spec.name == "fg" else "–"


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
    base = next((_columns(store, split, s, ids, pf_scale) for s in specs if s.name == "transmm"), None)
    rows = []
    for spec in specs:
        columns = _columns(store, split, spec, ids, pf_scale)
        cells = {}
        for metric in METRICS:
            values = columns[metric]
            summary = summarize(values)
            if base is None or spec.name == "transmm":
                none = TTest(math.nan, math.nan, math.nan, 0)
                cells[metric] = MetricCell(summary, math.nan, none, none)
                continue
            _, mine, theirs = np.intersect1d(columns["image_id"], base["image_id"], return_indices=True)
            cells[metric] = MetricCell(
                summary,
                percent_improvement(summary.mean, summarize(base[metric]).mean, HIGHER_IS_BETTER[metric]),
                welch_ttest(values, base[metric]),
                paired_ttest(values[mine], base[metric][theirs]),
            )
        rows.append(TableRow(spec, _layers(spec), len(columns["image_id"]), cells))
    return rows


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _p(test: TTest) -> str:
    return "–" if not math.isfinite(test.p) else f"{test.p:.2g}{stars(test.p)}"


def _markdown(rows: Sequence[TableRow], title: str) -> str:
    header = ["Method", "Layers", "n"]
    for metric in METRICS:
        header += [TITLES[metric], "%", "p Welch", "p paired"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.method.label, row.layers, str(row.n_images)]
        for metric in METRICS:
            c = row.cells[metric]
            pct = "–" if not math.isfinite(c.pct) else f"{c.pct:+.1f}%"
            cells += [f"{_fmt(c.summary.mean)} ± {_fmt(c.summary.se)}", pct, _p(c.welch), _p(c.paired)]
        lines.append("| " + " | ".join(cells) + " |")
    nan = [(row.method.label, row.cells["saco"].summary.n_nan) for row in rows if row.cells["saco"].summary.n_nan]
    lines += ["", "Mean ± standard error; % = improvement over TransMM (PF sign flipped); p: two-sided t-tests vs "
              "TransMM (*** p<0.001, ** p<0.01, * p<0.05)."]
    if nan:
        lines.append("Undefined SaCo (excluded): " + ", ".join(f"{label}: {n}" for label, n in nan) + ".")
    invariant = [row.method.label for row in rows if row.method.name == "fg" and row.method.params.get("shuffle_seed")
                 is not None and row.method.params.get("variant", "combined") != "combined"]
    if invariant:
        lines.append("The shuffled-decoder control cannot change the activation and gradient variants (their scores "
                     "do not pair f_k with d_k), so these rows equal the real-SAE rows by construction: "
                     + ", ".join(invariant) + ".")
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[TableRow], experiment: str, split: str, path: Path) -> None:
    fields = ["experiment", "split", "method", "method_key", "layers", "n_images"]
    for m in METRICS:
        fields += [f"{m}_{k}" for k in ("mean", "se", "n", "n_nan", "pct", "t_welch", "p_welch", "t_paired", "p_paired")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            record: dict[str, object] = {"experiment": experiment, "split": split, "method": row.method.label,
                                         "method_key": row.method.key, "layers": row.layers, "n_images": row.n_images}
            for m, c in row.cells.items():
                record.update({f"{m}_mean": c.summary.mean, f"{m}_se": c.summary.se, f"{m}_n": c.summary.n,
                               f"{m}_n_nan": c.summary.n_nan, f"{m}_pct": c.pct, f"{m}_t_welch": c.welch.t,
                               f"{m}_p_welch": c.welch.p, f"{m}_t_paired": c.paired.t, f"{m}_p_paired": c.paired.p})
            writer.writerow(record)


def _baseline(rows: Sequence[TableRow]) -> TableRow | None:
    return next((row for row in rows if row.method.name == "transmm"), None)


def _baseline_line(ax: Axes, base: TableRow | None, metric: str) -> None:
    if base is not None:
        ax.axhline(base.cells[metric].summary.mean, color="black", linestyle="--", label="TransMM")


def _layer_curves(rows: Sequence[TableRow], path: Path) -> None:
    fg = [row for row in rows if row.method.name == "fg" and len(row.method.params["layers"]) == 1]
    fig = Figure(figsize=(5 * len(METRICS), 3.6))
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS):
        for variant in dict.fromkeys(row.method.params["variant"] for row in fg):
            series = sorted((row.method.params["layers"][0], row.cells[metric].summary) for row in fg
                            if row.method.params["variant"] == variant)
            ax.errorbar([x for x, _ in series], [s.mean for _, s in series], yerr=[s.se for _, s in series],
                        marker="o", capsize=3, label=variant)
        _baseline_line(ax, _baseline(rows), metric)
        ax.set_xticks(sorted({row.method.params["layers"][0] for row in fg}))
        ax.set(title=TITLES[metric], xlabel="gated layer (0-based block)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _bars(rows: Sequence[TableRow], path: Path) -> None:
    fg = [row for row in rows if row.method.name == "fg"]
    fig = Figure(figsize=(5 * len(METRICS), 3.6))
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS):
        x = np.arange(len(fg))
        ax.bar(x, [row.cells[metric].summary.mean for row in fg], yerr=[row.cells[metric].summary.se for row in fg],
               capsize=3, color="tab:blue")
        ax.set_xticks(x, [f"[{row.layers}]" for row in fg], rotation=30)
        _baseline_line(ax, _baseline(rows), metric)
        ax.set(title=TITLES[metric], xlabel="gated layers")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _heatmaps(rows: Sequence[TableRow], path: Path) -> None:
    fg = [row for row in rows if row.method.name == "fg"]
    kappas = sorted({row.method.params["kappa"] for row in fg})
    c_maxes = sorted({row.method.params["c_max"] for row in fg})
    panels = {TITLES[m]: {(r.method.params["kappa"], r.method.params["c_max"]): r.cells[m].pct for r in fg}
              for m in METRICS}
    panels["mean of the three"] = {k: float(np.mean([panels[TITLES[m]][k] for m in METRICS])) for k in panels[TITLES["saco"]]}
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (title, values) in zip(axes, panels.items()):
        grid = np.array([[values.get((k, c), math.nan) for c in c_maxes] for k in kappas])
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, _fmt(v, 1), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(c_maxes)), [f"{c:g}" for c in c_maxes])
        ax.set_yticks(range(len(kappas)), [f"{k:g}" for k in kappas])
        ax.set(title=f"{title} (% vs TransMM)", xlabel="c_max", ylabel="κ")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _overlays(store: ResultStore, experiment: str, split: str, path: Path) -> bool:
    """Image / TransMM / FG (real features) overlays of the stored gallery images; False if none stored."""
    images = store.images(split)
    specs = [s for s in store.experiment_methods(experiment, split)
             if s.name == "transmm" or (s.name == "fg" and "shuffle_seed" not in s.params)]
    ids = [i for i in store.experiment_ids(experiment, split) if i in images]
    ids = [i for i in ids if all(store.attribution(split, s.key, i) is not None for s in specs)]
    if not ids or not specs:
        return False
    fig = Figure(figsize=(2.4 * (1 + len(specs)), 2.4 * len(ids)))
    axes = fig.subplots(len(ids), 1 + len(specs), squeeze=False)
    for r, image_id in enumerate(ids):
        image = images[image_id]
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(f"image {image_id}", fontsize=8)
        for c, spec in enumerate(specs, start=1):
            attr = store.attribution(split, spec.key, image_id)
            lo, hi = float(attr.min()), float(attr.max())
            axes[r, c].imshow(image)
            axes[r, c].imshow((attr - lo) / (hi - lo) if hi > lo else np.zeros_like(attr), cmap="jet", alpha=0.5,
                              extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5), interpolation="nearest")
            axes[r, c].set_title(spec.label, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, pf_scale: str = "unit") -> Path:
    """Write every table and figure of the run into ``out_dir`` (default ``run_dir/report``).

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
    sections = [f"# Results of {run_dir}", "", f"PF AUC scale: {pf_scale}.", ""]
    with ResultStore(run_dir) as store:
        experiments = store.experiments()
        if not experiments:
            raise ValueError(f"the store in {run_dir} holds no experiment")
        names = [e for e, _ in experiments]
        for experiment, split in experiments:
            rows = experiment_table(store, experiment, split, pf_scale)
            name = experiment if names.count(experiment) == 1 else f"{experiment}_{split}"
            table = _markdown(rows, f"{experiment} ({split}, {len(store.experiment_ids(experiment, split))} images)")
            (out / f"{name}.md").write_text(table)
            _csv(rows, experiment, split, out / f"{name}.csv")
            sections += [table, f"CSV: `{name}.csv`", ""]
            figure = {SINGLE: _layer_curves, MULTI: _bars, GRID: _heatmaps}.get(experiment)
            if figure is not None and any(row.method.name == "fg" for row in rows):
                figure(rows, out / f"{name}.png")
                sections += [f"![{experiment}]({name}.png)", ""]
            if figure is None and _overlays(store, experiment, split, out / f"overlays_{name}.png"):
                sections += [f"![overlays]({f'overlays_{name}.png'})", ""]
        selections = [store.selection(n) for n in (SINGLE, MULTI, GRID)]
        selections = [s for s in selections if s is not None]
        if selections:
            sections += ["## Selections on validation", "", f"Rule: {selections[0].rule}.", ""]
            for s in selections:
                chosen = s.details["candidates"][s.method_key]
                sections.append(f"* {s.name}: **{chosen['label']}** (mean % improvement {_fmt(chosen['mean_pct'], 2)})")
            sections.append("")
        invocations = store.invocations()
        if invocations:
            command, started, config = invocations[-1]
            sections += ["## Configuration (last command)", "", f"`{command}` at {started}", "", "```json",
                         json.dumps(config, indent=2, sort_keys=True), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path
