"""ViT adapters: uniform access to attention probabilities and residual streams of supported ViTs.

A ViT class is supported by one entry in :data:`ADAPTERS`, e.g. from outside the package::

    ADAPTERS.add("my_vit", AdapterEntry(MyVisionTransformer, MyViTAdapter))
"""
from __future__ import annotations

from dataclasses import dataclass

from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from captum_fgattr.adapters.base import ViTAdapter
from captum_fgattr.adapters.capture import Captured, capture
from captum_fgattr.adapters.open_clip_vit import OpenClipViTAdapter
from captum_fgattr.adapters.timm_vit import TimmViTAdapter
from captum_fgattr.registry import Registry

__all__ = ["ViTAdapter", "Captured", "capture", "get_adapter", "supported", "AdapterEntry", "ADAPTERS",
           "TimmViTAdapter", "OpenClipViTAdapter"]


@dataclass(frozen=True)
class AdapterEntry:
    """A ViT class (its subclasses included) and the adapter that explains it."""

    module: type[nn.Module]
    adapter: type[ViTAdapter]  # called as adapter(vit, model=the module the user calls)
    note: str = ""  # appended to the class in error messages, e.g. "(e.g. inside CLIPZeroShotClassifier)"

    def __str__(self) -> str:
        """The class as errors name it, e.g. "timm VisionTransformer"."""
        name = f"{self.module.__module__.split('.')[0]} {self.module.__name__}"
        return f"{name} {self.note}" if self.note else name


#: the supported ViT classes by name, in registration order
ADAPTERS = Registry[AdapterEntry]("ViT adapter")
ADAPTERS.add("timm", AdapterEntry(TimmVisionTransformer, TimmViTAdapter))
ADAPTERS.add("open_clip", AdapterEntry(OpenClipVisionTransformer, OpenClipViTAdapter,
                                       "(e.g. inside CLIPZeroShotClassifier)"))


def supported() -> str:
    """The registered ViT classes in words, as errors name them."""
    return ", ".join(str(entry) for entry in ADAPTERS.values())


def _entry(module: nn.Module) -> AdapterEntry | None:
    """The entry of ``module``'s most specific registered class, if any."""
    by_class = {entry.module: entry for entry in ADAPTERS.values()}
    return next((by_class[cls] for cls in type(module).__mro__ if cls in by_class), None)


def _compiled_original(module: nn.Module) -> nn.Module | None:
    """The module ``torch.compile`` wrapped, if ``module`` is such a wrapper (``OptimizedModule``)."""
    original = getattr(module, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else None


def get_adapter(model: nn.Module) -> ViTAdapter:
    """Adapter for ``model``: a supported ViT itself, or a module containing exactly one
    (e.g. ``CLIPZeroShotClassifier`` or ``nn.Sequential(normalise, vit)``). A ViT is supported when its class
    or a base class is registered in :data:`ADAPTERS`; the most specific registered class gives the adapter.

    A ``torch.compile``-d model is unwrapped (the adapter's ``model`` is the original module): compiled
    graphs do not run the hooks that expose attention probabilities.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}. Supported: {supported()}")
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
    found = [(m, entry) for m in model.modules() if (entry := _entry(m)) is not None]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise TypeError(
            f"{type(model).__name__} contains {what} supported ViTs; expected exactly one of: {supported()}")
    vit, entry = found[0]
    return entry.adapter(vit, model=model)
