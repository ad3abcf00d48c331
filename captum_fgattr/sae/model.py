"""Sparse autoencoder on a ViT block's residual stream (docs/method.md §3).

    f = act((norm(x) - b_dec) @ W_enc + b_enc)          # (..., n_features)
    x_hat = denorm(f @ W_dec + b_dec)                   # (..., d_in)

with act = TopK (the k largest pre-activations, ReLU'd), ReLU, or JumpReLU (SAELens:
relu(pre) * (pre > threshold), one learned threshold per feature); SAELens SAEs with
``apply_b_dec_to_input=False`` encode norm(x) without subtracting b_dec.

Rows of ``W_dec`` (n_features, d_in) are the feature directions. ``denorm`` undoes the input
normalisation with the *same token's* statistics, so decoding needs those statistics: use
:meth:`SparseAutoencoder.forward` (encode + decode in one call), ``decode(f, x=x)`` (statistics
recomputed from ``x``) or ``decode(f, stats=stats)`` with the stats from :meth:`normalize`.

Exact fast encode (:meth:`SparseAutoencoder.encode_sparse`): a bfloat16 product finds candidate
features, an fp32 rescoring of the candidates gives the values, and a per-token margin bound proves that
the selection equals the one of the plain fp32 product; tokens that fail the check are recomputed with
the plain fp32 product. Bound, for token u = norm(x) - b_dec and feature j, with S_j the exact
pre-activation u . W_j + b_j, s^_j the bf16 estimate and r_j any fp32 computation of it:

    |s^_j - S_j| <= rho |s^_j| + E_bf16   E_bf16 = s (||u - bf16(u)|| w + ||u|| w_err + g_d ||u|| w + bias terms)
    |r_j  - S_j| <= E_fp32 = s g_(d+1) (||u|| w + max|b|)

(w = max_j ||W_j||, w_err = max_j ||W_j - bf16(W_j)||, g_n = n u32 / (1 - n u32), u32 = 2^-24, rho the
bf16 round-off of the output, the factor s = 1 + 2^-8 a margin for the rounding of the bound itself; the bf16
product must accumulate in fp32, as oneDNN (AMX / AVX512-BF16) and cuBLAS without reduced-precision
reductions do). A TopK token passes when its k-th and (k+1)-th rescored candidates differ by more than
4 E_fp32 and the k-th exceeds every non-candidate's upper bound by 3 E_fp32; then every fp32 product has
the same top-k set with no tie across the cut. A ReLU token passes when every candidate's sign is
certain (|v_j| > 2 E_fp32) and every non-candidate is certainly <= 0.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captum_fgattr.sae.config import ACTIVATIONS, NORMALIZATIONS, SAEConfig
from captum_fgattr.sae.io import PARAMS, read_sae_files, write_sae_files

__all__ = ["SAEConfig", "NormStats", "SparseAutoencoder", "ACTIVATIONS", "NORMALIZATIONS", "save_sae", "load_sae"]

LAYER_NORM_EPS = 1e-5  # added to the unbiased per-token std (published vision SAEs)
FAST_ENCODE_MIN_WORK = 1 << 26  # tokens * d_in * n_features below which fast_encode=None keeps the fp32 product

_U_BF16 = 2.0**-8  # unit round-off of bfloat16 (8-bit significand)
_U_FP32 = 2.0**-24
_TINY = 2.0**-126  # smallest normal float32: covers flushed subnormals in the bound
_SAFETY = 1.0 + 2.0**-8  # covers the fp32 rounding of computing the bound itself (relative error ~ d 2^-24)
_SLACK = 1.0 + 2.0**-6  # widens the candidate window so the margin check passes whenever the bound allows


def _gamma(n: int) -> float:
    """Bound factor of an fp32 sum of ``n`` products: |fl(sum) - sum| <= gamma(n) * sum |terms|."""
    return n * _U_FP32 / (1.0 - n * _U_FP32)


def _fast_bf16_matmul(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices much faster than fp32 ones (AMX / AVX512-BF16, sm >= 80)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


@contextlib.contextmanager
def _fp32_accumulation(device: torch.device) -> Iterator[None]:
    """bf16 products accumulate in fp32 (cuBLAS may otherwise reduce in bf16, which voids the bound)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


@dataclass(frozen=True)
class _Bf16Encoder:
    """Cached copies of the encoder for the fast path and the norms its bound needs."""

    key: tuple[int, ...]  # identity and version of W_enc and b_enc when built
    weight: Tensor  # (n_features, d_in) fp32 W_enc.T, feature rows contiguous (rescoring)
    weight_bf16: Tensor  # (n_features, d_in) bf16 W_enc.T
    bias_bf16: Tensor | None  # (n_features,) bf16 b_enc; None when b_enc is all zero
    w_norm: float  # max_j ||W_enc[:, j]||
    w_err_norm: float  # max_j ||W_enc[:, j] - bf16(W_enc[:, j])||
    b_max: float  # max_j |b_enc[j]|


@dataclass(frozen=True)
class NormStats:
    """Per-token statistics of the input normalisation: ``norm(x) = (x - shift) / scale``.

    ``shift`` and ``scale`` are (..., 1) tensors (or Python 0 / 1 for ``normalize="none"``).
    """

    shift: Tensor | float
    scale: Tensor | float


class SparseAutoencoder(nn.Module):
    """Sparse autoencoder with TopK, ReLU or JumpReLU activation and optional input normalisation.

    Args:
        config: the architecture (:class:`SAEConfig`).
        dtype, device: of the parameters. Inputs are cast to them; outputs come back in them.
        seed: seed of the initialisation (decoder rows random unit vectors, ``W_enc = W_dec.T``,
            biases zero); ``None`` uses the global torch RNG.
        fast_encode: the exact bf16-candidate path of :meth:`encode_sparse` (module docstring).
            ``None`` (default): used where the device has fast bf16 products (AMX / AVX512-BF16 CPUs,
            CUDA sm >= 80) and the product is large (``FAST_ENCODE_MIN_WORK``); ``True``: always;
            ``False``: never. Either way it is skipped for non-fp32 and JumpReLU SAEs, under autocast, with
            ``torch.get_float32_matmul_precision() != "highest"`` and when gradients are needed. It
            caches a transposed fp32 and a bf16 copy of ``W_enc`` (1.5x its memory). Also settable as
            the attribute ``fast_encode``.

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
        fast_encode: bool | None = None,
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
        if config.activation == "jumprelu":  # (n,) per-feature threshold; zero: JumpReLU = ReLU
            self.threshold = nn.Parameter(torch.zeros(n, dtype=dtype, device=device))
        self.fast_encode = fast_encode
        self._bf16_encoder: _Bf16Encoder | None = None
        self.last_fast_encode: dict[str, int] | None = None  # tokens, candidates, fallback rows of the last fast call
        self._fast_encode_declined: tuple[int, ...] | None = None  # weights key at which fast_encode=None gave up
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

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the stored tensors: W_enc, b_enc, W_dec, b_dec (+ threshold for JumpReLU)."""
        return PARAMS + (("threshold",) if self.config.activation == "jumprelu" else ())

    def extra_repr(self) -> str:
        c = self.config
        act = f"topk(k={c.k})" if c.activation == "topk" else c.activation
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

    def upcast(self) -> SparseAutoencoder:
        """This SAE if its parameters are float32 or wider, else a float32 copy of it (same config and device)."""
        if self.dtype.itemsize >= 4:
            return self
        copy = SparseAutoencoder(self.config, dtype=torch.float32, device=self.device, fast_encode=self.fast_encode)
        copy.load_state_dict(self.state_dict())
        return copy

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
        if mode == "layer_norm_saelens":  # divided by std + eps, restored with std
            shift = x.mean(dim=-1, keepdim=True)
            std = (x - shift).std(dim=-1, keepdim=True)
            return (x - shift) / (std + LAYER_NORM_EPS), NormStats(shift, std)
        # constant_norm_rescale: x * sqrt(d) / ||x||  (a zero token stays zero)
        norm = x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        scale = norm / math.sqrt(self.d_in)
        return x / scale, NormStats(0.0, scale)

    @staticmethod
    def denormalize(y: Tensor, stats: NormStats) -> Tensor:
        """Undo :meth:`normalize`: ``y * scale + shift`` with the token's own stats."""
        return y * stats.scale + stats.shift

    def encoder_input(self, x_norm: Tensor) -> Tensor:
        """``norm(x) - b_dec`` (``norm(x)`` when the config has ``apply_b_dec_to_input=False``), (..., d_in)."""
        return x_norm - self.b_dec if self.config.apply_b_dec_to_input else x_norm

    def pre_activation(self, x_norm: Tensor) -> Tensor:
        """``encoder_input(norm(x)) @ W_enc + b_enc``: (..., d_in) -> (..., n_features)."""
        return self.encoder_input(x_norm) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Activation on pre-activations (..., n_features): TopK (k largest, ReLU'd, rest 0), ReLU, or
        JumpReLU ``relu(pre) * (pre > threshold)`` (SAELens's formula)."""
        if self.config.activation == "relu":
            return torch.relu(pre)
        if self.config.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
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
        ReLU the largest number of active features of any token (shorter rows padded with zero values at
        distinct inactive indices). Index order within a row is unspecified. With the fast path
        (``fast_encode``) the indices equal those of the plain fp32 product and the values agree with it
        to fp32 round-off."""
        x_norm, _ = self.normalize(x)
        u = self.encoder_input(x_norm).reshape(-1, self.d_in)
        if self._fast_encode_ok(u):
            codes = self._fast_codes(u)
            if codes is not None:
                return tuple(c.reshape(*x_norm.shape[:-1], c.shape[-1]) for c in codes)  # type: ignore[return-value]
        pre = self.pre_activation(x_norm)
        if self.config.activation == "topk":
            return self._topk(pre)
        f = self.activate(pre)
        width = max(1, int((f > 0).sum(dim=-1).max()))
        return f.topk(width, dim=-1, sorted=False)

    # ------------------------------------------------------------------ exact fast encode
    def _fast_encode_ok(self, u: Tensor) -> bool:
        """Whether :meth:`encode_sparse` may take the bf16-candidate path for the (N, d_in) rows ``u``."""
        if self.fast_encode is False or self.config.activation == "jumprelu":  # the fast path has no threshold
            return False
        if u.dtype != torch.float32 or u.shape[0] == 0:
            return False
        if u.device.type not in ("cpu", "cuda") or (torch.is_grad_enabled() and (u.requires_grad or self.W_enc.requires_grad)):
            return False  # the fast values carry no graph; training goes through encode()
        if torch.is_autocast_enabled(u.device.type) or torch.get_float32_matmul_precision() != "highest":
            return False  # the reference product itself would not be fp32
        if self.fast_encode is None:
            return (u.shape[0] * self.d_in * self.n_features >= FAST_ENCODE_MIN_WORK and _fast_bf16_matmul(u.device)
                    and self._fast_encode_declined != self._weights_key())
        return True

    def _weights_key(self) -> tuple[int, ...]:
        return (self.W_enc.data_ptr(), self.W_enc._version, self.b_enc.data_ptr(), self.b_enc._version)

    def _record_fallback(self, fallback: int) -> None:
        """Count the rows the margin check sent to the plain product; with ``fast_encode=None``, stop using the
        fast path for these weights once a call sends more than a quarter of its rows there (it no longer pays)."""
        self.last_fast_encode["fallback"] = fallback
        if self.fast_encode is None and 4 * fallback > self.last_fast_encode["tokens"]:
            self._fast_encode_declined = self._weights_key()

    def _low_precision_encoder(self) -> _Bf16Encoder:
        """The cached encoder copies and norms, rebuilt when ``W_enc`` or ``b_enc`` change (in place or moved)."""
        key = self._weights_key()
        if self._bf16_encoder is None or self._bf16_encoder.key != key:
            w = self.W_enc.detach().T.contiguous()
            w_bf16 = w.to(torch.bfloat16)
            b = self.b_enc.detach()
            self._bf16_encoder = _Bf16Encoder(
                key=key, weight=w, weight_bf16=w_bf16, bias_bf16=b.to(torch.bfloat16) if bool((b != 0).any()) else None,
                w_norm=float(w.norm(dim=1).max()), w_err_norm=float((w - w_bf16.float()).norm(dim=1).max()),
                b_max=float(b.abs().max()))
        return self._bf16_encoder

    def _block_rows(self) -> int:
        """R of the strided feature blocks {g, g + G, ..., g + (R-1) G} (G = n / R >= 4 k) whose maxima prefilter candidates."""
        k = self.config.k or 1
        return next((r for r in (16, 8, 4, 2) if self.n_features % r == 0 and self.n_features // r >= 4 * k), 1)

    def _fast_codes(self, u: Tensor) -> tuple[Tensor, Tensor] | None:
        """Exact sparse codes of the (N, d_in) rows ``u = norm(x) - b_dec``: bf16 candidates, fp32 rescoring,
        margin check, plain fp32 for the rows that fail. ``None`` (with ``fast_encode=None``) when too many
        features are candidates for the path to pay."""
        enc = self._low_precision_encoder()
        (N, d), n = u.shape, self.n_features
        u_bf16 = u.to(torch.bfloat16)
        with _fp32_accumulation(u.device):
            s_hat = u_bf16 @ enc.weight_bf16.T  # (N, n) bf16
        rho = _U_BF16 / (1 - _U_BF16)  # |bf16(y) - y| <= rho |bf16(y)|
        bias_err = 0.0
        if enc.bias_bf16 is not None:
            s_hat += enc.bias_bf16  # a second bf16 rounding, and b_enc rounded to bf16
            rho, bias_err = rho * (2 + rho), (rho * (1 + _U_BF16) + _U_BF16) * enc.b_max
        u_norm = u.norm(dim=1)
        du_norm = (u - u_bf16.float()).norm(dim=1)
        w_bf16 = enc.w_norm + enc.w_err_norm
        tiny = (d + 2) * _TINY * (1 + u_norm) * (1 + enc.w_norm + enc.b_max)
        err_bf16 = _SAFETY * (du_norm * w_bf16 + u_norm * enc.w_err_norm + _gamma(d) * (u_norm + du_norm) * w_bf16 + bias_err + tiny)
        err_fp32 = _SAFETY * (_gamma(d + 1) * (u_norm * enc.w_norm + enc.b_max) + tiny)

        R = self._block_rows()
        G = n // R
        block_max = s_hat.view(N, R, G).amax(1)  # (N, G): max over the strided block {g + i G}
        if self.config.activation == "topk":
            k = self.config.k
            low = block_max.topk(k, dim=1, sorted=False).values.amin(1).float()  # k features have s_hat >= low
            tau = low - (2 * rho * low.abs() + 2 * err_bf16 + 4 * err_fp32) * _SLACK
        else:
            tau = -(err_bf16 + err_fp32) * _SLACK / (1 - rho)
        tau = (tau - tau.abs() * 2 * _U_BF16 - _TINY).to(torch.bfloat16)  # rounded down: the window only grows
        noncand_max = tau.float() + rho * tau.float().abs() + err_bf16  # >= S_j of every feature with s_hat_j < tau

        brow, bcol = (block_max >= tau[:, None]).nonzero(as_tuple=True)
        if self.fast_encode is None and brow.numel() > N * G // 4:
            return None  # dense candidates (e.g. a ReLU SAE with many active features): the plain product is cheaper
        feats = bcol[:, None] + G * torch.arange(R, device=u.device)  # (blocks, R)
        keep = s_hat[brow[:, None], feats] >= tau[brow, None]
        key = (brow[:, None] * n + feats)[keep].sort().values  # candidates, row-major
        rows, cols = key // n, key % n
        counts = torch.bincount(rows, minlength=N)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(crow, cols, u.new_zeros(len(cols)), size=(N, n), check_invariants=False)
            dots = torch.sparse.sampled_addmm(pattern, u, enc.weight.T).values()
        width = max(int(counts.max()) if N else 0, (self.config.k or 0) + 1)
        pos = torch.arange(len(rows), device=u.device) - crow[rows]
        rescored = u.new_full((N, width), -math.inf)  # (N, width): fp32 candidates, -inf padding
        rescored[rows, pos] = dots + self.b_enc.detach()[cols]
        features = torch.zeros(N, width, dtype=torch.long, device=u.device)
        features[rows, pos] = cols
        self.last_fast_encode = {"tokens": N, "candidates": len(cols), "fallback": 0}
        if self.config.activation == "topk":
            return self._verified_topk(u, rescored, features, counts, noncand_max, err_fp32)
        return self._verified_relu(u, rescored, features, noncand_max, err_fp32)

    def _verified_topk(self, u: Tensor, rescored: Tensor, features: Tensor, counts: Tensor,
                       noncand_max: Tensor, err_fp32: Tensor) -> tuple[Tensor, Tensor]:
        """TopK of the (N, W) rescored candidates where the margins prove it; plain fp32 rows elsewhere."""
        k = self.config.k
        top, at = rescored.topk(k + 1, dim=1)  # sorted, descending
        kth, next_ = top[:, k - 1], top[:, k]
        ok = (counts >= k) & (kth - next_ > 4 * err_fp32) & (kth - 3 * err_fp32 > noncand_max)
        values, indices = torch.relu(top[:, :k]), features.gather(1, at[:, :k])
        bad = (~ok).nonzero().squeeze(1)
        self._record_fallback(len(bad))
        if len(bad):
            values[bad], indices[bad] = self._topk(u[bad] @ self.W_enc + self.b_enc)
        return values, indices

    def _verified_relu(self, u: Tensor, rescored: Tensor, features: Tensor,
                       noncand_max: Tensor, err_fp32: Tensor) -> tuple[Tensor, Tensor]:
        """ReLU codes of the (N, W) rescored candidates where every sign is certain; plain fp32 rows elsewhere."""
        on = rescored > 2 * err_fp32[:, None]
        ok = (on | (rescored <= -2 * err_fp32[:, None])).all(1) & (noncand_max + err_fp32 <= 0)
        codes = torch.where(on, rescored, 0.0)
        bad = (~ok).nonzero().squeeze(1)
        self._record_fallback(len(bad))
        if len(bad):  # append the failing rows' plain codes as extra columns
            plain = torch.relu(u[bad] @ self.W_enc + self.b_enc)
            extra = max(1, int((plain > 0).sum(1).max()))
            vals, idx = plain.topk(extra, dim=1)
            codes = torch.cat([codes, codes.new_zeros(len(codes), extra)], 1)
            features = torch.cat([features, features.new_zeros(len(features), extra)], 1)
            codes[bad] = torch.cat([vals, vals.new_zeros(len(bad), codes.shape[1] - extra)], 1)
            features[bad] = torch.cat([idx, idx.new_zeros(len(bad), codes.shape[1] - extra)], 1)
        m = max(1, int((codes > 0).sum(1).max()))
        values, at = codes.topk(m, dim=1)  # actives first
        return values, self._distinct_padding(features.gather(1, at), values > 0)

    def _distinct_padding(self, indices: Tensor, active: Tensor) -> Tensor:
        """(N, m) indices whose inactive slots get the smallest feature ids not active in their row (all distinct)."""
        N, m = indices.shape
        pool = min(self.n_features, 2 * m)
        taken = torch.zeros(N, pool + 1, dtype=torch.bool, device=indices.device)  # column ``pool``: ids >= pool
        taken.scatter_(1, torch.where(active, indices.clamp(max=pool), pool), True)
        free = taken[:, :pool].to(torch.uint8).argsort(dim=1, stable=True)  # free ids first, ascending
        rank = ((~active).cumsum(1) - 1).clamp(min=0)
        return torch.where(active, indices, free.gather(1, rank))

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
    def save(self, directory: str | os.PathLike[str], metrics: dict[str, float] | None = None) -> Path:
        """Write ``sae.safetensors`` + ``config.json`` (Prisma-compatible keys) into ``directory``; returns it."""
        tensors = {name: getattr(self, name).detach().to("cpu").contiguous() for name in self.param_names}
        return write_sae_files(self.config, tensors, self.dtype, directory, metrics)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        download: bool = False,
        cache_dir: str | None = None,
    ) -> SparseAutoencoder:
        """Load a folder written by :meth:`save` or a published Prisma-layout folder (see
        :func:`captum_fgattr.sae.io.read_sae_files` for the formats, ``download`` and the errors).

        Args:
            device, dtype: of the returned SAE (default CPU; dtype from the config, else the weights).
        """
        config, state, stored_dtype = read_sae_files(path, download=download, cache_dir=cache_dir)
        sae = cls(config, dtype=dtype or stored_dtype, device=device)
        with torch.no_grad():
            for name in sae.param_names:
                getattr(sae, name).copy_(state[name])
        sae.requires_grad_(False)
        return sae.eval()


def save_sae(sae: SparseAutoencoder, directory: str | os.PathLike[str], metrics: dict[str, float] | None = None) -> Path:
    """Write ``sae`` to ``directory`` as ``sae.safetensors`` + ``config.json``; returns the folder."""
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"expected a SparseAutoencoder, got {type(sae).__name__}")
    return sae.save(directory, metrics)


def load_sae(path: str | os.PathLike[str], *, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None, download: bool = False, cache_dir: str | None = None) -> SparseAutoencoder:
    """:meth:`SparseAutoencoder.load`: this package's SAE folders and published Prisma-layout ones."""
    return SparseAutoencoder.load(path, device=device, dtype=dtype, download=download, cache_dir=cache_dir)
