"""Streaming collection of patch-token residual streams (resid_post) from a ViT.

Only patch tokens are kept (class / register prefix tokens are dropped). Nothing here holds all
activations in memory: :func:`iter_patch_activations` yields one DataLoader batch at a time,
:class:`ActivationStream` re-runs the model on every pass (one pass per training epoch) and
:class:`ActivationCache` writes the tokens once to disk as raw arrays that training reads back
through ``numpy.memmap``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["iter_patch_activations", "ActivationStream", "ActivationCache"]

_CACHE_META = "activations.json"
_CACHE_DTYPES = {"float32": np.float32, "float16": np.float16}


class _StopForward(Exception):
    """Raised by a hook once the deepest needed block has run: the rest of the model is skipped."""


def _images_of(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "pixel_values", "input"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise TypeError(
        f"cannot find the images in a DataLoader batch of type {type(batch).__name__}; expected a "
        "Tensor (B, C, H, W), a (images, labels) tuple or a dict with key 'image' / 'pixel_values'"
    )


def _check_layers(layers: int | Sequence[int], depth: int) -> list[int]:
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise ValueError("layers is empty; give at least one 0-based block index")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < depth:
            raise ValueError(f"layer {layer!r} is out of range for a model with {depth} blocks (0..{depth - 1})")
    return sorted(set(layers))


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def iter_patch_activations(
    model: nn.Module,
    loader: Iterable[Any],
    layers: int | Sequence[int],
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "collect activations",
) -> Iterator[dict[int, Tensor]]:
    """Yield, per DataLoader batch, ``{layer: patch tokens (B * P, D)}`` of block ``layer``'s output.

    ``layer`` is a 0-based block index (timm ``blocks[i]``); ``P`` = patch tokens per image (prefix
    tokens dropped). Images go to ``device`` (default: the model's); tokens are returned there,
    detached. The forward stops after the deepest requested block. The model's train/eval mode is
    left as the caller set it (call ``model.eval()`` yourself for deterministic activations).
    """
    from captum_fgattr.adapters import capture, get_adapter

    adapter = get_adapter(model)
    layers = _check_layers(layers, adapter.depth)
    last = adapter.blocks[layers[-1]]
    device = torch.device(device) if device is not None else _model_device(model)
    prefix = adapter.num_prefix_tokens

    def stop(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        raise _StopForward

    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
        images = _images_of(batch).to(device)
        with capture(adapter, attention=False, resid_layers=layers) as cap:
            handle = last.register_forward_hook(stop)
            try:
                adapter.model(images)
            except _StopForward:
                pass
            finally:
                handle.remove()
            out = {}
            for layer in layers:
                tokens = cap.resid[layer][:, prefix:]  # (B, P, D)
                out[layer] = tokens.reshape(-1, tokens.shape[-1]).detach()
        yield out


class ActivationStream:
    """Re-iterable stream of one layer's patch tokens, re-running the model on every pass.

    Each iteration yields one (B * P, D) tensor per DataLoader batch. :attr:`num_tokens` (tokens
    per pass) is computed from ``len(loader.dataset)`` and one probe batch, so training can plan
    its learning-rate schedule without an extra pass.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        layer: int,
        *,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.loader, self.layer = model, loader, layer
        self.device, self.progress = device, progress
        self._num_tokens: int | None = None

    def __iter__(self) -> Iterator[Tensor]:
        for acts in iter_patch_activations(
            self.model, self.loader, self.layer, device=self.device, progress=self.progress,
            desc=f"layer {self.layer} activations",
        ):
            yield acts[self.layer]

    @property
    def num_tokens(self) -> int | None:
        """Patch tokens per pass, or None when the dataset length is unknown."""
        if self._num_tokens is None:
            dataset = getattr(self.loader, "dataset", None)
            if dataset is None or not hasattr(dataset, "__len__"):
                return None
            first = next(iter(self.loader))
            images = _images_of(first)
            acts = next(iter_patch_activations(self.model, [images[:1]], self.layer, device=self.device, progress=False))
            self._num_tokens = len(dataset) * acts[self.layer].shape[0]
        return self._num_tokens


class ActivationCache:
    """Patch tokens of several layers written once to disk and read back as ``numpy.memmap``.

    Layout of ``directory``: ``layer_{L}.bin`` (raw row-major (num_tokens, D) arrays) and
    ``activations.json`` (layers, width, token count, dtype, ``complete`` flag written last, so an
    interrupted build is never mistaken for a finished one).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / _CACHE_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"no activation cache at {self.directory} (missing {_CACHE_META})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"corrupt activation cache metadata {meta_path}: {err}") from err
        if not meta.get("complete"):
            raise ValueError(f"activation cache {self.directory} is incomplete (its build was interrupted); rebuild it")
        self.layers: list[int] = [int(layer) for layer in meta["layers"]]
        self.d_model: int = int(meta["d_model"])
        self.num_tokens: int = int(meta["num_tokens"])
        self.dtype: str = meta["dtype"]
        for layer in self.layers:
            path = self._path(layer)
            expected = self.num_tokens * self.d_model * np.dtype(_CACHE_DTYPES[self.dtype]).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"activation cache file {path} is missing or has the wrong size (expected {expected} bytes)")

    def delete(self) -> None:
        """Remove the cache's own files (and its folder if that leaves it empty)."""
        for layer in self.layers:
            self._path(layer).unlink(missing_ok=True)
        (self.directory / _CACHE_META).unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:  # other files in the folder: leave them
            pass

    def _path(self, layer: int) -> Path:
        return self.directory / f"layer_{layer}.bin"

    def array(self, layer: int) -> np.memmap:
        """Read-only (num_tokens, D) memmap of ``layer``'s patch tokens."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not in the activation cache; cached layers: {self.layers}")
        return np.memmap(self._path(layer), dtype=_CACHE_DTYPES[self.dtype], mode="r", shape=(self.num_tokens, self.d_model))

    @classmethod
    def build(
        cls,
        model: nn.Module,
        loader: Iterable[Any],
        layers: int | Sequence[int],
        directory: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> ActivationCache:
        """Run ``model`` once over ``loader`` and append each batch's patch tokens to disk."""
        if dtype not in _CACHE_DTYPES:
            raise ValueError(f"dtype={dtype!r}; expected one of {sorted(_CACHE_DTYPES)}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        layer_list = [layers] if isinstance(layers, int) else list(layers)
        (directory / _CACHE_META).unlink(missing_ok=True)
        files = {layer: open(directory / f"layer_{layer}.bin", "wb") for layer in set(layer_list)}
        num_tokens, d_model = 0, None
        try:
            for acts in iter_patch_activations(model, loader, layer_list, device=device, progress=progress):
                for layer, tokens in acts.items():
                    files[layer].write(tokens.to("cpu", torch.float32).numpy().astype(_CACHE_DTYPES[dtype]).tobytes())
                    d_model = tokens.shape[-1]
                num_tokens += next(iter(acts.values())).shape[0]
        finally:
            for f in files.values():
                f.close()
        if num_tokens == 0:
            raise ValueError("the DataLoader yielded no images: nothing to cache")
        meta = {"layers": sorted(files), "d_model": d_model, "num_tokens": num_tokens, "dtype": dtype, "complete": True}
        (directory / _CACHE_META).write_text(json.dumps(meta, indent=2))
        return cls(directory)
