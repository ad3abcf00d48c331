"""Feature prototypes: the top activating images of a reference split for a few SAE features, streamed.

One pass over the reference split: :func:`captum_fgattr.sae.collect.iter_patch_activations` yields each
batch's patch tokens at the needed blocks, the SAE encodes them, and only the requested features are kept:
a running top-``k`` per feature of the image score (max activation over the image's patches) together with
those images' per-patch activation maps. Memory is O(features × k × patches), whatever the split size.
The result is cached as safetensors in ``cache_dir``, keyed by the features, the split and the SAE columns.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from captum_fgattr.adapters import get_adapter
from captum_fgattr.files import atomic_write
from captum_fgattr.sae import SparseAutoencoder
from captum_fgattr.sae.collect import iter_patch_activations

__all__ = ["Prototypes", "FeatureKey", "feature_prototypes"]

FeatureKey = tuple[int, int]  # (block index, feature index)


@dataclass(frozen=True)
class Prototypes:
    """Top activating images of one feature on a reference split.

    Attributes:
        layer, feature: the SAE (0-based block) and its feature index.
        image_ids: (k,) reference-split indices, by decreasing activation; only images where it fires (> 0).
        activations: (k,) max activation over each image's patches.
        maps: (k, gh, gw) the feature's activation at every patch of those images.
    """

    layer: int
    feature: int
    image_ids: np.ndarray
    activations: np.ndarray
    maps: np.ndarray


def _cache_key(features: Sequence[FeatureKey], saes: Mapping[int, SparseAutoencoder], split: str, n_images: int,
               top: int) -> str:
    """Digest of the request and of the SAE encoder columns it reads (a retrained SAE misses the cache)."""
    digest = hashlib.sha256(json.dumps({"features": [list(f) for f in features], "split": split, "n": n_images,
                                        "top": top}).encode())
    for layer, feature in features:
        sae = saes[layer]
        digest.update(sae.W_enc.detach()[:, feature].cpu().float().numpy().tobytes())
        digest.update(sae.b_enc.detach()[feature].cpu().float().numpy().tobytes())
        digest.update(sae.config.normalize.encode())
    return digest.hexdigest()[:16]


def _merge(values: Tensor, ids: Tensor, maps: Tensor, batch_maps: Tensor, batch_ids: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """Running top-``top`` per feature.

    Args:
        values, ids: (F, k') current best image scores and ids; maps: (F, k', P).
        batch_maps: (F, B, P) activations of the batch's images; batch_ids: (B,).
    """
    F, B, _ = batch_maps.shape
    all_values = torch.cat([values, batch_maps.amax(dim=2)], dim=1)  # (F, k' + B)
    all_ids = torch.cat([ids, batch_ids.expand(F, B)], dim=1)
    all_maps = torch.cat([maps, batch_maps], dim=1)
    best = all_values.topk(min(top, all_values.shape[1]), dim=1).indices  # (F, k)
    return all_values.gather(1, best), all_ids.gather(1, best), all_maps.gather(1, best[..., None].expand(-1, -1, all_maps.shape[2]))


def _save(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def _unpack(tensors: Mapping[str, Tensor], features: Sequence[FeatureKey], grid: tuple[int, int]) -> dict[FeatureKey, Prototypes]:
    out = {}
    for i, (layer, feature) in enumerate(features):
        values, ids, maps = tensors["activations"][i], tensors["image_ids"][i], tensors["maps"][i]
        keep = (values > 0) & (ids >= 0)
        out[(layer, feature)] = Prototypes(layer, feature, ids[keep].numpy(), values[keep].numpy(),
                                           maps[keep].reshape(-1, *grid).numpy())
    return out


@torch.no_grad()
def feature_prototypes(
    model: nn.Module,
    reference: Dataset,
    saes: Mapping[int, SparseAutoencoder],
    features: Sequence[FeatureKey],
    *,
    top: int = 10,
    split: str = "reference",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[FeatureKey, Prototypes]:
    """Top-``top`` activating images of each (layer, feature) on ``reference``, in one streamed pass.

    Args:
        model: the ViT (eval mode) the SAEs read; moved to ``device``.
        reference: items ``(image (C, H, W), label)``; image id = index.
        saes: {layer: SAE} covering every layer in ``features``.
        features: (block index, feature index) pairs.
        split: name of the reference split (part of the cache key).
        cache_dir: folder of the cache file ``prototypes_<key>.safetensors`` (None: no cache).

    Returns:
        {(layer, feature): :class:`Prototypes`}.
    """
    features = sorted(set((int(layer), int(feature)) for layer, feature in features))
    if top < 1:
        raise ValueError(f"top={top}; expected >= 1 prototypes per feature")
    for layer, feature in features:
        if layer not in saes:
            raise ValueError(f"no SAE for layer {layer}; SAEs are available for layers {sorted(saes)}")
        if not 0 <= feature < saes[layer].n_features:
            raise ValueError(f"feature {feature} out of range for the layer-{layer} SAE ({saes[layer].n_features} features)")
    grid = get_adapter(model).grid_size()
    if not features:
        return {}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"prototypes_{_cache_key(features, saes, split, len(reference), top)}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            return _unpack(load_file(str(path)), features, grid)
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first")
    device = torch.device(device)
    model.to(device)
    layers = sorted({layer for layer, _ in features})
    columns = {layer: torch.tensor([f for l, f in features if l == layer], device=device) for layer in layers}
    P = grid[0] * grid[1]
    state = {layer: (torch.full((len(columns[layer]), 0), -torch.inf, device=device),
                     torch.zeros((len(columns[layer]), 0), dtype=torch.long, device=device),
                     torch.zeros((len(columns[layer]), 0, P), device=device)) for layer in layers}
    loader = DataLoader(reference, batch_size=batch_size, shuffle=False)
    start = 0
    for acts in iter_patch_activations(model, loader, layers, device=device, progress=progress,
                                       desc=f"prototypes ({split})"):
        B = next(iter(acts.values())).shape[0] // P
        batch_ids = torch.arange(start, start + B, device=device)
        start += B
        for layer in layers:
            sae = saes[layer].to(device)
            codes = sae.encode(acts[layer])[:, columns[layer]].float()  # (B·P, F)
            state[layer] = _merge(*state[layer], codes.reshape(B, P, -1).permute(2, 0, 1), batch_ids, top)
    if start == 0:
        raise ValueError(f"reference split {split!r} is empty (0 images)")
    order = [(layer, i) for layer in layers for i in range(len(columns[layer]))]
    tensors = {name: torch.stack([state[layer][j][i] for layer, i in order]).cpu()
               for j, name in enumerate(("activations", "image_ids", "maps"))}
    if path is not None:
        _save(path, tensors)
    return _unpack(tensors, features, grid)
