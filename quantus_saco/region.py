"""Region perturbation (MoRF / LeRF, SRG) and ROAD at patch level: pure batched tensor functions.

Both remove patches cumulatively along a ranking of the patch attribution and record the target's softmax
probability, the unperturbed image first:

* **MoRF / LeRF** (Quantus ``RegionPerturbation``; Samek et al. 2017): ``patches_per_step`` patches at a
  time, removed patches replaced by a per-image value (``perturb.BASELINES`` or a number); **SRG** = AUC(LeRF) −
  AUC(MoRF) (Blücher et al. 2024).
* **ROAD** (Rong et al. 2022): at a fixed list of removal fractions, removed patches imputed by Quantus's
  noisy linear imputation (:mod:`quantus_saco.imputation`).

AUCs are trapezoid areas over the removed fraction divided by the last removed fraction (in [0, 1]; for
region perturbation, which ends with all patches removed, exactly ``scores.pf_auc``). The Quantus classes of
:mod:`quantus_saco.region_metrics` give the same numbers (tested). Definitions: docs/method.md §7.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import check_choice, check_patch_size, check_targets
from .engine import _forward, _target_outputs
from .forwards import PerturbedForwards
from .imputation import batch_patch_noisy_linear_imputation, road_noise
from .patches import TIE_ORDERS, patch_grid, rank_patches
from .perturb import BASELINES
from .scores import pf_auc, removed_counts

__all__ = [
    "ORDERS", "ROAD_FRACTIONS", "removal_order", "removal_masks", "check_fractions", "fraction_counts", "image_baselines",
    "normalised_auc", "evaluate_region_perturbation", "evaluate_road",
]

#: removal orders: most relevant first (attribution descending) or least relevant first (ascending)
ORDERS = ("morf", "lerf")
#: ROAD's default removal fractions (Rong et al. 2022: 10 % … 90 %)
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def removal_order(attr: Tensor, order: str, tie_order: str = "stable") -> Tensor:
    """Patch indices in removal order.

    Args:
        attr: (B, P) per-patch attribution.
        order: "morf": descending attribution (``patches.rank_patches``); "lerf": ascending (``rank_patches``
            of ``-attr``, so equal attributions keep the ``tie_order`` rule, e.g. lower patch index first).
    Returns:
        (B, P) long, ``[:, 0]`` the patch removed first.
    """
    check_choice("order", order, ORDERS)
    return rank_patches(attr if order == "morf" else -attr, tie_order)


def removal_masks(order: Tensor, counts: Tensor) -> Tensor:
    """Patches removed at each perturbed point of a cumulative removal.

    Args:
        order: (B, P) patch indices in removal order.
        counts: (S + 1,) patches removed at each point, ``counts[0] = 0`` the unperturbed image.
    Returns:
        (B, S, P) bool, ``[:, k - 1]`` True for the first ``counts[k]`` patches of ``order``.
    """
    position = order.argsort(dim=1)  # rank of each patch
    return position[:, None, :] < counts[1:].to(order.device)[:, None]


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """``fractions`` as floats if they are a non-empty, strictly increasing sequence in (0, 1); else a ValueError."""
    values = tuple(float(f) for f in fractions)
    if not values or any(not 0 < f < 1 for f in values) or any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"fractions={tuple(fractions)!r}; expected a non-empty, strictly increasing sequence in (0, 1)")
    return values


def fraction_counts(fractions: Sequence[float], n_patches: int) -> Tensor:
    """Patches removed at ROAD's points: 0, then ``round(f * n_patches)`` for each fraction f.

    Args:
        fractions: ``check_fractions``; each must remove at least one patch and leave one (the imputation
            interpolates from the patches left).
    Returns:
        (F + 1,) long.
    """
    counts = torch.tensor([0] + [round(f * n_patches) for f in check_fractions(fractions)])
    if counts[1] < 1 or counts[-1] > n_patches - 1:
        raise ValueError(f"fractions={tuple(fractions)!r} remove {counts[1:].tolist()} of {n_patches} patches; "
                         f"each must remove at least 1 and at most {n_patches - 1}")
    return counts


def image_baselines(x: Tensor, perturb_baseline: str | float) -> Tensor:
    """Per-image replacement value, as ``perturb.patch_baseline`` computes it from the same images.

    Args:
        x: (B, C, H, W) images.
        perturb_baseline: "mean" (the image mean, computed as ``engine.evaluate_patch_metrics`` does, so that
            their perturbed images coincide in a shared ``PerturbedForwards``), "black" (minimum), "white"
            (maximum) or a number.
    Returns:
        (B,) float64 on the device of ``x``.
    """
    if isinstance(perturb_baseline, str):
        check_choice("perturb_baseline", perturb_baseline, BASELINES)
        if perturb_baseline == "mean":
            return x.mean(dim=(1, 2, 3), dtype=torch.float64)
        flat = x.reshape(len(x), -1)
        return (flat.amin(dim=1) if perturb_baseline == "black" else flat.amax(dim=1)).double()
    if isinstance(perturb_baseline, bool) or not isinstance(perturb_baseline, (int, float)):
        raise ValueError(f"perturb_baseline={perturb_baseline!r}; expected one of {BASELINES} or a number")
    return torch.full((len(x),), float(perturb_baseline), dtype=torch.float64, device=x.device)


def normalised_auc(curve: Tensor, counts: Tensor, n_patches: int) -> Tensor:
    """Trapezoid area under a removal curve over the removed fraction, divided by the last removed fraction.

    Args:
        curve: (B, S + 1) scores at the points ``counts``, the unperturbed image first.
        counts: (S + 1,) patches removed at each point, from 0.
    Returns:
        (B,) float64 in [0, 1] for probabilities; ``scores.pf_auc`` when ``counts`` ends at ``n_patches``.
    """
    return pf_auc(curve, counts, n_patches) * (n_patches / int(counts[-1]))


def _check_batch(model: nn.Module, x: Tensor, patch_attr: Tensor, patch_size: int, max_batch: int,
                 orders: Sequence[str], tie_order: str) -> int:
    """Refuse a call the scores would silently get wrong; returns the number of patches P."""
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before evaluating")
    if x.ndim != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, C, H, W)")
    gh, gw = patch_grid(tuple(x.shape[-2:]), patch_size)
    check_patch_size(model, patch_size)
    if tuple(patch_attr.shape) != (x.shape[0], gh * gw):
        raise ValueError(f"patch_attr has shape {tuple(patch_attr.shape)}; expected ({x.shape[0]}, {gh * gw}) "
                         f"for the {gh}x{gw} patch grid")
    for name, value in (("x", x), ("patch_attr", patch_attr)):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf values")
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r}; expected >= 1")
    if not orders or len(set(orders)) != len(orders) or set(orders) - set(ORDERS):
        raise ValueError(f"orders={tuple(orders)!r}; expected distinct values of {ORDERS}")
    check_choice("tie_order", tie_order, TIE_ORDERS)
    return gh * gw


def _forward_chunks(model: nn.Module, x: Tensor, max_batch: int, autocast: bool) -> Tensor:
    """(N, C, H, W) -> (N, n_classes) float32 logits, ``max_batch`` images per forward."""
    return torch.cat([_forward(model, x[i:i + max_batch], autocast) for i in range(0, len(x), max_batch)])


def _target_probs(variants: Tensor, target: Tensor) -> Tensor:
    """(B, V, n_classes) logits of V variants per image, (B,) targets -> (B, V) target softmax probabilities."""
    B, V, _ = variants.shape
    return torch.softmax(variants, dim=2).gather(2, target[:, None, None].expand(B, V, 1))[..., 0]


def _unperturbed(model: nn.Module, x: Tensor, target: Tensor | None, logits: Tensor | None, max_batch: int,
                 autocast: bool) -> tuple[Tensor, Tensor]:
    """-> ((B,) target classes, (B, n_classes) logits on ``x``); ``logits`` if the caller has them."""
    B = x.shape[0]
    if logits is None:
        logits = _forward_chunks(model, x, max_batch, autocast)
    elif logits.ndim != 2 or logits.shape[0] != B:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected ({B}, n_classes) outputs on x")
    logits = logits.detach().to(x.device)
    if target is None:
        target = logits.argmax(dim=1)
    else:
        check_targets(target.detach().cpu().numpy(), B, logits.shape[1], name="target")
        target = target.to(x.device, torch.long).reshape(B)
    return target, logits


def evaluate_region_perturbation(
    model: nn.Module,
    x: Tensor,
    patch_attr: Tensor,
    target: Tensor | None,
    patch_size: int,
    *,
    orders: Sequence[str] = ORDERS,
    patches_per_step: int = 1,
    perturb_baseline: str | float = "mean",
    tie_order: str = "stable",
    logits: Tensor | None = None,
    max_batch: int = 256,
    autocast: bool = False,
    forwards: PerturbedForwards | None = None,
) -> dict[str, Tensor]:
    """MoRF / LeRF region-perturbation curves and AUCs of a batch, and SRG = AUC(LeRF) − AUC(MoRF).

    Args:
        model: classifier in eval mode on the device of ``x``, (N, C, H, W) -> (N, n_classes) logits.
        x: (B, C, H, W) preprocessed images, H and W divisible by ``patch_size``.
        patch_attr: (B, P) raw per-patch attribution, row-major over the patch grid.
        target: (B,) classes, or None for the predicted classes.
        orders: any of ``ORDERS``.
        patches_per_step: patches removed per step (1 <= n <= P); the curve ends with all P removed.
        perturb_baseline: value of the removed patches (``image_baselines``).
        tie_order: ``patches.TIE_ORDERS``, order of equal attributions (``removal_order``).
        logits: (B, n_classes) the model's outputs on ``x`` if the caller has them (saves a forward).
        max_batch, autocast: as in ``engine.evaluate_patch_metrics``.
        forwards: outputs on perturbed copies of ``x`` shared with other calls on the same ``x``: with
            ``perturb_baseline="mean"`` and the same step and tie order, the MoRF images are Pixel-Flipping's
            (``evaluate_patch_metrics(metrics=("pf",))``), forwarded once.
    Returns:
        dict of float64 tensors on the device of ``x``, per order o: "{o}_curve" (B, S + 1) target softmax
        probability, unperturbed first; "{o}_auc" (B,) in [0, 1] (``normalised_auc``; MoRF: lower is better,
        LeRF: higher is better); with both orders "srg" (B,) in [-1, 1], higher is better.

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
        >>> out = evaluate_region_perturbation(model, torch.randn(2, 3, 32, 32), torch.randn(2, 16), None, 8)
        >>> sorted(out), out["morf_curve"].shape
        (['lerf_auc', 'lerf_curve', 'morf_auc', 'morf_curve', 'srg'], torch.Size([2, 17]))
    """
    P = _check_batch(model, x, patch_attr, patch_size, max_batch, orders, tie_order)
    if isinstance(patches_per_step, bool) or not isinstance(patches_per_step, int) or not 1 <= patches_per_step <= P:
        raise ValueError(f"patches_per_step={patches_per_step!r}; expected 1 <= patches_per_step <= {P}")
    baseline = image_baselines(x, perturb_baseline)
    if forwards is None:
        forwards = PerturbedForwards(model, x, patch_size)
    forwards.check(model, x, patch_size)
    target, logits = _unperturbed(model, x, target, logits, max_batch, autocast)
    p0 = _target_outputs(logits, target)[1]

    attr = patch_attr.to(x.device, torch.float64)
    counts = removed_counts(P, patches_per_step).to(x.device)
    masks = torch.cat([removal_masks(removal_order(attr, o, tie_order), counts) for o in orders], dim=1)
    B, V, _ = masks.shape
    variants = forwards.logits(masks, baseline[:, None].expand(B, V), max_batch, autocast)  # (B, V, n_classes)
    out: dict[str, Tensor] = {}
    for o, p in zip(orders, _target_probs(variants, target).split(len(counts) - 1, dim=1)):
        out[f"{o}_curve"] = torch.cat([p0[:, None], p], dim=1).double()
        out[f"{o}_auc"] = normalised_auc(out[f"{o}_curve"], counts, P)
    if len(orders) == 2:
        out["srg"] = out["lerf_auc"] - out["morf_auc"]
    return out


def evaluate_road(
    model: nn.Module,
    x: Tensor,
    patch_attr: Tensor,
    target: Tensor | None,
    patch_size: int,
    *,
    orders: Sequence[str] = ORDERS,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = 0.01,
    seed: int = 0,
    sample_ids: Tensor | None = None,
    tie_order: str = "stable",
    logits: Tensor | None = None,
    max_batch: int = 256,
    autocast: bool = False,
) -> dict[str, Tensor]:
    """ROAD curves at patch level: the patches first in ``order`` imputed by noisy linear imputation.

    At each fraction f the first ``round(f * P)`` patches of the removal order are imputed, all channels,
    from the pixels left (``imputation.batch_patch_noisy_linear_imputation``: Quantus's linear system, solved
    on the CPU one image at a time) plus ``noise`` × a standard-normal draw per pixel, the same draws for every
    fraction and order of an image (``imputation.road_noise(sample_ids, (C, H, W), seed)``).

    Args:
        model, x, patch_attr, target, patch_size, orders, tie_order, logits, max_batch, autocast:
            as in ``evaluate_region_perturbation``.
        fractions: removal fractions (``fraction_counts``).
        noise: standard deviation of the noise added to imputed pixels, in the units of ``x`` (>= 0).
        seed, sample_ids: seed and (B,) non-negative ids of the noise draws (default: positions 0..B-1, as
            the Quantus-hosted ``PatchROAD`` does); dataset ids make results independent of batching.
    Returns:
        dict of float64 tensors on the device of ``x``, per order o: "road_{o}_curve" (B, F + 1) target
        softmax probability, unperturbed first; "road_{o}_correct" (B, F + 1) 1.0 where the predicted class is
        the target (its mean over images is Rong et al.'s accuracy curve); "road_{o}_auc" (B,) in [0, 1]
        (``normalised_auc``; MoRF lower is better, LeRF higher is better); with both orders "road_srg" (B,) =
        AUC(LeRF) − AUC(MoRF), higher is better.
    """
    P = _check_batch(model, x, patch_attr, patch_size, max_batch, orders, tie_order)
    counts = fraction_counts(fractions, P)
    if not noise >= 0:
        raise ValueError(f"noise={noise!r}; expected a standard deviation >= 0")
    B, C, H, W = x.shape
    ids = range(B) if sample_ids is None else sample_ids.reshape(B).tolist()
    draws = road_noise(ids, (C, H, W), seed).reshape(B, -1).numpy()
    target, logits = _unperturbed(model, x, target, logits, max_batch, autocast)
    p0, correct0 = _target_outputs(logits, target)[1], logits.argmax(dim=1) == target

    attr = patch_attr.to(x.device, torch.float64)
    x_flat = x.detach().reshape(B, -1).cpu().numpy()
    out: dict[str, Tensor] = {}
    for o in orders:
        order = removal_order(attr, o, tie_order).cpu().numpy()
        logits_o = []
        for n in counts[1:].tolist():  # one imputed copy of every image per fraction
            imputed = batch_patch_noisy_linear_imputation(x_flat, order[:, :n], noise, image_shape=(C, H, W),
                                                          patch_size=patch_size, noise_draws=draws)
            logits_o.append(_forward_chunks(model, torch.from_numpy(imputed).to(x.device).reshape(x.shape), max_batch,
                                            autocast))
        variants = torch.stack(logits_o, dim=1)  # (B, F, n_classes)
        out[f"road_{o}_curve"] = torch.cat([p0[:, None], _target_probs(variants, target)], dim=1).double()
        correct = torch.cat([correct0[:, None], variants.argmax(dim=2) == target[:, None]], dim=1)
        out[f"road_{o}_correct"] = correct.double()
        out[f"road_{o}_auc"] = normalised_auc(out[f"road_{o}_curve"], counts, P)
    if len(orders) == 2:
        out["road_srg"] = out["road_lerf_auc"] - out["road_morf_auc"]
    return out
