"""SaCo and patch-level Faithfulness Correlation / Pixel-Flipping for Quantus.

Importing this package registers ``SaCo``, ``PatchFaithfulnessCorrelation`` and
``PatchPixelFlipping`` in ``quantus.AVAILABLE_METRICS["Faithfulness"]``;
``evaluate_patch_metrics`` computes the same three scores in large batched forwards.
"""

from .engine import evaluate_patch_metrics
from .metrics import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo, register_metric
from .perturb import batch_patch_replacement_by_indices

__all__ = [
    "SaCo",
    "PatchFaithfulnessCorrelation",
    "PatchPixelFlipping",
    "evaluate_patch_metrics",
    "batch_patch_replacement_by_indices",
    "register_metric",
]
