"""Feature-gradient gates (docs/method.md §2), as pure tensor functions.

Shapes: B images, T patch tokens, D residual width, K SAE features.

The SAE's decoder rows d_k and bias b_dec live in its normalised input space (u = norm(x)), the gradient
g_t = ∂y/∂x_t in the residual stream's. The scores that pair them take the gradient into the SAE's space first
(:func:`sae_space_gradient`, docs/method.md §2.1 "SAEs with input normalisation").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: scores computed from the SAE's codes and decoder
SAE_VARIANTS = ("combined", "activation", "gradient", "gradient_signed")
#: the SAE scores that read the codes f_t (the gradient-only ones sum over every decoder row instead)
CODE_VARIANTS = ("combined", "activation")
#: controls without SAE codes; ``grad_input_centered`` and ``bias_projection`` read the SAE's normalisation and b_dec
RESIDUAL_VARIANTS = ("grad_input", "grad_input_centered", "bias_projection", "token_norm")
VARIANTS = SAE_VARIANTS + RESIDUAL_VARIANTS
#: the only score that pairs f_k with d_k, hence the only one a shuffled decoder can change
DECODER_PAIRED_VARIANTS = ("combined",)
MAD_SCALE = 1.4826
MAD_EPS = 1e-8


def decode_codes(values: Tensor, indices: Tensor, decoder: Tensor) -> Tensor:
    """Dᵀf from sparse codes: (..., m) values at (..., m) feature indices, (K, D) decoder -> (..., D).

    Only the active decoder rows are read (an ``embedding_bag`` sum), never a dense (..., K) tensor.
    """
    m = values.shape[-1]
    flat = F.embedding_bag(indices.reshape(-1, m), decoder, per_sample_weights=values.reshape(-1, m).to(decoder),
                           mode="sum")
    return flat.reshape(*values.shape[:-1], decoder.shape[1])


def sae_space_gradient(grad: Tensor, scale: Tensor | float) -> Tensor:
    """The gradient in the SAE's normalised space: g̃_t = scale_t · g_t.

    The SAE reconstructs x̂_t = denorm(û_t) = scale_t·û_t + shift_t with the token's own statistics held fixed
    (as :meth:`SparseAutoencoder.decode` with ``stats=``), so ∂y/∂û_t = scale_t · ∂y/∂x_t, the covector that
    pairs with the decoder rows, b_dec and norm(x_t).

    Args:
        grad: (B, T, D) gradient g_t of the target logit at the gated resid_post.
        scale: (B, T, 1) per-token ``NormStats.scale`` of ``SparseAutoencoder.normalize``, or the Python
            number 1 of an SAE without normalisation (``grad`` is then returned as it is).

    Returns:
        (B, T, D) g̃_t.
    """
    if isinstance(scale, (int, float)) and scale == 1:
        return grad
    return grad * scale


def feature_gradient_scores(grad: Tensor, decoder: Tensor, variant: str = "combined",
                            codes: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Per-patch scores s_t.

    Args:
        grad: (B, T, D) gradient g̃_t of the target logit in the SAE's space (:func:`sae_space_gradient`;
            g_t = ∂y/∂x_t itself for an SAE without input normalisation).
        decoder: (K, D) decoder directions d_k (rows), as stored (or row-permuted for the control).
        variant: ``combined``: Σ_k f_tk⟨g̃_t, d_k⟩ = ⟨g̃_t, Dᵀf_t⟩; ``activation``: Σ_k f_tk;
            ``gradient``: Σ_k |⟨g̃_t, d_k⟩|; ``gradient_signed``: Σ_k ⟨g̃_t, d_k⟩ = ⟨g̃_t, Σ_k d_k⟩
            (the last two sum over all K features and need no codes).
        codes: (values, indices), each (B, T, m): the SAE codes f_t in sparse form (``f_t[indices] = values``,
            others 0); needed for :data:`CODE_VARIANTS`.

    Returns:
        (B, T) scores.
    """
    if variant in CODE_VARIANTS and codes is None:
        raise ValueError(f"variant={variant!r} needs the SAE codes")
    if variant == "combined":
        return (decode_codes(*codes, decoder) * grad).sum(dim=-1)
    if variant == "activation":
        return codes[0].sum(dim=-1)
    if variant == "gradient":
        return (grad @ decoder.T).abs().sum(dim=-1)
    if variant == "gradient_signed":
        return grad @ decoder.sum(dim=0)
    raise ValueError(f"variant={variant!r}; expected one of {list(SAE_VARIANTS)}")


def residual_scores(x: Tensor, grad: Tensor, sae_grad: Tensor, centered_x: Tensor, b_dec: Tensor,
                    variant: str) -> Tensor:
    """Per-patch scores of the controls without SAE codes.

    Args:
        x: (B, T, D) resid_post patch tokens as captured.
        grad: (B, T, D) gradient g_t of the target logit at x (residual space).
        sae_grad: (B, T, D) the same gradient in the SAE's space, g̃_t (:func:`sae_space_gradient`; ``grad``
            itself for an SAE without input normalisation).
        centered_x: (B, T, D) the tokens in the SAE's input space minus its decoder bias, norm(x_t) − b_dec
            (norm = the SAE's input normalisation; the identity for most SAEs).
        b_dec: (D,) the SAE's decoder bias.
        variant: ``grad_input``: ⟨g_t, x_t⟩; ``grad_input_centered``: ⟨g̃_t, norm(x_t) − b_dec⟩;
            ``bias_projection``: −⟨g̃_t, b_dec⟩; ``token_norm``: ‖x_t‖₂.

    Returns:
        (B, T) scores.
    """
    if variant == "grad_input":
        return (grad * x).sum(dim=-1)
    if variant == "grad_input_centered":
        return (sae_grad * centered_x).sum(dim=-1)
    if variant == "bias_projection":
        return -(sae_grad @ b_dec)
    if variant == "token_norm":
        return x.norm(dim=-1)
    raise ValueError(f"variant={variant!r}; expected one of {list(RESIDUAL_VARIANTS)}")


def score_magnitudes(variant: str, scores: Tensor, x: Tensor, grad: Tensor, sae_grad: Tensor, centered_x: Tensor,
                     b_dec: Tensor, decoder: Tensor, codes: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Per-patch size M_t of the terms a score adds up, the scale of its rounding error (M_t ≥ |s_t|).

    An inner product ⟨a_t, v_t⟩ gives ‖a_t‖·‖v_t‖ (its value can cancel to far below that, its rounding cannot):
    ``combined`` ‖g̃_t‖·‖Dᵀf_t‖, ``gradient_signed`` ‖g̃_t‖·‖Σ_k d_k‖, ``grad_input`` ‖g_t‖·‖x_t‖,
    ``grad_input_centered`` ‖g̃_t‖·‖norm(x_t) − b_dec‖, ``bias_projection`` ‖g̃_t‖·‖b_dec‖; ``gradient``
    Σ_k ‖g̃_t‖·‖d_k‖; the sums of non-negative terms (``activation``, ``token_norm``) their value |s_t|.

    Args:
        variant: one of :data:`VARIANTS`; scores: (B, T) its scores; x, grad, sae_grad, centered_x, b_dec: as for
            :func:`residual_scores`; decoder, codes: as for :func:`feature_gradient_scores`.

    Returns:
        (B, T) M_t.
    """
    if variant in ("activation", "token_norm"):
        return scores.abs()
    if variant == "grad_input":
        return grad.norm(dim=-1) * x.norm(dim=-1)
    sae_grad_norm = sae_grad.norm(dim=-1)
    if variant == "combined":
        return sae_grad_norm * decode_codes(*codes, decoder).norm(dim=-1)
    if variant == "gradient":
        return sae_grad_norm * decoder.norm(dim=-1).sum()
    if variant == "gradient_signed":
        return sae_grad_norm * decoder.sum(dim=0).norm()
    if variant == "grad_input_centered":
        return sae_grad_norm * centered_x.norm(dim=-1)
    if variant == "bias_projection":
        return sae_grad_norm * b_dec.norm()
    raise ValueError(f"variant={variant!r}; expected one of {list(VARIANTS)}")


#: C in the rounding tolerance C · eps(dtype) · √D of :func:`degenerate_scores`
DEGENERATE_TOL_FACTOR = 4.0


def degenerate_scores(scores: Tensor, magnitudes: Tensor, width: int, dtype: torch.dtype | None = None) -> Tensor:
    """Images whose scores are constant up to rounding: max_t |s_t − median(s)| ≤ C · eps · √D · max_t M_t.

    The rounding error of a D-term inner product computed in precision eps is of order eps·√D·M_t (M_t the size of
    its terms, :func:`score_magnitudes`); C = :data:`DEGENERATE_TOL_FACTOR`. Such scores rank the patches by
    rounding noise, which the robust normalisation would stretch over the whole gate range: their gates are set to
    1 (docs/method.md §2.2). Exactly constant scores (MAD 0, already neutral) are included.

    Args:
        scores: (B, T) scores s_t.
        magnitudes: (B, T) M_t.
        width: D, the length of the score's inner products (the residual width).
        dtype: the precision the scores were computed in (default ``scores.dtype``).

    Returns:
        (B,) bool, True for a degenerate image.
    """
    tol = DEGENERATE_TOL_FACTOR * torch.finfo(dtype or scores.dtype).eps * math.sqrt(width)
    spread = (scores - scores.median(dim=1, keepdim=True).values).abs().amax(dim=1)
    return spread <= tol * magnitudes.amax(dim=1)


def patch_permutations(seed: int, sample_ids: Tensor, num_patches: int) -> Tensor:
    """(B,) sample ids -> (B, T) permutations of the patch positions, one per sample, reproducible per
    (seed, sample id) whatever the batching."""
    rows = [torch.randperm(num_patches, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
            for i in sample_ids.tolist()]
    return torch.stack(rows)


#: where 1e-8 enters the robust scale: 1.4826·MAD + 1e-8, or 1.4826·(MAD + 1e-8) (the thesis author's code)
MAD_EPS_PLACEMENTS = ("after_scale", "in_mad")


def robust_center_scale(scores: Tensor, mad_eps: str = "after_scale") -> tuple[Tensor, Tensor]:
    """(B, T) -> (median (B, 1), robust scale (B, 1)) per image; median = lower middle value; scale
    1.4826·MAD + 1e-8, or 1.4826·(MAD + 1e-8) with ``mad_eps="in_mad"``."""
    if mad_eps not in MAD_EPS_PLACEMENTS:
        raise ValueError(f"mad_eps={mad_eps!r}; expected one of {MAD_EPS_PLACEMENTS}")
    med = scores.median(dim=1, keepdim=True).values
    mad = (scores - med).abs().median(dim=1, keepdim=True).values
    return med, MAD_SCALE * mad + MAD_EPS if mad_eps == "after_scale" else MAD_SCALE * (mad + MAD_EPS)


def robust_z(scores: Tensor, mad_eps: str = "after_scale") -> Tensor:
    """(B, T) -> (B, T): (s − median) / robust scale (``robust_center_scale``), per image."""
    med, scale = robust_center_scale(scores, mad_eps)
    return (scores - med) / scale


def exp_tanh_gates(z: Tensor, kappa: float, c_max: float) -> Tensor:
    """w = exp(ln(c_max) · tanh(κ·z)) ∈ (1/c_max, c_max), 1 where z = 0."""
    return torch.exp(math.log(c_max) * torch.tanh(kappa * z))


def gate_columns(cam: Tensor, gates: Tensor, num_prefix_tokens: int) -> Tensor:
    """cam · diag(1 for prefix tokens, w_t for patches): scales the columns of every row.

    Args:
        cam: (B, N, N) gradient-weighted attention.
        gates: (B, T) patch gates, T = N − num_prefix_tokens.
    """
    prefix = gates.new_ones(gates.shape[0], num_prefix_tokens)
    return cam * torch.cat([prefix, gates], dim=1)[:, None, :]
