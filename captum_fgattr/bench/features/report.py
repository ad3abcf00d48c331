"""Files of a feature analysis: ``features.md``, ``features.csv``, case panels and prototype grids.

Figures follow the thesis's Figures 7.11–7.18: a case panel row per image (image, TransMM, FG-TransMM,
Δ share, each with the case patches boxed: green = booster, red = suppressor, numbered as in the legend),
and per headline feature a grid of its prototypes with the feature's activation heatmap over each.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch.utils.data import Dataset

from captum_fgattr.bench.evaluate import display_image
from captum_fgattr.bench.features.findings import GROUPS, FeatureAnalysis, FeatureStats, PatchFinding
from captum_fgattr.bench.features.prototypes import Prototypes
from captum_fgattr.bench.metrics import MetricSpec, metric_specs
from captum_fgattr.files import atomic_write

__all__ = ["write_feature_report"]

_COLORS = {"booster": "lime", "suppressor": "red", "none": "white"}


def _delta_title(spec: MetricSpec) -> str:
    """"ΔSaCo", or "ΔPF (−)" for a lower-is-better metric (its delta is sign flipped)."""
    return f"Δ{spec.short}" + ("" if spec.higher_is_better else " (−)")


def _image(dataset: Dataset, image_id: int) -> np.ndarray:
    return display_image(torch.as_tensor(dataset[image_id][0])).numpy()


def _overlay(ax: Axes, image: np.ndarray, values: np.ndarray | None, cmap: str = "jet", symmetric: bool = False,
             active_only: bool = False) -> None:
    """``image`` (H, W, 3) with a (gh, gw) patch map on top, stretched over the pixels.

    ``symmetric``: colour scale centred on 0; ``active_only``: patches <= 0 left uncoloured, scale from 0.
    """
    ax.imshow(image)
    if values is not None:
        extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
        bound = float(np.abs(values).max()) or 1.0
        lo = -bound if symmetric else 0.0 if active_only else float(values.min())
        hi = bound if symmetric or active_only else max(float(values.max()), lo + 1e-12)
        shown = np.ma.masked_less_equal(values, 0.0) if active_only else values
        ax.imshow(shown, cmap=cmap, alpha=0.55, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    ax.axis("off")


def _boxes(ax: Axes, rows: list[PatchFinding], grid: tuple[int, int], size: tuple[int, int]) -> None:
    ph, pw = size[0] / grid[0], size[1] / grid[1]
    for n, row in enumerate(rows, start=1):
        r, c = divmod(row.patch, grid[1])
        ax.add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, lw=1.5, edgecolor=_COLORS[row.sign]))
        ax.text(c * pw, r * ph, str(n), color=_COLORS[row.sign], fontsize=6, va="top")


def _label(row: PatchFinding) -> str:
    if row.layer < 0:
        return f"patch {row.patch} (Δ {row.delta:+.3f}): no contributing feature"
    return (f"patch {row.patch} (Δ {row.delta:+.3f}): L{row.layer} f{row.feature} {row.sign} "
            f"(z {row.z:+.2f}, gate {row.gate:.2f})")


def _case_figure(result: FeatureAnalysis, group: str, dataset: Dataset, shares: dict, path: Path,
                 name_of: Callable[[int], str]) -> bool:
    cases = [c for c in result.cases if c.group == group]
    if not cases:
        return False
    fig = Figure(figsize=(13, 2.6 * len(cases)))
    axes = fig.subplots(len(cases), 5, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.6]})
    for r, case in enumerate(cases):
        image, rows = _image(dataset, case.image_id), result.findings[case.image_id]
        tm, fg = shares[case.image_id]
        panels = [(None, "image", "jet", False), (tm, "TransMM", "jet", False), (fg, "FG-TransMM", "jet", False),
                  (fg - tm, "Δ share (FG − TransMM)", "RdBu_r", True)]
        for ax, (values, title, cmap, symmetric) in zip(axes[r, :4], panels):
            _overlay(ax, image, values, cmap, symmetric)
            _boxes(ax, rows, result.grid, image.shape[:2])
            ax.set_title(title if title != "image" else f"image {case.image_id} ({name_of(case.target)})", fontsize=8)
        text = [f"composite {case.composite:+.2f}",
                ", ".join(f"{_delta_title(m)} {case.deltas[m.name]:+.3f}" for m in metric_specs()), ""]
        text += [f"{n}. {_label(row)}" for n, row in enumerate(rows, start=1)]
        axes[r, 4].axis("off")
        axes[r, 4].text(0, 0.5, "\n".join(text), fontsize=7, va="center", family="monospace")
    fig.suptitle(f"Most {group} images: {result.method.label}", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return True


def _prototype_figure(proto: Prototypes, stats: FeatureStats, reference: Dataset, path: Path,
                      name_of: Callable[[int], str]) -> None:
    n = max(len(proto.image_ids), 1)
    cols = min(n, 5)
    fig = Figure(figsize=(2.2 * cols, 2.4 * math.ceil(n / cols) + 0.4))
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image_id, value, act in zip(axes.flat, proto.image_ids, proto.activations, proto.maps):
        _overlay(ax, _image(reference, int(image_id)), act, cmap="autumn_r", active_only=True)
        ax.set_title(f"#{image_id} ({name_of(int(reference[int(image_id)][1]))}) max {value:.2f}", fontsize=7)
    if len(proto.image_ids) == 0:
        axes.flat[0].text(0.5, 0.5, "never active on the reference split", ha="center", fontsize=8)
    fig.suptitle(f"L{stats.layer} f{stats.feature}: {stats.role}, {stats.boosts} boosts / {stats.suppressions} "
                 "suppressions", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _feature_table(stats: list[FeatureStats], files: dict[tuple[int, int], str]) -> list[str]:
    lines = ["| feature | layer | role | boosts | suppressions | share | headline patches | images | per class "
             "(boosts/suppressions) | prototypes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in stats:
        per_class = ", ".join(f"{k}: {u}/{d}" for k, (u, d) in sorted(s.per_class.items()))
        lines.append(f"| {s.feature} | {s.layer} | {s.role} | {s.boosts} | {s.suppressions} | {100 * s.share:.0f}% | "
                     f"{s.headlines} | {s.images} | {per_class} | [grid]({files[(s.layer, s.feature)]}) |")
    return lines


def write_feature_report(result: FeatureAnalysis, dataset: Dataset, reference: Dataset, out_dir: str | Path,
                         name_of: Callable[[int], str], reference_split: str) -> dict[str, Path]:
    """Write the analysis into ``out_dir``; returns {name: path} of every file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    shares = {i: (tm.reshape(result.grid), fg.reshape(result.grid)) for i, (tm, fg) in result.shares.items()}
    for group in GROUPS:
        path = out / f"case_{group}.png"
        if _case_figure(result, group, dataset, shares, path, name_of):
            files[f"case_{group}"] = path
    by_key = {(s.layer, s.feature): s for s in result.features}
    proto_files = {}
    for key, proto in result.prototypes.items():
        path = out / f"prototypes_L{key[0]}_f{key[1]}.png"
        _prototype_figure(proto, by_key[key], reference, path, name_of)
        files[path.stem] = path
        proto_files[key] = path.name

    names = [m.name for m in metric_specs()]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["group", "image_id", "class", "composite", *(f"delta_{m}" for m in names), "rank",
                             "patch", "row", "col", "transmm_share", "fg_share", "delta_share", "layer", "feature",
                             "sign", "contribution", "z", "gate"])
            for case in result.cases:
                for rank, row in enumerate(result.findings[case.image_id], start=1):
                    r, c = divmod(row.patch, result.grid[1])
                    writer.writerow([case.group, case.image_id, name_of(case.target), case.composite,
                                     *(case.deltas[m] for m in names), rank, row.patch, r, c, row.transmm, row.fg,
                                     row.delta, row.layer, row.feature, row.sign, row.contribution, row.z, row.gate])
    atomic_write(out / "features.csv", write)
    files["features_csv"] = out / "features.csv"

    lines = [f"# SAE feature case studies: {result.method.label}", "",
             f"Split `{result.split}`; prototypes from `{reference_split}`. Composite improvement per image: mean "
             f"over {', '.join(m.short for m in metric_specs())} of FG − TransMM (sign flipped where lower is "
             "better), each divided by the metric's spread (standard "
             "deviation of its per-image values over both methods); case patches: largest |Δ| between the maps as "
             "shares of their sums; headline feature: largest contribution f·⟨g, d⟩ in robust-z units of its layer; "
             "booster = positive contribution (raises the gate), suppressor = negative. A feature's cases are the "
             "analysed patches where it is among its layer's top contributors.", ""]
    for group in GROUPS:
        cases = [c for c in result.cases if c.group == group]
        lines += [f"## Most {group} images", ""]
        if not cases:
            lines += [f"No image is {group} by FG-TransMM.", ""]
            continue
        lines += ["| image | class | composite | " + " | ".join(_delta_title(m) for m in metric_specs())
                  + " | case patches |", "|---|---|---|" + "---|" * len(names) + "---|"]
        for c in cases:
            patches = "; ".join(_label(row) for row in result.findings[c.image_id])
            lines.append(f"| {c.image_id} | {name_of(c.target)} | {c.composite:+.2f} | "
                         + " | ".join(f"{c.deltas[m]:+.3f}" for m in names) + f" | {patches} |")
        lines += ["", f"![case_{group}](case_{group}.png)", ""]
    for role in ("suppressor", "booster"):
        top = result.top(role, 10)
        lines += [f"## Top {role}s", ""]
        lines += (_feature_table(top, proto_files) if top else [f"No {role} among the headline features."]) + [""]
    mixed = [s for s in result.features if s.role == "mixed"]
    if mixed:
        lines += ["## Features with mixed roles", "", *_feature_table(mixed, proto_files), ""]
    lines += ["Per-patch rows: `features.csv`.", ""]
    atomic_write(out / "features.md", lambda tmp: tmp.write_text("\n".join(lines)))
    files["features_md"] = out / "features.md"
    return files
