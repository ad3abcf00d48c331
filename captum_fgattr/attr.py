"""Captum attribution classes: TransMM and Feature-Gradient TransMM for Vision Transformers.

Both run one batched forward and one backward per call through :func:`capture`, build the
gradient-weighted attention maps of every block, (optionally) gate them, and propagate relevancy.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from captum_fgattr.adapters import Captured, capture
from captum_fgattr.gates import (
    CODE_VARIANTS, DECODER_PAIRED_VARIANTS, MAD_EPS_PLACEMENTS, SAE_VARIANTS, VARIANTS, degenerate_scores, exp_tanh_gates,
    feature_gradient_scores, gate_columns, patch_permutations, residual_scores, robust_z, sae_space_gradient,
    score_magnitudes,
)
from captum_fgattr.patch_attribution import PatchAttribution, check_finite
from captum_fgattr.relevancy import class_token_row, gradient_weighted_attention, transmm_relevancy
from captum_fgattr.sae import SparseAutoencoder
from captum_fgattr.sae.mapping import check_sae_mapping
from captum_fgattr.targets import TargetLike, resolve_target


def float32_or_wider(t: Tensor) -> Tensor:
    """``t`` in float32, or as it is if it is float32 or wider (no copy then)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def check_class_token_readout(last_attn_grad: Tensor, readout_rows: Sequence[int]) -> None:
    """Refuse a model whose output does not read the class token.

    ``last_attn_grad`` (B, H, N, N) is ∂y/∂A of the last block: if the output reads the class token, its
    row has a gradient; a model that pools the patch tokens (e.g. ``head(tokens[:, 1:].mean(1))``) gives
    exactly 0 in that row while other rows have one. An all-zero gradient (a zero head) is not refused.
    """
    read = last_attn_grad[:, :, list(readout_rows)].flatten(1).ne(0).any(dim=1)
    unread = ~read & last_attn_grad.flatten(1).ne(0).any(dim=1)
    if unread.any():
        raise ValueError(
            f"the model does not read its output from the class token ({int(unread.sum())} of {len(unread)} images: "
            "the target logit's gradient on the class token's last-block attention is exactly 0, e.g. a head on "
            "the mean of the patch tokens); TransMM and FG-TransMM explain the class token's row, so their map "
            "would not describe this output: use a class-token head (timm global_pool='token')"
        )


def _reduced_precision(model: nn.Module) -> str:
    """What makes ``model`` compute below float32 (its weights' dtype or autocast), or ''."""
    param = next(model.parameters(), None)
    if param is None:
        return ""
    if param.dtype.is_floating_point and param.dtype.itemsize < 4:
        return f"{param.dtype} weights"
    if torch.is_autocast_enabled(param.device.type):
        return f"autocast to {torch.get_autocast_dtype(param.device.type)}"
    return ""


class TransMM(PatchAttribution):
    """TransMM (Chefer et al. 2021): gradient-weighted attention propagated through all blocks.

    For target logit y_t and every block ℓ: cam_ℓ = mean_heads(relu(∂y_t/∂A_ℓ ⊙ A_ℓ)),
    R_ℓ = R_{ℓ-1} + cam_ℓ·R_{ℓ-1} from R_0 = I; the attribution is the class-token row of R_L over
    the patch tokens, raw (not normalised).

    Args:
        model: a timm ``VisionTransformer`` or an open_clip ViT classifier (e.g.
            :class:`CLIPZeroShotClassifier`), or a module containing exactly one of them, returning
            logits (B, num_classes) read from the class token (a model that pools the patch tokens is
            refused: the class-token row would not explain its output). Call ``model.eval()``: a model in
            train mode with dropout, stochastic depth or batch norm is refused (its map would change from
            call to call or with the batch); one in train mode without them gives the eval-mode map and a
            warning. For low-precision models (bf16 / fp16 weights or autocast) the gradient-weighted maps
            and their propagation are computed, and the map returned, in float32.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=3).eval()
        >>> TransMM(vit).attribute(torch.randn(2, 3, 64, 64), target=[0, 2]).shape
        torch.Size([2, 1, 64, 64])
        >>> TransMM(vit).attribute(torch.randn(2, 3, 64, 64), return_patches=True).shape
        torch.Size([2, 4, 4])
    """

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        with torch.enable_grad(), capture(self.adapter, resid_layers=self._resid_layers()) as captured:
            logits = self.adapter.model(images.detach().requires_grad_(True), *extra)
            target_idx = resolve_target(target, logits)
            check_finite("logits", logits.gather(1, target_idx[:, None]), images)
            captured.backward(logits.gather(1, target_idx[:, None]).sum())
            self.adapter.check_tokens(captured.attn[0].shape[-1], images)
            check_class_token_readout(captured.attn_grad[-1], self.adapter.readout_rows)
            with torch.autocast(images.device.type, enabled=False):
                cams = [gradient_weighted_attention(float32_or_wider(a), float32_or_wider(g))
                        for a, g in zip(captured.attn, captured.attn_grad)]
                relevancy = transmm_relevancy(self._gate(cams, captured))
        return class_token_row(relevancy, self.adapter.num_prefix_tokens, self.adapter.readout_rows)

    def _resid_layers(self) -> tuple[int, ...]:
        """Blocks whose resid_post (and its gradient) the method needs."""
        return ()

    def _gate(self, cams: list[Tensor], captured: Captured) -> list[Tensor]:
        """Hook for subclasses: modify the per-block (B, N, N) maps before propagation."""
        return cams


@dataclass(frozen=True)
class GatedLayer:
    """What Feature-Gradient TransMM computed at one gated layer in its last call.

    Attributes:
        scores: (B, T) feature-gradient scores s_t of the patch tokens.
        gates: (B, T) gates w_t.
        top_features: (B, T, n) indices of the features with the largest |f_k·⟨g̃, d_k⟩|, or ``None``.
        top_contributions: (B, T, n) those contributions f_k·⟨g̃, d_k⟩ (sign: + boosts, − suppresses), in the
            units of the ``combined`` score (g̃: the gradient in the SAE's space, see :class:`FeatureGradientTransMM`).
        degenerate: (B,) bool, True where the image's scores are constant up to rounding
            (:func:`captum_fgattr.gates.degenerate_scores`) and its gates were therefore all set to 1.
    """

    scores: Tensor
    gates: Tensor
    top_features: Tensor | None = None
    top_contributions: Tensor | None = None
    degenerate: Tensor | None = None


class FeatureGradientTransMM(TransMM):
    """Feature-Gradient TransMM (Šula 2026): TransMM whose attention columns are rescaled by SAE
    feature-gradient gates at one or several layers (see ``docs/method.md``).

    At a gated block ℓ (0-based, as timm ``blocks[ℓ]``), for each patch token t with resid_post x_t
    and gradient g_t = ∂y/∂x_t, a score s_t (``variant``), ŝ = (s − median)/(1.4826·MAD + 1e-8),
    w_t = exp(ln c_max · tanh(κ ŝ_t)); cam_ℓ's patch columns are multiplied by w_t.

    Scores, with f_t = SAE.encode(x_t), d_k the decoder rows and g̃_t = scale_t·g_t the gradient in the SAE's
    normalised input space (scale_t: the token's ``NormStats.scale``, held fixed as ``SAE.decode`` does;
    g̃_t = g_t for an SAE without input normalisation):

    * the method, ``combined``: Σ_k f_tk⟨g̃_t, d_k⟩ = ⟨g̃_t, W_decᵀ f_t⟩;
    * ablations: ``activation`` Σ_k f_tk, ``gradient`` Σ_k |⟨g̃_t, d_k⟩|,
      ``gradient_signed`` Σ_k ⟨g̃_t, d_k⟩;
    * controls without SAE codes: ``grad_input`` ⟨g_t, x_t⟩;
      ``grad_input_centered`` ⟨g̃_t, norm(x_t) − b_dec⟩
      (norm = the SAE's input normalisation: the space the decoder reconstructs, where ``combined`` =
      ⟨g̃_t, û_t − b_dec⟩ with û_t = W_decᵀ f_t + b_dec, so the two agree for a perfect SAE);
      ``bias_projection`` −⟨g̃_t, b_dec⟩; ``token_norm`` ‖x_t‖₂.

    Args:
        model: as for :class:`TransMM`.
        saes: block index -> :class:`SparseAutoencoder` of that block's resid_post; the gated layers are its keys.
            An SAE whose config records another block (``config.hook_layer``) is refused.
        kappa: gate strength κ ≥ 0, one value or one per gated layer.
        c_max: gate range c_max ≥ 1, one value or one per gated layer.
        variant: one of :data:`captum_fgattr.gates.VARIANTS` (default ``combined``).
        shuffle_decoder_seed: if given, the shuffled-decoder control: decoder rows permuted by a seeded
            permutation (activations unchanged). Only ``combined`` pairs f_k with d_k, so the control is
            refused for every other variant (it could not differ from the real map).
        permute_gates_seed: if given, the permuted-gates control: the gates are computed as usual, then
            permuted over the patch positions with a permutation per image, a function of this seed and the
            image's id only (``sample_ids`` of :meth:`attribute`, default 0 for every image), the same for
            every gated layer and every call (so also for every noisy copy under NoiseTunnel).
        top_features: if > 0, record for each patch the ``top_features`` active features contributing
            most to its score (see :attr:`last_gated_layers`); costs a K-wide projection of the gradient.
            Only for the SAE-code variants.
        mad_eps: where 1e-8 enters the robust scale of the scores (:data:`captum_fgattr.gates.MAD_EPS_PLACEMENTS`):
            ``"after_scale"`` 1.4826·MAD + 1e-8 (default) or ``"in_mad"`` 1.4826·(MAD + 1e-8), the thesis author's
            code; they differ only where the MAD is near 0.

    After each call, :attr:`last_gated_layers` maps each gated block to a :class:`GatedLayer` (the gates
    as applied, i.e. permuted for the permuted-gates control); it is emptied at the start of each call, so
    it stays empty after a call that failed.

    Degenerate scores: where an image's scores at a layer are constant up to the rounding error of their terms
    (e.g. ``grad_input`` ⟨g, x⟩ at the input of the last block, where a scale-invariant LayerNorm makes it 0 up to
    rounding), its gates there are all 1 and ``GatedLayer.degenerate`` says so
    (:func:`captum_fgattr.gates.degenerate_scores`, ``docs/method.md`` §2.2).

    Precision: the scores, their normalisation and the gates are computed in float32 whatever the model's
    dtype (a bf16 / fp16 SAE is upcast, autocast is off for them). They are still built from the model's
    residual stream and gradients, so a low-precision model gives a warning: the robust normalisation
    amplifies their rounding (see ``docs/method.md``).
    """

    def __init__(
        self,
        model: nn.Module,
        saes: Mapping[int, SparseAutoencoder],
        kappa: float | Mapping[int, float] = 0.5,
        c_max: float | Mapping[int, float] = 10.0,
        variant: str = "combined",
        shuffle_decoder_seed: int | None = None,
        permute_gates_seed: int | None = None,
        top_features: int = 0,
        mad_eps: str = "after_scale",
    ) -> None:
        super().__init__(model)
        if mad_eps not in MAD_EPS_PLACEMENTS:
            raise ValueError(f"mad_eps={mad_eps!r}; expected one of {list(MAD_EPS_PLACEMENTS)}")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; expected one of {list(VARIANTS)}")
        if shuffle_decoder_seed is not None and variant not in DECODER_PAIRED_VARIANTS:
            raise ValueError(f"the shuffled-decoder control is refused for variant={variant!r}: its score does not "
                             f"pair activations f_k with decoder rows d_k, so a shuffled decoder cannot change it "
                             f"(only {list(DECODER_PAIRED_VARIANTS)})")
        if top_features < 0:
            raise ValueError(f"top_features={top_features}; expected >= 0")
        if top_features and variant not in SAE_VARIANTS:
            raise ValueError(f"top_features needs SAE codes; variant={variant!r} does not use them")
        self.saes = check_sae_mapping(saes, self.adapter.depth, self.adapter.embed_dim)
        self.kappa = self._per_layer("kappa", kappa, minimum=0.0)
        self.c_max = self._per_layer("c_max", c_max, minimum=1.0)
        self.variant = variant
        self.top_features = top_features
        self.mad_eps = mad_eps
        self.permute_gates_seed = permute_gates_seed
        self.decoder_permutations: dict[int, Tensor] = {}
        if shuffle_decoder_seed is not None:
            generator = torch.Generator().manual_seed(shuffle_decoder_seed)
            self.decoder_permutations = {l: torch.randperm(sae.W_dec.shape[0], generator=generator) for l, sae in self.saes.items()}
        self.last_gated_layers: dict[int, GatedLayer] = {}
        self._sample_ids: Tensor | None = None

    @log_usage()  # Captum's NoiseTunnel calls attribute.__wrapped__, which the decorator provides
    def attribute(self, inputs: Tensor, *args: Any, sample_ids: Sequence[int] | Tensor | None = None,
                  **kwargs: Any) -> Tensor:
        """As :meth:`TransMM.attribute`; ``sample_ids`` (B,) seed the permuted-gates control per image
        (default: 0 for every image, i.e. the seed's one permutation for all; pass stable dataset indices for
        one per image, independent of the batching). Under NoiseTunnel / sensitivity_max leave it out."""
        self.last_gated_layers = {}
        self._sample_ids = None if sample_ids is None else torch.as_tensor(sample_ids).reshape(-1)
        precision = _reduced_precision(self.adapter.model)
        if precision:
            warnings.warn(f"the model computes in reduced precision ({precision}): FG-TransMM computes its gate "
                          "scores in float32, but from the model's rounded residual stream and gradients, whose "
                          "error the robust normalisation amplifies (several % off the float32 map, see "
                          "docs/method.md); run the model in float32 for FG-TransMM", UserWarning)
        try:
            return super().attribute(inputs, *args, **kwargs)
        except BaseException:
            self.last_gated_layers = {}
            raise
        finally:
            self._sample_ids = None

    def _per_layer(self, name: str, value: float | Mapping[int, float], minimum: float) -> dict[int, float]:
        values = dict(value) if isinstance(value, Mapping) else {layer: value for layer in self.saes}
        if set(values) != set(self.saes):
            raise ValueError(f"{name} is given for layers {sorted(values)}, but the gated layers are {sorted(self.saes)}")
        for layer, v in values.items():
            if not (float(v) >= minimum and float(v) < float("inf")):
                raise ValueError(f"{name}={v} for layer {layer}; expected a finite value >= {minimum}")
        return {layer: float(v) for layer, v in values.items()}

    def decoder(self, layer: int) -> Tensor:
        """(K, D) decoder directions used at ``layer`` (row-permuted for the shuffled control), float32 or wider."""
        W_dec = float32_or_wider(self.saes[layer].W_dec.detach())
        perm = self.decoder_permutations.get(layer)
        return W_dec if perm is None else W_dec[perm.to(W_dec.device)]

    def _resid_layers(self) -> tuple[int, ...]:
        return tuple(self.saes)

    def _gate(self, cams: list[Tensor], captured: Captured) -> list[Tensor]:
        prefix = self.adapter.num_prefix_tokens
        gated: dict[int, GatedLayer] = {}
        permutations = None
        needs_codes = self.variant in CODE_VARIANTS or self.top_features > 0  # (__init__: top features need an SAE)
        with torch.no_grad():
            for layer, sae in self.saes.items():
                sae, decoder = sae.upcast(), self.decoder(layer)
                x = captured.resid[layer][:, prefix:].to(decoder)
                grad = captured.resid_grad[layer][:, prefix:].to(decoder)
                x_norm, stats = sae.normalize(x)
                sae_grad = sae_space_gradient(grad, stats.scale)
                codes = sae.encode_sparse(x) if needs_codes else None
                scores, magnitudes = self._scores(sae, x, x_norm, grad, sae_grad, decoder, codes)
                degenerate = degenerate_scores(scores, magnitudes, x.shape[-1])
                z = robust_z(scores, self.mad_eps).masked_fill(degenerate[:, None], 0.0)
                gates = exp_tanh_gates(z, self.kappa[layer], self.c_max[layer])
                if self.permute_gates_seed is not None:
                    if permutations is None:
                        permutations = self._gate_permutations(self.permute_gates_seed, *gates.shape).to(gates.device)
                    gates = gates.gather(1, permutations)
                cams[layer] = gate_columns(cams[layer], gates.to(cams[layer]), prefix)
                top = self._top_features(*codes, sae_grad, decoder) if codes is not None else (None, None)
                gated[layer] = GatedLayer(scores, gates, *top, degenerate=degenerate)
        self.last_gated_layers = gated
        return cams

    def _scores(self, sae: SparseAutoencoder, x: Tensor, x_norm: Tensor, grad: Tensor, sae_grad: Tensor,
                decoder: Tensor, codes: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """(B, T) scores of :attr:`variant` and their magnitudes (:func:`~captum_fgattr.gates.score_magnitudes`)
        from the patch tokens x, their normalisation norm(x), the gradients grad and their SAE-space counterparts
        sae_grad (all (B, T, D))."""
        b_dec = sae.b_dec.detach().to(x)
        centered = x_norm - b_dec if self.variant == "grad_input_centered" else x
        if self.variant in SAE_VARIANTS:
            scores = feature_gradient_scores(sae_grad, decoder, self.variant, codes)
        else:
            scores = residual_scores(x, grad, sae_grad, centered, b_dec, self.variant)
        return scores, score_magnitudes(self.variant, scores, x, grad, sae_grad, centered, b_dec, decoder, codes)

    def _gate_permutations(self, seed: int, batch: int, num_patches: int) -> Tensor:
        """(B, T) patch permutations of the permuted-gates control, one per image: of (seed, sample id)."""
        if self._sample_ids is None:
            return patch_permutations(seed, torch.zeros(1, dtype=torch.long), num_patches).expand(batch, -1)
        if self._sample_ids.numel() != batch:
            raise ValueError(f"sample_ids has {self._sample_ids.numel()} entries for a batch of {batch} images (under "
                             "NoiseTunnel / sensitivity_max leave sample_ids out)")
        return patch_permutations(seed, self._sample_ids, num_patches)

    def _top_features(self, values: Tensor, indices: Tensor, grad: Tensor, decoder: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(B, T, n) indices and values of the largest |f_k·⟨g̃, d_k⟩| among each patch's active features
        (if asked for); ``grad`` is the SAE-space gradient g̃ (B, T, D)."""
        if not self.top_features:
            return None, None
        contributions = values * (grad @ decoder.T).gather(-1, indices)  # (B, T, m)
        top = contributions.abs().topk(min(self.top_features, contributions.shape[-1]), dim=-1).indices
        return indices.gather(-1, top), contributions.gather(-1, top)
