"""Fast batched evaluation of SaCo, patch Faithfulness Correlation and patch Pixel-Flipping.

Pure torch and device-agnostic: every perturbed variant of every image (SaCo groups, FC
subsets, PF steps) is stacked into large forward batches of at most ``max_batch`` images,
built chunk by chunk on the device of ``x``. Gives the numbers of the Quantus-hosted
metrics (``quantus_saco.SaCo`` etc.) for the same arguments: same patch ranking, group
split, per-sample mean baseline, FC subsets (``patches.sample_subsets`` with ``seed``
over the B images of the call) and score functions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .checks import check_patch_size, check_targets
from .patches import indices_to_mask, patch_grid, rank_patches, replace_patches, sample_subsets, split_bounds
from .scores import CORRELATIONS, correlation, pf_auc, removed_counts, saco

__all__ = ["evaluate_patch_metrics", "METRICS"]

METRICS = ("saco", "fc", "pf")


@torch.no_grad()
def _forward(model: nn.Module, x: Tensor, autocast: bool) -> Tensor:
    """(N, C, H, W) -> (N, n_classes) float32 logits."""
    with torch.autocast(x.device.type, enabled=autocast):
        return model(x).float()


def _target_outputs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(N, n_classes) logits, (N,) classes -> ((N,) target logit, (N,) target softmax probability)."""
    t = target[:, None]
    return logits.gather(1, t)[:, 0], torch.softmax(logits, dim=1).gather(1, t)[:, 0]


def _perturbed_outputs(
    model: nn.Module,
    x: Tensor,
    masks: Tensor,
    target: Tensor,
    patch_size: int,
    max_batch: int,
    autocast: bool,
) -> tuple[Tensor, Tensor]:
    """Target logit and softmax probability of every perturbed variant, ``max_batch`` variants per forward.

    Args:
        x: (B, C, H, W) original images.
        masks: (B, V, P) bool, patches to replace by the per-sample image mean.
        target: (B,) long classes.
    Returns:
        ((B, V) logits, (B, V) probabilities), float32.
    """
    B, V, _ = masks.shape
    baseline = x.mean(dim=(1, 2, 3), dtype=torch.float64)  # float64 as in perturb.patch_baseline
    flat_masks = masks.reshape(B * V, -1)
    image = torch.arange(B, device=x.device).repeat_interleave(V)
    chunks = []
    for start in range(0, B * V, max_batch):
        idx = image[start : start + max_batch]
        perturbed = replace_patches(x[idx], flat_masks[start : start + max_batch], baseline[idx], patch_size)
        chunks.append(_target_outputs(_forward(model, perturbed, autocast), target[idx]))
    logits, probs = (torch.cat(parts).reshape(B, V) for parts in zip(*chunks))
    return logits, probs


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
    seed: int = 0,
    sample_ids: Tensor | None = None,
    logits: Tensor | None = None,
    max_batch: int = 256,
    autocast: bool = False,
) -> dict[str, Tensor]:
    """SaCo, patch Faithfulness Correlation and patch Pixel-Flipping of a batch (docs/method.md §4).

    Args:
        model: classifier in eval mode on the device of ``x``, (N, C, H, W) -> (N, n_classes) logits.
        x: (B, C, H, W) preprocessed images, H and W divisible by ``patch_size``.
        patch_attr: (B, P) raw per-patch attribution, row-major over the patch grid.
        target: (B,) classes, or None for the predicted classes.
        metrics: any of "saco", "fc", "pf".
        saco_groups: SaCo's K groups, 2 <= K <= P.
        fc_subset_size, fc_runs, fc_correlation: FC subsets (1 <= size < P) per image, runs (>= 2),
            "pearson" or "spearman"; subsets from ``sample_subsets(sample_ids, fc_runs, P, fc_subset_size, seed)``.
        sample_ids: (B,) ids seeding each image's FC subsets (default: positions 0..B-1, as the
            Quantus-hosted metric does); dataset ids make results independent of batching.
        logits: (B, n_classes) the model's outputs on ``x`` if the caller already has them (saves a forward).
        pf_patches_per_step: patches removed per Pixel-Flipping step.
        max_batch: most images per forward.
        autocast: run forwards under ``torch.autocast`` on the device (bfloat16 on CPU, float16 on CUDA).
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
    if "saco" in metrics and not 2 <= saco_groups <= P:
        raise ValueError(f"saco_groups={saco_groups!r}; expected 2 <= saco_groups <= {P} patches")
    if "fc" in metrics and fc_runs < 2:
        raise ValueError(f"fc_runs={fc_runs!r}; expected >= 2")
    if "fc" in metrics and fc_correlation not in CORRELATIONS:
        raise ValueError(f"fc_correlation={fc_correlation!r}; expected one of {sorted(CORRELATIONS)}")
    if "pf" in metrics and not 1 <= pf_patches_per_step <= P:
        raise ValueError(f"pf_patches_per_step={pf_patches_per_step!r}; expected 1 <= pf_patches_per_step <= {P}")

    attr = patch_attr.to(x.device, torch.float64)
    order = rank_patches(attr)
    if logits is None:
        logits0 = torch.cat([_forward(model, x[i : i + max_batch], autocast) for i in range(0, B, max_batch)])
    elif logits.ndim != 2 or logits.shape[0] != B:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected ({B}, n_classes) outputs on x")
    else:
        logits0 = logits.detach().to(x.device)
    if target is not None:
        check_targets(target.detach().cpu().numpy(), B, logits0.shape[1], name="target")
    target = logits0.argmax(dim=1) if target is None else target.to(x.device, torch.long).reshape(B)
    y0, p0 = _target_outputs(logits0, target)

    masks: dict[str, Tensor] = {}  # metric -> (B, V_metric, P) patches replaced in each variant
    if "saco" in metrics:
        groups = [order[:, a:b] for a, b in split_bounds(P, saco_groups)]
        salience = torch.stack([attr.gather(1, g).sum(dim=1) for g in groups], dim=1)
        masks["saco"] = torch.stack([indices_to_mask(g, P) for g in groups], dim=1)
    if "fc" in metrics:
        ids = range(B) if sample_ids is None else sample_ids.reshape(B).tolist()
        subsets = sample_subsets(ids, fc_runs, P, fc_subset_size, seed).to(x.device)
        attr_sums = attr.gather(1, subsets.reshape(B, -1)).reshape(subsets.shape).sum(dim=2)
        masks["fc"] = indices_to_mask(subsets, P)
    if "pf" in metrics:
        counts = removed_counts(P, pf_patches_per_step).to(x.device)
        position = order.argsort(dim=1)  # rank of each patch
        masks["pf"] = position[:, None, :] < counts[1:, None]

    logits, probs = _perturbed_outputs(model, x, torch.cat(list(masks.values()), dim=1), target, patch_size, max_batch, autocast)
    sizes = [m.shape[1] for m in masks.values()]
    logits = dict(zip(masks, logits.split(sizes, dim=1)))
    probs = dict(zip(masks, probs.split(sizes, dim=1)))

    out: dict[str, Tensor] = {}
    if "saco" in metrics:
        out["saco"] = saco(salience, p0[:, None] - probs["saco"])
    if "fc" in metrics:
        out["fc"] = correlation(attr_sums, y0[:, None] - logits["fc"], fc_correlation)
    if "pf" in metrics:
        out["pf_curve"] = torch.cat([p0[:, None], probs["pf"]], dim=1).double()
        out["pf_auc"] = pf_auc(out["pf_curve"], counts, P)
    return out
