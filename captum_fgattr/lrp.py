"""AttnLRP (Achtibat et al., ICML 2024) for timm and open_clip ViTs, on the rules of ``lxt`` 2.1's efficient mode.

In lxt's efficient mode a model's non-linear operations get gradient rules so that gradient × input is the
LRP relevance. This module applies lxt's own rule functions (``lxt.efficient.patches``) to the *instances*
of one model for the duration of one call, instead of lxt's ``monkey_patch``, which replaces the forward of
classes globally; afterwards the model and every class are exactly as before, also after an exception.
The rules are lxt's map for torchvision's ViT (AttnLRP outside attention, CP-LRP inside it):

* every ``nn.LayerNorm`` (timm's and open_clip's subclasses too): identity rule, the std a constant in the
  backward (lxt ``layer_norm_forward``);
* element-wise activations (GELU, QuickGELU, SiLU, ...): identity rule, gradient g(x) / x (lxt ``non_linear_forward``);
* ``nn.MultiheadAttention`` (open_clip, torchvision): no relevance through the softmax, query and key
  detached (lxt ``cp_multi_head_attention_forward``); timm's ``Attention``, which lxt does not map: the same
  rule here, the attention probabilities detached after the softmax (fused attention off during the call);
* ``F.normalize`` (the L2 normalisation of :class:`~captum_fgattr.clip.CLIPZeroShotClassifier`): identity
  rule, the norm detached;
* linear layers, convolutions, residual sums: the plain gradient (LRP-0 in gradient × input form).

Relevance is conserved up to what biases, constant tokens (class token, position embeddings) and the
identity rule's 1e-10 stabiliser absorb.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from captum_fgattr.adapters.tokens import pixels_to_patches
from captum_fgattr.patch_attribution import PatchAttribution, check_finite
from captum_fgattr.targets import TargetLike, resolve_target

__all__ = ["AttnLRP", "attnlrp_rules", "attnlrp_input_relevance", "lxt_available"]

Undo = Callable[[], None]
_LXT_HINT = "pip install 'captum-fgattr[lrp]' (lxt 2.1 with transformers < 5)"


def _lxt_patches() -> types.ModuleType:
    """``lxt.efficient.patches``, or an ImportError naming the ``lrp`` extra."""
    try:
        from lxt.efficient import patches
    except ImportError as err:  # lxt absent, or lxt 2.1 under transformers 5 (it imports removed modules)
        raise ImportError(f"AttnLRP needs the lxt package's efficient mode, which cannot be imported ({err}); "
                          f"{_LXT_HINT}") from err
    return patches


def lxt_available() -> tuple[bool, str]:
    """(whether AttnLRP can run, why not): lxt's efficient mode imports."""
    try:
        _lxt_patches()
    except ImportError as err:
        return False, str(err)
    return True, ""


def _activation_types() -> tuple[type, ...]:
    import open_clip.transformer
    from timm.layers import activations

    return (nn.GELU, nn.ReLU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardswish, activations.GELU,
            activations.GELUTanh, activations.QuickGELU, activations.Swish, activations.Mish, open_clip.transformer.QuickGELU)


def _set_forward(module: nn.Module, forward: Callable[..., Any], keep_original: bool) -> Undo:
    """Bind ``forward`` (lxt's ``forward(self, ...)``) to this instance only; ``keep_original`` stores the current
    forward as ``original_forward``, which lxt's wrappers call. The undo restores the instance's ``__dict__``."""
    if getattr(type(module).forward, "__module__", "").startswith("lxt."):
        raise RuntimeError(f"{type(module).__name__}.forward is patched globally by lxt.efficient.monkey_patch; AttnLRP "
                           "applies lxt's rules to the model itself: restart without monkey_patch")
    saved = {name: module.__dict__[name] for name in ("forward", "original_forward") if name in module.__dict__}
    if keep_original:
        module.__dict__["original_forward"] = module.forward
    module.__dict__["forward"] = types.MethodType(forward, module)

    def undo() -> None:
        for name in ("forward", "original_forward"):
            module.__dict__.pop(name, None)
        module.__dict__.update(saved)
    return undo


def _timm_attention(attn: nn.Module) -> Undo:
    """CP-LRP in a timm ``Attention``: its probabilities detached at ``attn_drop`` (explicit attention path)."""
    if getattr(attn, "gate", None) is not None:
        raise ValueError("AttnLRP: a timm Attention with an output gate (x * sigmoid(gate(x))) has no rule here")
    was_fused = attn.fused_attn
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda _m, _inp, probs: probs.detach())

    def undo() -> None:
        handle.remove()
        attn.fused_attn = was_fused
    return undo


class _NormalizeIdentityRule(TorchFunctionMode):
    """``F.normalize(x)`` as ``x / ||x||`` with the norm detached (identity rule of a normalisation)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            x, p, dim, eps = _normalize_args(*args, **kwargs)
            return x / x.norm(p=p, dim=dim, keepdim=True).clamp_min(eps).detach()
        return func(*args, **kwargs)


def _normalize_args(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: None = None) -> tuple:
    if out is not None:
        raise ValueError("AttnLRP: F.normalize(out=...) is not supported")
    return input, p, dim, eps


@contextlib.contextmanager
def attnlrp_rules(model: nn.Module) -> Iterator[nn.Module]:
    """Apply the AttnLRP rules (module docstring) to ``model``'s modules inside the ``with`` block; everything
    is restored on exit, also after an exception. Classes are never changed.

    Raises:
        ImportError: lxt's efficient mode cannot be imported (names the ``lrp`` extra).
    """
    from timm.layers import Attention

    patches = _lxt_patches()
    activations = _activation_types()
    undos: list[Undo] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                undos.append(_set_forward(module, patches.layer_norm_forward, keep_original=False))
            elif isinstance(module, activations):
                undos.append(_set_forward(module, patches.non_linear_forward, keep_original=True))
            elif isinstance(module, nn.MultiheadAttention):
                undos.append(_set_forward(module, patches.cp_multi_head_attention_forward, keep_original=True))
            elif type(module) is Attention:
                undos.append(_timm_attention(module))
        with _NormalizeIdentityRule():
            yield model
    finally:
        for undo in reversed(undos):
            undo()


def attnlrp_input_relevance(model: nn.Module, images: Tensor, target: TargetLike, extra: tuple = ()) -> Tensor:
    """AttnLRP relevance of every input value: ``images · ∂̃y_t/∂images`` (B, C, H, W) under :func:`attnlrp_rules`,
    for the target logit y_t of each sample (``target`` as in Captum; ``None``: the predicted class)."""
    with attnlrp_rules(model), torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = model(x, *extra)
        chosen = logits.gather(1, resolve_target(target, logits)[:, None])
        check_finite("logits", chosen, images)
        (grad,) = torch.autograd.grad(chosen.sum(), x)
    return (x * grad).detach()


class AttnLRP(PatchAttribution):
    """AttnLRP (Achtibat et al., ICML 2024) with lxt 2.1's efficient-mode rules (:mod:`captum_fgattr.lrp`):
    signed input relevance ``x · ∂̃y_t/∂x`` summed over channels and each patch's pixels. Needs the ``lrp``
    extra (``pip install 'captum-fgattr[lrp]'``); the model is patched only during each call.

    Raises:
        ImportError: lxt's efficient mode cannot be imported (names the ``lrp`` extra).
    """

    def __init__(self, model: nn.Module) -> None:
        _lxt_patches()
        super().__init__(model)

    def _patch_relevance(self, images: Tensor, target: TargetLike, extra: tuple) -> Tensor:
        relevance = attnlrp_input_relevance(self.adapter.model, images, target, extra)
        return pixels_to_patches(relevance, self.adapter.patch_size)
