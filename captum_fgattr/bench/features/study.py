"""Feature case studies (thesis §7.4.5): which SAE features boost or suppress which patches, with prototypes.

Over an evaluated run (per-image rows of TransMM and a real-SAE FG-TransMM configuration in the store):

1. **Composite improvement** per image: the mean over SaCo, FC and PF of the per-image difference
   FG − TransMM (PF sign flipped, so positive = FG better), each divided by that metric's spread: the
   standard deviation of its per-image values over both methods on the analysed images (1 when that is 0).
   Metrics that are NaN for an image (undefined SaCo) are left out of its mean.
2. The ``n_images`` most **improved** (composite > 0) and most **degraded** (composite < 0) images.
3. For those images only, TransMM and FG-TransMM are recomputed in one batch, FG with ``top_features``
   recording, so nothing big is stored. Both maps are made comparable as shares (each divided by its sum
   over patches); the ``n_patches`` patches with the largest |Δ share| are the case's patches.
4. At each such patch, the **headline feature** is the (layer, feature) whose contribution f_k·⟨g, d_k⟩,
   in robust-z units of its layer (divided by 1.4826·MAD + 1e-8 of that layer's scores on the image, the
   normalisation the gate applies), is largest in the direction its layer's gate moved the patch (up for a
   gate > 1, down for < 1), over the gated layers; if no contribution goes that way, the largest |z|. Sign:
   + is a **booster** (raises the score, hence the gate), − a **suppressor**.
5. Per headline feature, **cases**: the (image, patch) pairs of the analysed images where it is among
   the ``top_features`` contributors of its layer's score, split into boosts and suppressions, per class.
6. **Prototypes**: its top activating images on a reference split (:mod:`.prototypes`, cached).

Outputs (``out_dir``): ``features.md``, ``features.csv`` (one row per case patch), ``case_improved.png``,
``case_degraded.png`` and ``prototypes_L{layer}_f{feature}.png``
(:mod:`.report`). :func:`analyze_run` does it all for a run folder, with the model, data and SAEs its stored
configuration names (:mod:`.inputs`); ``fgattr features --run-dir D`` runs it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_fgattr.adapters import get_adapter
from captum_fgattr.attr import FeatureGradientTransMM, GatedLayer, TransMM
from captum_fgattr.bench.experiments import GRID, MULTI, SINGLE, TEST, control_groups, control_name, fg_spec_of
from captum_fgattr.bench.features.findings import Case, FeatureAnalysis, FeatureStats, PatchFinding
from captum_fgattr.bench.features.inputs import load_run_components
from captum_fgattr.bench.features.prototypes import FeatureKey, feature_prototypes
from captum_fgattr.bench.features.report import write_feature_report
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.metrics import metric_names, metric_specs
from captum_fgattr.bench.store import STORE_NAME, ResultStore
from captum_fgattr.gates import robust_center_scale
from captum_fgattr.sae import SparseAutoencoder

__all__ = ["composite_improvement", "rank_cases", "attribution_shares", "patch_findings", "feature_cases",
           "select_fg_method", "analyze_features", "analyze_run", "CACHE_FOLDER"]

CACHE_FOLDER = "feature_cache"  # prototype cache inside the run folder
def composite_improvement(fg: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-image composite improvement of FG over TransMM.

    Args:
        fg, base: {metric: (n,) per-image values} of every registered metric, the same images in the same order.

    Returns:
        ((n,) composite, NaN where every metric is NaN; {metric: (n,) FG − TransMM, sign flipped if lower is
        better}).
    """
    deltas, scaled = {}, []
    for spec in metric_specs():
        metric = spec.name
        a, b = np.asarray(fg[metric], dtype=float), np.asarray(base[metric], dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"{metric}: FG has {a.shape} values, TransMM {b.shape}; expected the same images")
        delta = (a - b) if spec.higher_is_better else (b - a)
        both = np.concatenate([a, b])
        spread = float(np.nanstd(both)) if np.isfinite(both).any() else 0.0
        deltas[metric] = delta
        scaled.append(delta / (spread if spread > 0 else 1.0))
    stacked = np.stack(scaled)
    valid = np.isfinite(stacked)
    composite = np.where(valid.any(0), np.where(valid, stacked, 0.0).sum(0) / np.maximum(valid.sum(0), 1), np.nan)
    return composite, deltas


def rank_cases(image_ids: Sequence[int], composite: np.ndarray, n: int) -> dict[str, list[int]]:
    """Positions of the ``n`` most improved (composite > 0, best first) and degraded (< 0, worst first) images."""
    order = np.argsort(-np.nan_to_num(composite, nan=0.0), kind="stable")
    improved = [int(i) for i in order if composite[i] > 0][:n]
    degraded = [int(i) for i in order[::-1] if composite[i] < 0][:n]
    return {"improved": improved, "degraded": degraded}


def attribution_shares(attr: Tensor) -> Tensor:
    """(B, P) -> (B, P) each map divided by its sum over patches (TransMM maps are non-negative)."""
    attr = attr.float()
    return attr / attr.sum(dim=1, keepdim=True).clamp_min(torch.finfo(attr.dtype).tiny)


def patch_findings(transmm: Tensor, fg: Tensor, gated: Mapping[int, GatedLayer], image_ids: Sequence[int],
                   n_patches: int) -> dict[int, list[PatchFinding]]:
    """The ``n_patches`` largest-|Δ share| patches of each image and their headline features.

    Args:
        transmm, fg: (B, P) raw patch attributions.
        gated: FG's :attr:`~FeatureGradientTransMM.last_gated_layers` (with ``top_features``).
        image_ids: (B,) ids of the images.
    """
    B, P = transmm.shape
    if not gated or any(g.top_features is None for g in gated.values()):
        raise ValueError("gated layers carry no top features; run FeatureGradientTransMM with top_features > 0")
    shares = [attribution_shares(transmm), attribution_shares(fg)]
    delta = shares[1] - shares[0]
    chosen = delta.abs().topk(min(n_patches, P), dim=1).indices  # (B, n)
    layers = sorted(gated)
    z = torch.cat([gated[l].top_contributions.float() / robust_center_scale(gated[l].scores.float())[1][..., None] for l in layers], dim=2)
    contributions = torch.cat([gated[l].top_contributions.float() for l in layers], dim=2)  # (B, T, L·n)
    features = torch.cat([gated[l].top_features for l in layers], dim=2)
    width = [gated[l].top_features.shape[-1] for l in layers]
    layer_of = torch.cat([torch.full((n,), l) for l, n in zip(layers, width)])
    # direction each layer's gate moved the patch: +1 raised (> 1), -1 lowered, 0 neutral
    direction = torch.cat([torch.sign(gated[l].gates.float() - 1)[..., None].expand(-1, -1, n) for l, n in zip(layers, width)], dim=2)
    aligned = torch.where(contributions != 0, z * direction, torch.zeros_like(z))  # > 0: acts the way its gate went
    out: dict[int, list[PatchFinding]] = {}
    for b, image_id in enumerate(image_ids):
        rows = []
        for t in chosen[b].tolist():
            j = int(aligned[b, t].argmax()) if bool((aligned[b, t] > 0).any()) else int(z[b, t].abs().argmax())
            has = bool(contributions[b, t, j] != 0)
            layer = int(layer_of[j]) if has else -1
            rows.append(PatchFinding(
                int(image_id), t, float(shares[0][b, t]), float(shares[1][b, t]), layer,
                int(features[b, t, j]) if has else -1, float(contributions[b, t, j]) if has else 0.0,
                float(z[b, t, j]) if has else 0.0, float(gated[layer].gates[b, t]) if has else 1.0))
        out[int(image_id)] = rows
    return out


def feature_cases(gated: Mapping[int, GatedLayer], keys: Sequence[FeatureKey], classes: Sequence[str]) -> dict[FeatureKey, tuple[int, int, int, dict[str, tuple[int, int]]]]:
    """Boost / suppression counts of ``keys`` over every patch where they are top contributors.

    Args:
        gated: FG's gated layers for B images (with ``top_features``).
        classes: (B,) class name of each image.

    Returns:
        {(layer, feature): (boosts, suppressions, images with a case, {class: (boosts, suppressions)})}.
    """
    out = {}
    for layer, feature in keys:
        g = gated[layer]
        hit = (g.top_features == feature) & (g.top_contributions != 0)  # (B, T, n)
        boost = (hit & (g.top_contributions > 0)).flatten(1).sum(1)  # (B,)
        suppress = (hit & (g.top_contributions < 0)).flatten(1).sum(1)
        per_class: dict[str, tuple[int, int]] = {}
        for name, up, down in zip(classes, boost.tolist(), suppress.tolist()):
            if up or down:
                old = per_class.get(name, (0, 0))
                per_class[name] = (old[0] + up, old[1] + down)
        out[(layer, feature)] = (int(boost.sum()), int(suppress.sum()), int(((boost + suppress) > 0).sum()), per_class)
    return out


def select_fg_method(store: ResultStore, split: str = "test", experiment: str = TEST, selection: str | None = None) -> MethodSpec:
    """The real-SAE FG-TransMM configuration of ``experiment`` to analyse.

    ``selection`` names a stored selection (``single_layer``, ``multi_layer``, ``kappa_cmax``); by default
    the last real-SAE FG method of the experiment (the protocol's final multi-layer configuration).

    Raises:
        ValueError: the experiment has no real-SAE FG method, or not the selected one.
    """
    specs = store.experiment_methods(experiment, split)
    real = [group.real for group in control_groups(specs)]
    if not real:
        raise ValueError(f"experiment {experiment!r} on split {split!r} of {store.run_dir} has no real-SAE FG-TransMM "
                         f"results (methods: {[s.label for s in specs]}); evaluate the run first")
    if selection is None:
        return real[-1]
    if selection not in (SINGLE, MULTI, GRID):
        raise ValueError(f"selection={selection!r}; expected one of {[SINGLE, MULTI, GRID]}")
    stored = store.selection(selection)
    if stored is None:
        raise ValueError(f"run {store.run_dir} has no {selection!r} selection")
    key = fg_spec_of(stored.chosen).key
    match = [s for s in real if s.key == key]
    if not match:
        raise ValueError(f"the {selection!r} selection was not evaluated in experiment {experiment!r}")
    return match[0]


def _stack(dataset: Dataset, ids: Sequence[int]) -> Tensor:
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in ids])


def analyze_features(
    model: nn.Module,
    dataset: Dataset,
    saes: Mapping[int, SparseAutoencoder],
    method: MethodSpec | None,
    store: ResultStore,
    split: str = "test",
    *,
    experiment: str = TEST,
    n_images: int = 4,
    n_patches: int = 3,
    top_features: int = 5,
    reference: Dataset | None = None,
    reference_split: str | None = None,
    prototypes: int = 10,
    class_names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> FeatureAnalysis:
    """Feature case studies of FG-TransMM vs TransMM on an evaluated run (see the module docstring).

    Args:
        model: the run's classifier in eval mode, (B, C, H, W) -> logits; moved to ``device``.
        dataset: the evaluated split (items ``(image (C, H, W), label)``, id = index).
        saes: {layer: SAE} for the gated layers of ``method``.
        method: real-SAE ``fg`` spec; None: :func:`select_fg_method`.
        store: the run's store holding TransMM's and ``method``'s per-image rows on ``split``.
        n_images: images per group (most improved / most degraded).
        n_patches: case patches per image (largest |Δ share|).
        top_features: contributors recorded per patch and layer (defines a feature's cases).
        reference: split whose top activating images are the prototypes (default ``dataset``).
        reference_split: its name, for the cache key (default ``split``).
        prototypes: prototypes per feature.
        class_names: label -> name (default: the dataset's ``class_names`` / ``classes``, else the number).
        out_dir: where ``features.md``, ``features.csv`` and the figures go (None: nothing written).

    Returns:
        :class:`FeatureAnalysis`; its ``files`` lists what was written.
    """
    for name, value in (("n_images", n_images), ("n_patches", n_patches), ("top_features", top_features),
                        ("prototypes", prototypes), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; expected an int >= 1")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first")
    method = method if method is not None else select_fg_method(store, split, experiment)
    if not method.is_fg or control_name(method) is not None:
        raise ValueError(f"method {method.label!r} is not a real-SAE FG-TransMM configuration")
    layers = list(method.fg.layers)
    missing = [layer for layer in layers if layer not in saes]
    if missing:
        raise ValueError(f"no SAE for gated layers {missing}; SAEs are available for layers {sorted(saes)}")
    ids = store.experiment_ids(experiment, split)
    base_key = next((s.key for s in store.experiment_methods(experiment, split) if s.is_transmm), None)
    if base_key is None:
        raise ValueError(f"experiment {experiment!r} on split {split!r} has no TransMM results")
    fg_rows, base_rows = store.scores(split, method.key, ids), store.scores(split, base_key, ids)
    common, fi, bi = np.intersect1d(fg_rows["image_id"], base_rows["image_id"], return_indices=True)
    if len(common) == 0:
        raise ValueError(f"no image of experiment {experiment!r} has both TransMM and {method.label} results")
    metrics = metric_names()
    composite, deltas = composite_improvement({m: fg_rows[m][fi] for m in metrics},
                                              {m: base_rows[m][bi] for m in metrics})
    targets = fg_rows["target"][fi]
    names = list(class_names or getattr(dataset, "class_names", None) or getattr(dataset, "classes", None) or [])
    name_of = (lambda c: names[c] if 0 <= c < len(names) else str(c))
    cases = [Case(group, int(common[i]), int(targets[i]), float(composite[i]),
                  {m: float(d[i]) for m, d in deltas.items()})
             for group, positions in rank_cases(common.tolist(), composite, n_images).items() for i in positions]

    device_t = torch.device(device)
    model.to(device_t)
    saes_used = {layer: saes[layer].to(device_t) for layer in layers}
    fg = FeatureGradientTransMM(model, saes_used, kappa=method.fg.kappa, c_max=method.fg.c_max,
                                variant=method.fg.variant, top_features=top_features)
    findings: dict[int, list[PatchFinding]] = {}
    shares: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[FeatureKey, list] = {}
    chunks = [cases[i:i + batch_size] for i in range(0, len(cases), batch_size)]
    gated_chunks = []
    for chunk in chunks:  # one batch unless more than batch_size images are analysed
        images = _stack(dataset, [c.image_id for c in chunk]).to(device_t)
        target = torch.tensor([c.target for c in chunk], device=device_t)
        transmm = TransMM(model).attribute(images, target=target, return_patches=True).flatten(1)
        fg_map = fg.attribute(images, target=target, return_patches=True).flatten(1)
        gated = {layer: GatedLayer(*(t.cpu() if t is not None else None for t in (g.scores, g.gates, g.top_features, g.top_contributions)))
                 for layer, g in fg.last_gated_layers.items()}
        findings.update(patch_findings(transmm.cpu(), fg_map.cpu(), gated, [c.image_id for c in chunk], n_patches))
        shares.update({c.image_id: (tm.numpy(), f.numpy()) for c, tm, f in
                       zip(chunk, attribution_shares(transmm.cpu()), attribution_shares(fg_map.cpu()))})
        gated_chunks.append((gated, [name_of(c.target) for c in chunk]))
    headline: dict[FeatureKey, int] = {}
    for rows in findings.values():
        for row in rows:
            if row.layer >= 0:
                headline[(row.layer, row.feature)] = headline.get((row.layer, row.feature), 0) + 1
    for gated, classes in gated_chunks:
        for key, (up, down, n_img, per_class) in feature_cases(gated, list(headline), classes).items():
            total = counts.setdefault(key, [0, 0, 0, {}])
            total[0] += up
            total[1] += down
            total[2] += n_img
            for name, (u, d) in per_class.items():
                old = total[3].get(name, (0, 0))
                total[3][name] = (old[0] + u, old[1] + d)
    features = sorted((FeatureStats(l, f, headline[(l, f)], *counts[(l, f)]) for l, f in headline),
                      key=lambda s: (-s.headlines, -s.cases, s.layer, s.feature))
    protos = feature_prototypes(
        model, reference if reference is not None else dataset, saes_used, list(headline), top=prototypes,
        split=reference_split or split, batch_size=max(batch_size, 64), device=device_t,
        cache_dir=Path(store.run_dir) / CACHE_FOLDER, progress=progress)
    result = FeatureAnalysis(method, split, cases, findings, features, protos, get_adapter(model).grid_size(), shares)
    if out_dir is not None:
        ref = reference if reference is not None else dataset
        result.files = write_feature_report(result, dataset, ref, out_dir, name_of, reference_split or split)
    return result


def analyze_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    split: str = "test",
    experiment: str = TEST,
    selection: str | None = None,
    reference_split: str = "val",
    n_images: int = 4,
    n_patches: int = 3,
    top_features: int = 5,
    prototypes: int = 10,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> FeatureAnalysis:
    """:func:`analyze_features` of a finished run folder: the FG configuration :func:`select_fg_method` picks
    (``selection``), with the model, data and SAEs the run's stored configuration names
    (:func:`~captum_fgattr.bench.features.inputs.load_run_components`); files into ``out_dir`` (default
    ``RUN_DIR/features``).

    Raises:
        FileNotFoundError: ``run_dir`` holds no results.
    """
    run_dir = Path(run_dir)
    if not (run_dir / STORE_NAME).is_file():
        raise FileNotFoundError(f"no {STORE_NAME} in {run_dir}; run `fgattr demo` or `fgattr run` first")
    with ResultStore(run_dir) as store:
        method = select_fg_method(store, split, experiment, selection)
        parts = load_run_components(store, list(method.fg.layers), sorted({split, reference_split}), progress)
        return analyze_features(
            parts.model, parts.splits[split], parts.saes, method, store, split, experiment=experiment,
            n_images=n_images, n_patches=n_patches, top_features=top_features,
            reference=parts.splits[reference_split], reference_split=reference_split, prototypes=prototypes,
            class_names=parts.class_names, out_dir=out_dir if out_dir is not None else run_dir / "features",
            batch_size=batch_size, device=device, progress=progress)
