"""Sparse autoencoder on a ViT block's residual stream (DESIGN §6).

    f = act((norm(x) - b_dec) @ W_enc + b_enc)          # (..., n_features)
    x_hat = denorm(f @ W_dec + b_dec)                   # (..., d_in)

Rows of ``W_dec`` (n_features, d_in) are the feature directions. ``denorm`` undoes the input
normalisation with the *same token's* statistics, so decoding needs those statistics: use
:meth:`SparseAutoencoder.forward` (encode + decode in one call), ``decode(f, x=x)`` (statistics
recomputed from ``x``) or ``decode(f, stats=stats)`` with the stats from :meth:`normalize`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SAEConfig", "NormStats", "SparseAutoencoder", "ACTIVATIONS", "NORMALIZATIONS"]

ACTIVATIONS: tuple[str, ...] = ("topk", "relu")
NORMALIZATIONS: tuple[str, ...] = ("none", "layer_norm", "constant_norm_rescale")
LAYER_NORM_EPS = 1e-5  # added to the unbiased per-token std (published vision SAEs)


@dataclass(frozen=True)
class SAEConfig:
    """Architecture of one sparse autoencoder (training settings live in ``TrainConfig``)."""

    d_in: int  # width of the residual stream the SAE reads (e.g. 768 for ViT-B)
    n_features: int  # dictionary size (``d_sae``); expansion factor = n_features / d_in
    activation: str = "topk"  # "topk" (keep k largest, ReLU them) or "relu" (L1-penalised)
    k: int | None = 128  # number of active features for "topk"; ignored (None) for "relu"
    normalize: str = "none"  # "none" | "layer_norm" | "constant_norm_rescale"
    hook_layer: int | None = None  # 0-based block index (timm ``blocks[i]``) the SAE was trained on
    model_name: str | None = None  # free-text provenance, e.g. "vit_base_patch16_224"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # provenance, not used

    def __post_init__(self) -> None:
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
            raise ValueError(f"k={self.k!r} given with activation='relu'; pass k=None (L1 sparsity is set in training)")
        if self.normalize == "layer_norm" and self.d_in < 2:
            raise ValueError(f"normalize='layer_norm' needs d_in >= 2 (unbiased std), got d_in={self.d_in}")
        if self.hook_layer is not None and (not isinstance(self.hook_layer, int) or self.hook_layer < 0):
            raise ValueError(f"hook_layer={self.hook_layer!r}; expected a non-negative int or None")

    @property
    def expansion(self) -> float:
        return self.n_features / self.d_in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NormStats:
    """Per-token statistics of the input normalisation: ``norm(x) = (x - shift) / scale``.

    ``shift`` and ``scale`` are (..., 1) tensors (or Python 0 / 1 for ``normalize="none"``).
    """

    shift: Tensor | float
    scale: Tensor | float


class SparseAutoencoder(nn.Module):
    """Sparse autoencoder with TopK or ReLU activation and optional input normalisation.

    Args:
        config: the architecture (:class:`SAEConfig`).
        dtype, device: of the parameters. Inputs are cast to them; outputs come back in them.
        seed: seed of the initialisation (decoder rows random unit vectors, ``W_enc = W_dec.T``,
            biases zero); ``None`` uses the global torch RNG.

    Shapes: ``x`` (..., d_in) -> ``f`` (..., n_features) -> ``x_hat`` (..., d_in).

    Example:
        >>> sae = SparseAutoencoder(SAEConfig(d_in=16, n_features=64, k=4), seed=0)
        >>> x = torch.randn(2, 9, 16)
        >>> f = sae.encode(x); x_hat = sae(x)
        >>> tuple(f.shape), tuple(x_hat.shape), int((f[0, 0] != 0).sum()) <= 4
        ((2, 9, 64), (2, 9, 16), True)
    """

    def __init__(
        self,
        config: SAEConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, SAEConfig):
            raise TypeError(f"config must be an SAEConfig, got {type(config).__name__}")
        self.config = config
        dtype = dtype or torch.float32
        if not dtype.is_floating_point:
            raise TypeError(f"dtype={dtype}; expected a floating-point dtype")
        d, n = config.d_in, config.n_features
        self.W_enc = nn.Parameter(torch.empty(d, n, dtype=dtype, device=device))
        self.b_enc = nn.Parameter(torch.zeros(n, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(torch.empty(n, d, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype, device=device))
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ properties
    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def n_features(self) -> int:
        return self.config.n_features

    @property
    def d_sae(self) -> int:
        """Alias of :attr:`n_features` (the Prisma / SAELens name)."""
        return self.config.n_features

    @property
    def k(self) -> int | None:
        return self.config.k

    @property
    def activation(self) -> str:
        return self.config.activation

    @property
    def normalization(self) -> str:
        return self.config.normalize

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def extra_repr(self) -> str:
        c = self.config
        act = f"topk(k={c.k})" if c.activation == "topk" else "relu"
        return f"d_in={c.d_in}, n_features={c.n_features}, activation={act}, normalize={c.normalize!r}"

    # ------------------------------------------------------------------ init / maintenance
    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Decoder rows: random unit vectors; encoder = decoder transpose; biases zero."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
        w = torch.randn(self.n_features, self.d_in, generator=gen, dtype=torch.float32)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row (feature direction) to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def check_width(self, d_model: int, where: str = "the model") -> None:
        """Raise ``ValueError`` if the SAE's ``d_in`` differs from the width ``d_model`` of ``where``."""
        if int(d_model) != self.d_in:
            raise ValueError(
                f"SAE width mismatch at {where}: the SAE reads d_in={self.d_in} features but the "
                f"residual stream there has width {int(d_model)}"
            )

    # ------------------------------------------------------------------ math
    def _prepare(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (..., {self.d_in}), got {type(x).__name__}")
        if not (x.is_floating_point()):
            raise TypeError(f"expected a floating-point tensor, got dtype={x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"input of shape {tuple(x.shape)}; expected (..., d_in={self.d_in})")
        return x.to(device=self.device, dtype=self.dtype)

    def normalize(self, x: Tensor) -> tuple[Tensor, NormStats]:
        """Input normalisation. ``x`` (..., d_in) -> (``norm(x)`` (..., d_in), per-token stats)."""
        x = self._prepare(x)
        mode = self.config.normalize
        if mode == "none":
            return x, NormStats(0.0, 1.0)
        if mode == "layer_norm":
            shift = x.mean(dim=-1, keepdim=True)
            scale = x.std(dim=-1, keepdim=True) + LAYER_NORM_EPS  # unbiased std
            return (x - shift) / scale, NormStats(shift, scale)
        # constant_norm_rescale: x * sqrt(d) / ||x||  (a zero token stays zero)
        norm = x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        scale = norm / math.sqrt(self.d_in)
        return x / scale, NormStats(0.0, scale)

    @staticmethod
    def denormalize(y: Tensor, stats: NormStats) -> Tensor:
        """Undo :meth:`normalize`: ``y * scale + shift`` with the token's own stats."""
        return y * stats.scale + stats.shift

    def pre_activation(self, x_norm: Tensor) -> Tensor:
        """``(norm(x) - b_dec) @ W_enc + b_enc``: (..., d_in) -> (..., n_features)."""
        return (x_norm - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Activation on pre-activations (..., n_features): TopK (k largest, ReLU'd, rest 0) or ReLU."""
        if self.config.activation == "relu":
            return torch.relu(pre)
        values, index = self._topk(pre)
        return torch.zeros_like(pre).scatter(-1, index, values)

    def _topk(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        values, index = pre.topk(self.config.k, dim=-1, sorted=False)
        return torch.relu(values), index

    def encode(self, x: Tensor) -> Tensor:
        """Sparse codes ``f`` (..., n_features) of tokens ``x`` (..., d_in)."""
        x_norm, _ = self.normalize(x)
        return self.activate(self.pre_activation(x_norm))

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The non-zero codes of ``x`` (..., d_in) without a dense (..., n_features) tensor:
        ``(values (..., m), indices (..., m))`` with ``f[..., indices] = values``; m = k for TopK, and for
        ReLU the largest number of active features of any token (shorter rows padded with zero values)."""
        x_norm, _ = self.normalize(x)
        pre = self.pre_activation(x_norm)
        if self.config.activation == "topk":
            return self._topk(pre)
        f = torch.relu(pre)
        width = max(1, int((f > 0).sum(dim=-1).max()))
        return f.topk(width, dim=-1, sorted=False)

    def decode_normalized(self, f: Tensor) -> Tensor:
        """``f @ W_dec + b_dec``: reconstruction in the normalised space, (..., n) -> (..., d_in)."""
        if f.shape[-1] != self.n_features:
            raise ValueError(f"codes of shape {tuple(f.shape)}; expected (..., n_features={self.n_features})")
        return f.to(device=self.device, dtype=self.dtype) @ self.W_dec + self.b_dec

    def decode(self, f: Tensor, x: Tensor | None = None, stats: NormStats | None = None) -> Tensor:
        """Reconstruction ``x_hat`` (..., d_in) from codes ``f`` (..., n_features).

        With input normalisation the result is denormalised with the original tokens'
        statistics: pass the tokens ``x`` (..., d_in) that ``f`` encodes, or ``stats`` from
        :meth:`normalize`. With ``normalize="none"`` neither is needed.
        """
        y = self.decode_normalized(f)
        if self.config.normalize == "none":
            return y
        if stats is None:
            if x is None:
                raise ValueError(
                    f"decode() of an SAE with normalize={self.config.normalize!r} needs the token "
                    "statistics: pass x= (the encoded tokens) or stats= (from normalize()), or use forward(x)"
                )
            _, stats = self.normalize(x)
        return self.denormalize(y, stats)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``x_hat`` (..., d_in) of tokens ``x`` (..., d_in)."""
        return self.forward_with_codes(x)[0]

    def forward_with_codes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_hat (..., d_in), f (..., n_features))`` in one pass."""
        x_norm, stats = self.normalize(x)
        f = self.activate(self.pre_activation(x_norm))
        return self.denormalize(self.decode_normalized(f), stats), f

    # ------------------------------------------------------------------ storage
    def save(self, directory: str, metrics: dict[str, float] | None = None) -> None:
        """Write ``sae.safetensors`` + ``config.json`` (Prisma-compatible keys) into ``directory``."""
        from captum_fgattr.sae.io import save_sae

        save_sae(self, directory, metrics=metrics)

    @classmethod
    def load(
        cls,
        path: str,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        download: bool = False,
    ) -> SparseAutoencoder:
        """Load a folder written by :meth:`save` or a published Prisma-layout folder."""
        from captum_fgattr.sae.io import load_sae

        return load_sae(path, device=device, dtype=dtype, download=download)
