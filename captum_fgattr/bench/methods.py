"""Registry of attribution methods for the benchmark; every method yields raw patch maps (B, P).

A method is described by a hashable :class:`MethodSpec` (name + parameters) and built by
:func:`build_method` into a callable ``(images (B, C, H, W), targets (B,), sample_ids (B,)) -> (B, P)``;
a method with a convergence delta (Integrated Gradients) keeps its last (B,) deltas as ``convergence_delta``.
``sample_ids`` lets stochastic baselines be reproducible per image, whatever the batching.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.attr import IntegratedGradients, Saliency
from torch import Tensor, nn

from captum_fgattr.adapters import ViTAdapter, get_adapter
from captum_fgattr.adapters.tokens import pixels_to_patches
from captum_fgattr.attr import FeatureGradientTransMM, TransMM
from captum_fgattr.baselines import AttentionRollout, RawAttention, TokenGradCAM
from captum_fgattr.lrp import AttnLRP, lxt_available
from captum_fgattr.sae import SparseAutoencoder

PatchMethod = Callable[[Tensor, Tensor, Tensor], Tensor]
Builder = Callable[..., PatchMethod]
METHODS: dict[str, Builder] = {}
#: methods that need an optional extra: name -> (check () -> (available, why not), install hint)
OPTIONAL_METHODS: dict[str, tuple[Callable[[], tuple[bool, str]], str]] = {
    "attnlrp": (lxt_available, "pip install 'captum-fgattr[lrp]'"),
}


def unavailable_methods(names: Iterable[str]) -> dict[str, str]:
    """{name: why} for the optional methods among ``names`` whose extra cannot be imported here."""
    out = {}
    for name in names:
        if name in OPTIONAL_METHODS:
            ok, why = OPTIONAL_METHODS[name][0]()
            if not ok:
                out[name] = why
    return out


def register_method(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(model, adapter, saes, **params) -> PatchMethod`` under ``name``."""
    def register(builder: Builder) -> Builder:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = builder
        return builder
    return register


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method with its parameters, e.g. ``MethodSpec("fg", {"layers": [2, 3], "kappa": 0.5})``.

    Attributes:
        name: registry key (see :data:`METHODS`).
        params: keyword parameters of the builder (JSON-serialisable).
        label: display name in tables and figures (defaults to name + parameters).
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; expected one of {sorted(METHODS)}")
        object.__setattr__(self, "params", dict(sorted(self.params.items())))
        if not self.label:
            shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
            object.__setattr__(self, "label", f"{self.name}({shown})" if shown else self.name)

    @property
    def key(self) -> str:
        """Canonical identity (JSON), used to store and resume results."""
        return json.dumps({"name": self.name, "params": self.params}, sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def is_fg(self) -> bool:
        """FG-TransMM: the method under test or one of its controls."""
        return self.name == "fg"

    @property
    def is_transmm(self) -> bool:
        """TransMM, the reference every comparison is made against."""
        return self.name == "transmm"

    @property
    def fg(self) -> FGParams:
        """The typed parameters of an ``fg`` spec.

        Raises:
            ValueError: the spec is not FG-TransMM.
        """
        if not self.is_fg:
            raise ValueError(f"{self.label} is not an FG-TransMM spec")
        return FGParams.from_params(self.params)


@dataclass(frozen=True)
class FGParams:
    """Parameters of an FG-TransMM method (the method or one of its controls); :meth:`to_params` gives the stored
    keys (``None`` seeds omitted, so specs written before the permuted-gates control keep their keys)."""

    layers: tuple[int, ...]  # gated blocks (0-based), sorted
    variant: str = "combined"  # the score (the method, an ablation or a residual control)
    kappa: float = 0.5
    c_max: float = 10.0
    shuffle_seed: int | None = None  # shuffled-decoder control
    permute_seed: int | None = None  # permuted-gates control
    mad_eps: str = "after_scale"  # robust scale of the scores (gates.MAD_EPS_PLACEMENTS); "in_mad": thesis code

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted(int(layer) for layer in self.layers)))
        object.__setattr__(self, "kappa", float(self.kappa))
        object.__setattr__(self, "c_max", float(self.c_max))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FGParams:
        return cls(**params)

    def to_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layers": list(self.layers), "variant": self.variant, "kappa": self.kappa,
                               "c_max": self.c_max}
        for name in ("shuffle_seed", "permute_seed"):
            if getattr(self, name) is not None:
                out[name] = int(getattr(self, name))
        if self.mad_eps != "after_scale":  # the default is left out, so specs written before it keep their keys
            out["mad_eps"] = self.mad_eps
        return out

    @property
    def configuration(self) -> tuple[tuple[int, ...], float, float]:
        """What a method and its controls share: (layers, κ, c_max)."""
        return self.layers, self.kappa, self.c_max


def fg_layers(specs: Iterable[MethodSpec]) -> list[int]:
    """Sorted blocks gated by any FG-TransMM spec of ``specs`` (the SAEs they need)."""
    return sorted({layer for spec in specs if spec.is_fg for layer in spec.fg.layers})


def build_method(spec: MethodSpec, model: nn.Module, saes: Mapping[int, SparseAutoencoder] | None = None) -> PatchMethod:
    """Instantiate ``spec`` for ``model`` (and the SAEs of the gated layers, for ``fg``)."""
    return METHODS[spec.name](model, get_adapter(model), saes or {}, **spec.params)


@register_method("transmm")
def _transmm(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder]) -> PatchMethod:
    method = TransMM(model)
    return lambda images, targets, ids: method.attribute(images, target=targets, return_patches=True).flatten(1)


@register_method("fg")
def _feature_gradient(
    model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder], layers: list[int],
    variant: str = "combined", kappa: float = 0.5, c_max: float = 10.0, shuffle_seed: int | None = None,
    permute_seed: int | None = None, mad_eps: str = "after_scale",
) -> PatchMethod:
    """FG-TransMM or one of its controls (a score variant, the shuffled decoder or permuted gates); the
    permuted-gates control is seeded per sample id, so it does not depend on the batching."""
    missing = [layer for layer in layers if layer not in saes]
    if missing:
        raise ValueError(f"no SAE for gated layers {missing}; SAEs are available for layers {sorted(saes)}")
    method = FeatureGradientTransMM(model, {layer: saes[layer] for layer in layers}, kappa=kappa, c_max=c_max,
                                    variant=variant, shuffle_decoder_seed=shuffle_seed, permute_gates_seed=permute_seed,
                                    mad_eps=mad_eps)
    return lambda images, targets, ids: method.attribute(images, target=targets, return_patches=True,
                                                         sample_ids=ids).flatten(1)


@register_method("gradcam")
def _gradcam(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder]) -> PatchMethod:
    """:class:`TokenGradCAM` on the output of the last block's norm1 (pytorch-grad-cam's ViT recipe)."""
    method = TokenGradCAM(model)
    return lambda images, targets, ids: method.attribute(images, target=targets, return_patches=True).flatten(1)


class _IntegratedGradientsPatches:
    """Captum Integrated Gradients from a constant baseline image, summed over channels and patch pixels;
    :attr:`convergence_delta` holds the last call's (B,) completeness gaps."""

    def __init__(self, model: nn.Module, adapter: ViTAdapter, baseline: float | list[float], n_steps: int) -> None:
        self.method, self.adapter = IntegratedGradients(model), adapter
        self.baseline, self.n_steps = baseline, n_steps
        self.convergence_delta: Tensor | None = None

    def __call__(self, images: Tensor, targets: Tensor, ids: Tensor) -> Tensor:
        values = torch.as_tensor(self.baseline, dtype=images.dtype, device=images.device).reshape(-1)
        if values.numel() not in (1, images.shape[1]):
            raise ValueError(f"integrated_gradients baseline has {values.numel()} values for {images.shape[1]} channels")
        reference = values.reshape(1, -1, 1, 1).expand_as(images)
        with torch.enable_grad():
            attr, delta = self.method.attribute(images, baselines=reference, target=targets, n_steps=self.n_steps,
                                                internal_batch_size=images.shape[0] * self.n_steps,
                                                return_convergence_delta=True)
        self.convergence_delta = delta.detach()
        return pixels_to_patches(attr.detach(), self.adapter.patch_size)


@register_method("integrated_gradients")
def _integrated_gradients(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder],
                          baseline: float | list[float] = 0.0, n_steps: int = 50) -> PatchMethod:
    """Integrated Gradients from a constant ``baseline`` image (one model-input value per channel, or one for
    all; a black image is (0 − mean) / std), ``n_steps`` Gauss-Legendre steps, summed over channels and patch
    pixels; the convergence delta of each call is kept (``convergence_delta``)."""
    return _IntegratedGradientsPatches(model, adapter, baseline, n_steps)


@register_method("saliency")
def _saliency(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder]) -> PatchMethod:
    """Captum Saliency (|∂y/∂x|), summed over channels and patch pixels."""
    method = Saliency(model)

    def attribute(images: Tensor, targets: Tensor, ids: Tensor) -> Tensor:
        with torch.enable_grad():
            grads = method.attribute(images.detach().requires_grad_(True), target=targets)
        return pixels_to_patches(grads.detach(), adapter.patch_size)
    return attribute


@register_method("rollout")
def _rollout(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder]) -> PatchMethod:
    """:class:`AttentionRollout` (class-agnostic)."""
    method = AttentionRollout(model)
    return lambda images, targets, ids: method.attribute(images, return_patches=True).flatten(1)


@register_method("raw_attention")
def _raw_attention(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder]) -> PatchMethod:
    """:class:`RawAttention`: the last block's head-mean class-token attention (class-agnostic)."""
    method = RawAttention(model)
    return lambda images, targets, ids: method.attribute(images, return_patches=True).flatten(1)


@register_method("attnlrp")
def _attnlrp(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder]) -> PatchMethod:
    """:class:`AttnLRP` (lxt's efficient-mode rules, signed relevance summed over each patch); needs the ``lrp`` extra."""
    method = AttnLRP(model)
    return lambda images, targets, ids: method.attribute(images, target=targets, return_patches=True).flatten(1)


@register_method("random")
def _random(model: nn.Module, adapter: ViTAdapter, saes: Mapping[int, SparseAutoencoder], seed: int = 0) -> PatchMethod:
    """Uniform random patch maps, reproducible per (seed, sample id)."""
    num_patches = adapter.grid_size()[0] * adapter.grid_size()[1]

    def attribute(images: Tensor, targets: Tensor, ids: Tensor) -> Tensor:
        rows = [torch.rand(num_patches, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i))) for i in ids]
        return torch.stack(rows).to(images.device)
    return attribute
