"""Registry of attribution methods for the benchmark; every method yields raw patch maps (B, P).

A method is described by a hashable :class:`MethodSpec` (name + stored parameters); its parameters are typed by
its family's frozen dataclass (:class:`FGParams`, :class:`IntegratedGradientsParams`, :class:`RandomParams`; the
field-less :class:`MethodParams` for methods without any), checked once when the spec is made. The registry entry
(:class:`MethodEntry`) builds the method from the model, the SAEs and those typed parameters: a Captum attribution
seen by the benchmark as ``(images (B, C, H, W), targets (B,), sample_ids (B,)) -> (B, P)``
(:class:`CaptumPatchMethod`); a method with a convergence delta (Integrated Gradients) keeps its last (B,) deltas
as ``convergence_delta``. ``sample_ids`` lets stochastic methods be reproducible per image, whatever the batching.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

from torch import Tensor, nn

from captum_fgattr.attr import FeatureGradientTransMM, TransMM
from captum_fgattr.baselines import (AttentionRollout, PatchIntegratedGradients, PatchSaliency, RandomPatches,
                                     RawAttention, TokenGradCAM)
from captum_fgattr.gates import MAD_EPS_PLACEMENTS, VARIANTS
from captum_fgattr.lrp import AttnLRP, lxt_available
from captum_fgattr.patch_attribution import PatchAttribution
from captum_fgattr.bench.values import Mismatch, typed
from captum_fgattr.registry import Registry
from captum_fgattr.sae import SparseAutoencoder

PatchMethod = Callable[[Tensor, Tensor, Tensor], Tensor]
Builder = Callable[[nn.Module, Mapping[int, SparseAutoencoder], Any], PatchMethod]
P = TypeVar("P", bound="MethodParams")
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


def _json_type(hint: Any) -> str:
    """``hint`` as its JSON values are spelled, e.g. ``int | None``, ``list[int]`` for ``tuple[int, ...]``."""
    text = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return re.sub(r"tuple\[(\w+), \.\.\.\]", r"list[\1]", text)


def _check_range(name: str, value: float, minimum: float) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name}={value!r}; expected a finite number >= {minimum:g}")


def _check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {list(choices)}")


@dataclass(frozen=True)
class MethodParams:
    """The typed parameters of one method family; this base, without fields, is that of the methods without
    parameters. :meth:`__post_init__` checks every field's type (named in the error); a family adds its ranges."""

    def __post_init__(self) -> None:
        for name, hint in get_type_hints(type(self)).items():
            value = getattr(self, name)
            try:
                typed(hint, value)  # checked only: the parameters stay as given, so stored keys do not change
            except Mismatch:
                raise ValueError(f"{name}={value!r} is not {_json_type(hint)}") from None

    def label(self, name: str, params: Mapping[str, Any]) -> str:
        """The default label of method ``name`` with these parameters, stored as ``params``: ``name(key=value, ...)``
        of the stored ones, e.g. ``random(seed=4)`` (a family with a shorter one overrides this)."""
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        return f"{name}({shown})" if shown else name

    @classmethod
    def accepted(cls) -> str:
        """The fields with their JSON types, e.g. ``"seed: int"`` (``"none"`` without fields)."""
        hints = get_type_hints(cls)
        return ", ".join(f"{f.name}: {_json_type(hints[f.name])}" for f in fields(cls)) or "none"

    @classmethod
    def from_params(cls: type[P], params: Mapping[str, Any]) -> P:
        """The typed parameters of a stored mapping.

        Raises:
            ValueError: an unknown or missing parameter, or a value of the wrong type or range (named).
        """
        unknown = sorted(set(params) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; accepted: {cls.accepted()}")
        missing = [f.name for f in fields(cls) if f.name not in params and f.default is MISSING]
        if missing:
            hint = _json_type(get_type_hints(cls)[missing[0]])
            raise ValueError(f"missing required parameter {missing[0]!r} ({hint}); accepted: {cls.accepted()}")
        return cls(**params)


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its parameters' type and ``build(model, saes, params) -> PatchMethod``."""

    params_type: type[MethodParams]
    build: Builder


METHODS = Registry[MethodEntry]("method")


def register_method(name: str, params: type[MethodParams] = MethodParams) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(model, saes, params) -> PatchMethod`` under ``name``, with typed ``params``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    def register(build: Builder) -> Builder:
        METHODS.add(name, MethodEntry(params, build))
        return build
    return register


class CaptumPatchMethod:
    """A :class:`PatchAttribution` as the benchmark calls it: ``(images (B, C, H, W), targets (B,), ids (B,)) ->
    (B, P)`` raw patch maps; ``by_sample_id``: the attribution takes ``ids`` as its ``sample_ids`` (per-image seeds).
    :attr:`convergence_delta`: the last call's (B,) deltas if the attribution has them, else None."""

    def __init__(self, attribution: PatchAttribution, by_sample_id: bool = False) -> None:
        self.attribution, self.by_sample_id = attribution, by_sample_id
        self.convergence_delta: Tensor | None = None

    def __call__(self, images: Tensor, targets: Tensor, ids: Tensor) -> Tensor:
        kwargs: dict[str, Any] = {"target": targets, "return_patches": True}
        if self.by_sample_id:
            kwargs["sample_ids"] = ids
        if self.attribution.has_convergence_delta():
            patches, delta = self.attribution.attribute(images, return_convergence_delta=True, **kwargs)
            self.convergence_delta = delta
        else:
            patches = self.attribution.attribute(images, **kwargs)
        return patches.flatten(1)


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method with its parameters, e.g. ``MethodSpec("fg", {"layers": [2, 3], "kappa": 0.5})``.

    Attributes:
        name: registry key (see :data:`METHODS`).
        params: the stored parameters (JSON-serialisable), as given: defaults left out stay out of :attr:`key`;
            checked against the method's typed parameters (:attr:`typed_params`).
        label: display name in tables and figures (default: the typed parameters' :meth:`MethodParams.label`,
            e.g. ``FG L[3,4] combined κ=0.5 c=10`` or ``random(seed=4)``).

    Raises:
        ValueError: an unknown method, or parameters its typed parameters refuse.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; expected one of {sorted(METHODS)}")
        object.__setattr__(self, "params", dict(sorted(self.params.items())))
        typed = METHODS[self.name].params_type.from_params(self.params)  # refuses bad parameters, naming them
        if not self.label:
            object.__setattr__(self, "label", typed.label(self.name, self.params))

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
    def typed_params(self) -> MethodParams:
        """The parameters as the method family's dataclass (defaults filled in)."""
        return METHODS[self.name].params_type.from_params(self.params)

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
class FGParams(MethodParams):
    """Parameters of an FG-TransMM method (the method or one of its controls); :meth:`to_params` gives the stored
    keys (``None`` seeds omitted, so specs written before the permuted-gates control keep their keys)."""

    layers: tuple[int, ...]  # gated blocks (0-based), sorted
    variant: str = "combined"  # the score (the method, an ablation or a residual control): gates.VARIANTS
    kappa: float = 0.5  # gate strength >= 0
    c_max: float = 10.0  # gate range >= 1
    shuffle_seed: int | None = None  # shuffled-decoder control
    permute_seed: int | None = None  # permuted-gates control
    mad_eps: str = "after_scale"  # robust scale of the scores (gates.MAD_EPS_PLACEMENTS); "in_mad": thesis code

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"layers={list(self.layers)!r}; expected at least one block index >= 0")
        _check_choice("variant", self.variant, VARIANTS)
        _check_range("kappa", self.kappa, 0.0)
        _check_range("c_max", self.c_max, 1.0)
        _check_choice("mad_eps", self.mad_eps, MAD_EPS_PLACEMENTS)
        object.__setattr__(self, "layers", tuple(sorted(self.layers)))
        object.__setattr__(self, "kappa", float(self.kappa))
        object.__setattr__(self, "c_max", float(self.c_max))

    def label(self, name: str, params: Mapping[str, Any]) -> str:
        """``FG L6 combined κ=0.5 c=10`` (``L[3,4]`` for several layers), then ``shuffled decoder s<seed>``,
        ``permuted gates s<seed>`` and ``scale <mad_eps>`` where set: the protocol's labels."""
        where = f"L{self.layers[0]}" if len(self.layers) == 1 else "L[" + ",".join(map(str, self.layers)) + "]"
        label = f"FG {where} {self.variant} κ={self.kappa:g} c={self.c_max:g}"
        if self.shuffle_seed is not None:
            label += f" shuffled decoder s{self.shuffle_seed}"
        if self.permute_seed is not None:
            label += f" permuted gates s{self.permute_seed}"
        if self.mad_eps != "after_scale":
            label += f" scale {self.mad_eps}"
        return label

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
    return METHODS[spec.name].build(model, saes or {}, spec.typed_params)


@dataclass(frozen=True)
class IntegratedGradientsParams(MethodParams):
    """Parameters of Integrated Gradients (:class:`PatchIntegratedGradients`)."""

    baseline: float | tuple[float, ...] = 0.0  # model-input value(s) of the baseline image: one, or one per channel
    n_steps: int = 50  # Gauss-Legendre steps >= 1

    def __post_init__(self) -> None:
        super().__post_init__()
        one = isinstance(self.baseline, (int, float))
        values = (float(self.baseline),) if one else tuple(float(v) for v in self.baseline)
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(f"baseline={self.baseline!r}; expected a finite number or a non-empty list of them")
        if self.n_steps < 1:
            raise ValueError(f"n_steps={self.n_steps!r}; expected an int >= 1")
        object.__setattr__(self, "baseline", values[0] if one else values)


@dataclass(frozen=True)
class RandomParams(MethodParams):
    """Parameters of the random baseline (:class:`RandomPatches`)."""

    seed: int = 0


def _without_params(attribution: Callable[[nn.Module], PatchAttribution]) -> Builder:
    """The builder of a method without parameters: ``attribution(model)``."""
    return lambda model, saes, params: CaptumPatchMethod(attribution(model))


# the methods without parameters (rollout and raw attention are class-agnostic: they check the target, then ignore it;
# attnlrp needs the ``lrp`` extra)
for _name, _attribution in (("transmm", TransMM), ("gradcam", TokenGradCAM), ("saliency", PatchSaliency),
                            ("rollout", AttentionRollout), ("raw_attention", RawAttention), ("attnlrp", AttnLRP)):
    register_method(_name)(_without_params(_attribution))


@register_method("fg", FGParams)
def _feature_gradient(model: nn.Module, saes: Mapping[int, SparseAutoencoder], params: FGParams) -> PatchMethod:
    """FG-TransMM or one of its controls (a score variant, the shuffled decoder or permuted gates); the
    permuted-gates control is seeded per sample id, so it does not depend on the batching."""
    missing = [layer for layer in params.layers if layer not in saes]
    if missing:
        raise ValueError(f"no SAE for gated layers {missing}; SAEs are available for layers {sorted(saes)}")
    method = FeatureGradientTransMM(model, {layer: saes[layer] for layer in params.layers}, kappa=params.kappa,
                                    c_max=params.c_max, variant=params.variant, mad_eps=params.mad_eps,
                                    shuffle_decoder_seed=params.shuffle_seed, permute_gates_seed=params.permute_seed)
    return CaptumPatchMethod(method, by_sample_id=True)


@register_method("integrated_gradients", IntegratedGradientsParams)
def _integrated_gradients(model: nn.Module, saes: Mapping[int, SparseAutoencoder],
                          params: IntegratedGradientsParams) -> PatchMethod:
    """:class:`PatchIntegratedGradients`; each call's convergence deltas are kept (``convergence_delta``)."""
    return CaptumPatchMethod(PatchIntegratedGradients(model, params.baseline, params.n_steps))


@register_method("random", RandomParams)
def _random(model: nn.Module, saes: Mapping[int, SparseAutoencoder], params: RandomParams) -> PatchMethod:
    """:class:`RandomPatches`, reproducible per (seed, sample id)."""
    return CaptumPatchMethod(RandomPatches(model, params.seed), by_sample_id=True)
