"""Architecture of a sparse autoencoder: :class:`SAEConfig` (what :mod:`.model` builds and :mod:`.io` stores)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SAEConfig", "ACTIVATIONS", "NORMALIZATIONS"]

ACTIVATIONS: tuple[str, ...] = ("topk", "relu", "jumprelu")
#: "layer_norm_saelens" is SAELens's layer norm: it divides by std + eps but restores with std (no eps)
NORMALIZATIONS: tuple[str, ...] = ("none", "layer_norm", "constant_norm_rescale", "layer_norm_saelens")


@dataclass(frozen=True)
class SAEConfig:
    """Architecture of one sparse autoencoder (training settings live in ``TrainConfig``)."""

    d_in: int  # width of the residual stream the SAE reads (e.g. 768 for ViT-B)
    n_features: int  # dictionary size (``d_sae``); expansion factor = n_features / d_in
    activation: str = "topk"  # "topk" (keep k largest, ReLU them), "relu" (L1-penalised) or "jumprelu" (SAELens)
    k: int | None = 128  # number of active features for "topk"; None for "relu" / "jumprelu"
    normalize: str = "none"  # one of NORMALIZATIONS
    hook_layer: int | None = None  # 0-based block index (timm ``blocks[i]``) the SAE was trained on
    model_name: str | None = None  # free-text provenance, e.g. "vit_base_patch16_224"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # provenance, not used
    apply_b_dec_to_input: bool = True  # encoder reads norm(x) - b_dec (False: norm(x); SAELens option)

    def __post_init__(self) -> None:
        if not isinstance(self.apply_b_dec_to_input, bool):
            raise ValueError(f"apply_b_dec_to_input={self.apply_b_dec_to_input!r}; expected a bool")
        for name in ("d_in", "n_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}; expected a positive int")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; expected one of {list(ACTIVATIONS)}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r}; expected one of {list(NORMALIZATIONS)}")
        if self.activation == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
                raise ValueError(f"k={self.k!r}; TopK needs a positive int k")
            if self.k > self.n_features:
                raise ValueError(f"k={self.k} > n_features={self.n_features}; expected 1 <= k <= n_features")
        elif self.k is not None:
            raise ValueError(f"k={self.k!r} given with activation={self.activation!r}; pass k=None (only TopK has a k)")
        if self.normalize in ("layer_norm", "layer_norm_saelens") and self.d_in < 2:
            raise ValueError(f"normalize={self.normalize!r} needs d_in >= 2 (unbiased std), got d_in={self.d_in}")
        if self.hook_layer is not None and (not isinstance(self.hook_layer, int) or self.hook_layer < 0):
            raise ValueError(f"hook_layer={self.hook_layer!r}; expected a non-negative int or None")

    @property
    def expansion(self) -> float:
        return self.n_features / self.d_in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
