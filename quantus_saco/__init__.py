"""SaCo and patch-level Faithfulness Correlation / Pixel-Flipping for Quantus.

Importing this package registers ``SaCo``, ``PatchFaithfulnessCorrelation`` and
``PatchPixelFlipping`` in ``quantus.AVAILABLE_METRICS["Faithfulness"]``;
``evaluate_patch_metrics`` computes the same three scores in large batched forwards.

Metric validity: ``PatchRegionPerturbation`` (MoRF / LeRF), ``PatchSRG`` and ``PatchROAD`` are registered
under "Faithfulness" (batched: ``evaluate_region_perturbation``, ``evaluate_road``); ``PatchMPRT`` and
``PatchRandomLogit`` under "Randomisation", with ``weight_dependence`` asking of a method's maps whether they
depend on the model's weights.
"""

from .engine import evaluate_patch_metrics
from .metrics import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo, register_metric
from .perturb import batch_patch_replacement_by_indices
from .randomisation import PatchMPRT, PatchRandomLogit, WeightDependence, weight_dependence
from .region import evaluate_region_perturbation, evaluate_road
from .region_metrics import PatchRegionPerturbation, PatchROAD, PatchSRG

__all__ = [
    "SaCo",
    "PatchFaithfulnessCorrelation",
    "PatchPixelFlipping",
    "evaluate_patch_metrics",
    "batch_patch_replacement_by_indices",
    "register_metric",
    "PatchRegionPerturbation",
    "PatchSRG",
    "PatchROAD",
    "evaluate_region_perturbation",
    "evaluate_road",
    "PatchMPRT",
    "PatchRandomLogit",
    "WeightDependence",
    "weight_dependence",
]
