"""SaCo and patch-level Faithfulness Correlation / Pixel-Flipping for Quantus.

Importing this package registers ``SaCo``, ``PatchFaithfulnessCorrelation`` and
``PatchPixelFlipping`` in ``quantus.AVAILABLE_METRICS["Faithfulness"]``.
"""

from .metrics import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo, register_metric
from .perturb import batch_patch_replacement_by_indices

__all__ = [
    "SaCo",
    "PatchFaithfulnessCorrelation",
    "PatchPixelFlipping",
    "batch_patch_replacement_by_indices",
    "register_metric",
]
