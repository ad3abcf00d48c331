"""ViT adapters: uniform access to attention probabilities and residual streams of supported ViTs."""
from __future__ import annotations

from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from captum_fgattr.adapters.base import ViTAdapter
from captum_fgattr.adapters.capture import Captured, capture
from captum_fgattr.adapters.open_clip_vit import OpenClipViTAdapter
from captum_fgattr.adapters.timm_vit import TimmViTAdapter

__all__ = ["ViTAdapter", "Captured", "capture", "get_adapter", "TimmViTAdapter", "OpenClipViTAdapter"]

_ADAPTERS: tuple[tuple[type[nn.Module], type[ViTAdapter]], ...] = (
    (TimmVisionTransformer, TimmViTAdapter),
    (OpenClipVisionTransformer, OpenClipViTAdapter),
)
SUPPORTED = "timm VisionTransformer, open_clip VisionTransformer (e.g. inside CLIPZeroShotClassifier)"


def _compiled_original(module: nn.Module) -> nn.Module | None:
    """The module ``torch.compile`` wrapped, if ``module`` is such a wrapper (``OptimizedModule``)."""
    original = getattr(module, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else None


def get_adapter(model: nn.Module) -> ViTAdapter:
    """Adapter for ``model``: a supported ViT itself, or a module containing exactly one
    (e.g. ``CLIPZeroShotClassifier`` or ``nn.Sequential(normalise, vit)``).

    A ``torch.compile``-d model is unwrapped (the adapter's ``model`` is the original module): compiled
    graphs do not run the hooks that expose attention probabilities.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}. Supported: {SUPPORTED}")
    model = _compiled_original(model) or model
    compiled = [name for name, m in model.named_modules() if _compiled_original(m) is not None]
    if compiled:
        raise TypeError(
            f"submodule {compiled[0]!r} of {type(model).__name__} is compiled with torch.compile, whose graphs do "
            "not expose attention probabilities; pass the module built around the uncompiled ViT"
        )
    if hasattr(model, "encode_text") and hasattr(model, "visual"):
        raise TypeError(
            f"{type(model).__name__} is a full open_clip model, whose forward needs text as well; wrap it as a "
            "classifier: CLIPZeroShotClassifier(clip_model, class_names, open_clip.get_tokenizer(model_name))"
        )
    found = [(m, adapter) for m in model.modules() for cls, adapter in _ADAPTERS if isinstance(m, cls)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise TypeError(f"{type(model).__name__} contains {what} supported ViTs; expected exactly one of: {SUPPORTED}")
    vit, adapter = found[0]
    return adapter(vit, model=model)
