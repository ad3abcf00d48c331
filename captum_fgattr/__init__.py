"""captum-fgattr: faithful attention attribution for Vision Transformers (Captum extension).

The public classes are imported on first use (PEP 562), so ``import captum_fgattr`` and the
``fgattr`` command line start without loading torch, Captum or timm.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["TransMM", "FeatureGradientTransMM", "GatedLayer", "TokenGradCAM", "AttentionRollout", "RawAttention",
           "PatchIntegratedGradients", "PatchSaliency", "RandomPatches", "CLIPZeroShotClassifier", "SparseAutoencoder",
           "AttnLRP"]  # a literal list: static tools read it

_WHERE = {"TransMM": "captum_fgattr.attr", "FeatureGradientTransMM": "captum_fgattr.attr",
          "GatedLayer": "captum_fgattr.attr", "TokenGradCAM": "captum_fgattr.baselines",
          "AttentionRollout": "captum_fgattr.baselines", "RawAttention": "captum_fgattr.baselines",
          "PatchIntegratedGradients": "captum_fgattr.baselines", "PatchSaliency": "captum_fgattr.baselines",
          "RandomPatches": "captum_fgattr.baselines",
          "CLIPZeroShotClassifier": "captum_fgattr.clip", "SparseAutoencoder": "captum_fgattr.sae",
          "AttnLRP": "captum_fgattr.lrp"}

if TYPE_CHECKING:
    from captum_fgattr.attr import FeatureGradientTransMM, GatedLayer, TransMM
    from captum_fgattr.baselines import (AttentionRollout, PatchIntegratedGradients, PatchSaliency, RandomPatches,
                                         RawAttention, TokenGradCAM)
    from captum_fgattr.clip import CLIPZeroShotClassifier
    from captum_fgattr.lrp import AttnLRP
    from captum_fgattr.sae import SparseAutoencoder


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'captum_fgattr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
