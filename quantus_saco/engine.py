"""Fast batched evaluation of SaCo, patch Faithfulness Correlation and patch Pixel-Flipping.

Pure torch and device-agnostic: every perturbed variant of every image (SaCo groups, FC
subsets, PF steps) is stacked into forward batches of ``max_batch`` images, built chunk by
chunk on the device of ``x``; a distinct perturbed image is forwarded once
(:class:`~quantus_saco.forwards.PerturbedForwards`, shareable between calls on the same
images). Gives the numbers of the Quantus-hosted metrics (``quantus_saco.SaCo`` etc.) for the
same arguments: same patch ranking, group split, per-sample mean baseline, FC subsets
(``patches.sample_subsets`` with ``seed`` over the B images of the call) and score functions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .checks import check_choice, check_patch_size, check_targets
from .forwards import PerturbedForwards
from .patches import (
    REPLACEMENTS, SUBSET_SAMPLINGS, TIE_ORDERS, indices_to_mask, numpy_global_subsets, patch_grid, rank_patches,
    running_mean_values, sample_subsets, split_bounds,
)
from .scores import CORRELATIONS, PAIRINGS, UNDEFINED_SCORES, correlation, fill_undefined, pf_auc, removed_counts, saco

__all__ = ["evaluate_patch_metrics", "METRICS", "SACO_TARGETS"]

METRICS = ("saco", "fc", "pf")
#: SaCo's scored confidence after a group is replaced: the target class's, or the perturbed image's top class's
SACO_TARGETS = ("original", "perturbed_top")


@torch.no_grad()
def _forward(model: nn.Module, x: Tensor, autocast: bool) -> Tensor:
    """(N, C, H, W) -> (N, n_classes) float32 logits."""
    with torch.autocast(x.device.type, enabled=autocast):
        return model(x).float()


def _target_outputs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, n_classes) logits, (N,) classes -> (N,) target logit, target softmax probability and top-class
    softmax probability."""
    t = target[:, None]
    probs = torch.softmax(logits, dim=1)
    return logits.gather(1, t)[:, 0], probs.gather(1, t)[:, 0], probs.max(dim=1).values


def evaluate_patch_metrics(
    model: nn.Module,
    x: Tensor,
    patch_attr: Tensor,
    target: Tensor | None,
    patch_size: int,
    *,
    metrics: Sequence[str] = METRICS,
    saco_groups: int = 10,
    fc_subset_size: int = 20,
    fc_runs: int = 100,
    fc_correlation: str = "pearson",
    pf_patches_per_step: int = 1,
    saco_target: str = "original",
    saco_tie_order: str = "stable",
    saco_pairing: str = "ranking",
    fc_sampling: str = "per_image",
    pf_tie_order: str = "stable",
    pf_replacement: str = "original_mean",
    undefined_score: str = "nan",
    seed: int = 0,
    sample_ids: Tensor | None = None,
    logits: Tensor | None = None,
    max_batch: int = 256,
    autocast: bool = False,
    forwards: PerturbedForwards | None = None,
    fill: Tensor | None = None,
) -> dict[str, Tensor]:
    """SaCo, patch Faithfulness Correlation and patch Pixel-Flipping of a batch (docs/method.md §4).

    Args:
        model: classifier in eval mode on the device of ``x``, (N, C, H, W) -> (N, n_classes) logits.
        x: (B, C, H, W) preprocessed images, H and W divisible by ``patch_size``.
        patch_attr: (B, P) raw per-patch attribution, row-major over the patch grid.
        target: (B,) classes, or None for the predicted classes.
        metrics: any of "saco", "fc", "pf".
        saco_groups: SaCo's K groups, 1 <= K <= P (K = 1 has no pairs: undefined).
        fc_subset_size, fc_runs, fc_correlation: FC subsets (1 <= size < P) per image, runs (>= 2),
            "pearson" or "spearman"; subsets from ``sample_subsets(sample_ids, fc_runs, P, fc_subset_size, seed)``,
            or with ``fc_sampling="numpy_global"`` from ``numpy_global_subsets(B, fc_runs, P, fc_subset_size, seed)``.
        sample_ids: (B,) ids seeding each image's FC subsets (default: positions 0..B-1, as the
            Quantus-hosted metric does); dataset ids make results independent of batching.
        saco_target: ``SACO_TARGETS``; "original": Δ_i = p(t|x) - p(t|x_i); "perturbed_top":
            Δ_i = max_c p(c|x) - max_c p(c|x_i) (the thesis author's code; ``target`` is then not used by SaCo).
        saco_tie_order, pf_tie_order: ``patches.TIE_ORDERS``, how SaCo's and PF's rankings order equal attributions.
        saco_pairing: ``scores.PAIRINGS``, SaCo's pairs in ranking order or groups re-sorted by salience.
        pf_replacement: ``patches.REPLACEMENTS``; "running_mean": step by step on the perturbed image, each step
            by that image's mean (``running_mean_values``).
        undefined_score: ``scores.UNDEFINED_SCORES``, undefined SaCo and FC scores as NaN or 0.
        logits: (B, n_classes) the model's outputs on ``x`` if the caller already has them (saves a forward).
        pf_patches_per_step: patches removed per Pixel-Flipping step.
        max_batch: images per forward of perturbed images (the last chunk filled up by repetition, so that an
            image's outputs do not depend on what shares its forward; :mod:`quantus_saco.forwards`).
        autocast: run forwards under ``torch.autocast`` on the device (bfloat16 on CPU, float16 on CUDA).
        forwards: the model's outputs on perturbed copies of ``x`` shared with other calls on the same ``x``
            (e.g. one per method on a batch; :class:`~quantus_saco.forwards.PerturbedForwards`): each distinct
            perturbed image is forwarded once, with the same scores as without it. Default: one for this call.
        fill: (B, C, H, W) images whose pixels replace the removed patches (e.g. a black or a blurred copy of
            ``x``: how much the ranking of methods depends on the replacement) instead of each image's mean; not
            with ``pf_replacement="running_mean"``. ``forwards`` must have been made with the same fill.
    Returns:
        dict of (B,) float64 tensors on the device of ``x``: "saco", "fc" (NaN where undefined),
        "pf_auc" (in [0, 1]; multiply by P for the thesis scale), and "pf_curve" (B, S + 1)
        with the unperturbed point first; only for the requested metrics.

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
        >>> x, attr = torch.randn(2, 3, 32, 32), torch.randn(2, 16)
        >>> out = evaluate_patch_metrics(model, x, attr, torch.tensor([0, 2]), 8, saco_groups=4, fc_subset_size=4, fc_runs=8)
        >>> sorted(out), out["pf_curve"].shape
        (['fc', 'pf_auc', 'pf_curve', 'saco'], torch.Size([2, 17]))
    """
    unknown = set(metrics) - set(METRICS)
    if unknown or not metrics:
        raise ValueError(f"metrics={tuple(metrics)!r}; expected a non-empty subset of {METRICS}")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before evaluating")
    if x.ndim != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, C, H, W)")
    B = x.shape[0]
    gh, gw = patch_grid(tuple(x.shape[-2:]), patch_size)
    check_patch_size(model, patch_size)
    P = gh * gw
    if tuple(patch_attr.shape) != (B, P):
        raise ValueError(f"patch_attr has shape {tuple(patch_attr.shape)}; expected ({B}, {P}) for the {gh}x{gw} patch grid")
    for name, value in (("x", x), ("patch_attr", patch_attr)):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf values")
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r}; expected >= 1")
    if fill is not None and pf_replacement == "running_mean":
        raise ValueError("fill replaces patches by fixed images; pf_replacement='running_mean' needs the running means")
    if forwards is None:
        forwards = PerturbedForwards(model, x, patch_size, fill)
    forwards.check(model, x, patch_size, fill)
    if "saco" in metrics and not 1 <= saco_groups <= P:
        raise ValueError(f"saco_groups={saco_groups!r}; expected 1 <= saco_groups <= {P} patches")
    for name, value, choices in (("saco_target", saco_target, SACO_TARGETS), ("saco_tie_order", saco_tie_order, TIE_ORDERS),
                                 ("saco_pairing", saco_pairing, PAIRINGS), ("fc_sampling", fc_sampling, SUBSET_SAMPLINGS),
                                 ("pf_tie_order", pf_tie_order, TIE_ORDERS), ("pf_replacement", pf_replacement, REPLACEMENTS),
                                 ("undefined_score", undefined_score, UNDEFINED_SCORES)):
        check_choice(name, value, choices)
    if "fc" in metrics and fc_runs < 2:
        raise ValueError(f"fc_runs={fc_runs!r}; expected >= 2")
    if "fc" in metrics and fc_correlation not in CORRELATIONS:
        raise ValueError(f"fc_correlation={fc_correlation!r}; expected one of {sorted(CORRELATIONS)}")
    if "pf" in metrics and not 1 <= pf_patches_per_step <= P:
        raise ValueError(f"pf_patches_per_step={pf_patches_per_step!r}; expected 1 <= pf_patches_per_step <= {P}")

    attr = patch_attr.to(x.device, torch.float64)
    if logits is None:
        logits0 = torch.cat([_forward(model, x[i : i + max_batch], autocast) for i in range(0, B, max_batch)])
    elif logits.ndim != 2 or logits.shape[0] != B:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected ({B}, n_classes) outputs on x")
    else:
        logits0 = logits.detach().to(x.device)
    if target is not None:
        check_targets(target.detach().cpu().numpy(), B, logits0.shape[1], name="target")
    target = logits0.argmax(dim=1) if target is None else target.to(x.device, torch.long).reshape(B)
    y0, p0, top0 = _target_outputs(logits0, target)
    mean = x.mean(dim=(1, 2, 3), dtype=torch.float64)  # float64 as in perturb.patch_baseline

    masks: dict[str, Tensor] = {}  # metric -> (B, V_metric, P) patches replaced in each variant
    baselines: dict[str, Tensor] = {}  # metric -> (B, 1) value per image or (B, 1, P) per patch, for every variant
    if "saco" in metrics:
        order = rank_patches(attr, saco_tie_order)
        groups = [order[:, a:b] for a, b in split_bounds(P, saco_groups)]
        salience = torch.stack([attr.gather(1, g).sum(dim=1) for g in groups], dim=1)
        masks["saco"] = torch.stack([indices_to_mask(g, P) for g in groups], dim=1)
    if "fc" in metrics:
        if fc_sampling == "numpy_global":
            subsets = numpy_global_subsets(B, fc_runs, P, fc_subset_size, seed).to(x.device)
        else:
            ids = range(B) if sample_ids is None else sample_ids.reshape(B).tolist()
            subsets = sample_subsets(ids, fc_runs, P, fc_subset_size, seed).to(x.device)
        attr_sums = attr.gather(1, subsets.reshape(B, -1)).reshape(subsets.shape).sum(dim=2)
        masks["fc"] = indices_to_mask(subsets, P)
    if "pf" in metrics:
        order = rank_patches(attr, pf_tie_order)
        counts = removed_counts(P, pf_patches_per_step).to(x.device)
        position = order.argsort(dim=1)  # rank of each patch
        masks["pf"] = position[:, None, :] < counts[1:, None]
        if pf_replacement == "running_mean":
            baselines["pf"] = running_mean_values(x, order, counts, patch_size)[:, None, :]
    per_patch = bool(baselines)  # values per patch only where a metric needs them
    default = mean[:, None, None].expand(B, 1, P) if per_patch else mean[:, None]
    variant_baselines = [baselines.get(name, default).expand(m.shape if per_patch else m.shape[:2])
                         for name, m in masks.items()]

    variants = forwards.logits(torch.cat(list(masks.values()), dim=1), torch.cat(variant_baselines, dim=1),
                               max_batch, autocast)  # (B, V, n_classes)
    V = variants.shape[1]
    logits, probs, top = (t.reshape(B, V) for t in _target_outputs(variants.reshape(B * V, -1),
                                                                    target.repeat_interleave(V)))
    sizes = [m.shape[1] for m in masks.values()]
    logits, probs, top = (dict(zip(masks, t.split(sizes, dim=1))) for t in (logits, probs, top))

    out: dict[str, Tensor] = {}
    if "saco" in metrics:
        drop = p0[:, None] - probs["saco"] if saco_target == "original" else top0[:, None] - top["saco"]
        out["saco"] = saco(salience, drop, saco_pairing, undefined_score)
    if "fc" in metrics:
        out["fc"] = fill_undefined(correlation(attr_sums, y0[:, None] - logits["fc"], fc_correlation), undefined_score)
    if "pf" in metrics:
        out["pf_curve"] = torch.cat([p0[:, None], probs["pf"]], dim=1).double()
        out["pf_auc"] = pf_auc(out["pf_curve"], counts, P)
    return out
