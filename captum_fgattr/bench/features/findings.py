"""What a feature case study finds (the data types of :mod:`.study`, read by
:mod:`captum_fgattr.bench.features.report`)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from captum_fgattr.bench.features.prototypes import FeatureKey, Prototypes
from captum_fgattr.bench.methods import MethodSpec

__all__ = ["GROUPS", "Case", "PatchFinding", "FeatureStats", "FeatureAnalysis"]

GROUPS = ("improved", "degraded")


@dataclass(frozen=True)
class Case:
    """One analysed image."""

    group: str  # "improved" or "degraded"
    image_id: int
    target: int  # class explained (as stored with the scores)
    composite: float  # composite improvement (see the module docstring)
    deltas: Mapping[str, float]  # metric -> FG − TransMM (PF sign flipped: positive = FG better), unscaled


@dataclass(frozen=True)
class PatchFinding:
    """A patch with a large |Δ attribution| and the feature contributing most to its gate."""

    image_id: int
    patch: int  # row-major patch index
    transmm: float  # TransMM share of the patch (attribution / sum over patches)
    fg: float  # FG-TransMM share
    layer: int  # gated block of the headline feature (-1: no feature contributes)
    feature: int  # feature index (-1: none)
    contribution: float  # f_k·⟨g, d_k⟩ (+ booster, − suppressor)
    z: float  # contribution / (1.4826·MAD + 1e-8) of the layer's scores on this image
    gate: float  # the patch's gate at ``layer``

    @property
    def delta(self) -> float:
        return self.fg - self.transmm

    @property
    def sign(self) -> str:
        return "booster" if self.contribution > 0 else "suppressor" if self.contribution < 0 else "none"


@dataclass(frozen=True)
class FeatureStats:
    """How one feature acts across the analysed images."""

    layer: int
    feature: int
    headlines: int  # case patches where it is the headline feature
    boosts: int  # cases (image, patch among its layer's top contributors) with a positive contribution
    suppressions: int  # cases with a negative contribution
    images: int  # analysed images with at least one case
    per_class: Mapping[str, tuple[int, int]]  # class name -> (boosts, suppressions)

    @property
    def cases(self) -> int:
        return self.boosts + self.suppressions

    @property
    def role(self) -> str:
        return "booster" if self.boosts > self.suppressions else "suppressor" if self.suppressions > self.boosts else "mixed"

    @property
    def share(self) -> float:
        """Fraction of cases in its majority role."""
        return max(self.boosts, self.suppressions) / self.cases if self.cases else math.nan


@dataclass
class FeatureAnalysis:
    """Result of :func:`analyze_features`."""

    method: MethodSpec  # the FG-TransMM configuration analysed
    split: str
    cases: list[Case]
    findings: dict[int, list[PatchFinding]]  # image id -> its case patches, by decreasing |Δ|
    features: list[FeatureStats]  # headline features, most headlines first
    prototypes: dict[FeatureKey, Prototypes]
    grid: tuple[int, int]
    shares: dict[int, tuple[np.ndarray, np.ndarray]]  # image id -> (TransMM, FG) (P,) attribution shares
    files: dict[str, Path] = field(default_factory=dict)  # name -> written file

    def top(self, role: str, n: int = 5) -> list[FeatureStats]:
        """The ``n`` features with ``role`` ("booster" / "suppressor"), most cases first."""
        chosen = [s for s in self.features if s.role == role]
        return sorted(chosen, key=lambda s: (-max(s.boosts, s.suppressions), -s.headlines, s.layer, s.feature))[:n]
