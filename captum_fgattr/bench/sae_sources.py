"""Named SAE sources (``saes = "<name>"``): :class:`SAESource` and their registry :data:`SAE_SOURCES`, without torch,
so that ``fgattr <command> --help`` lists them in an instant (:mod:`captum_fgattr.bench.resolve` loads them)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captum_fgattr.bench.plugins import BENCH_PLUGINS
from captum_fgattr.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from captum_fgattr.sae import SparseAutoencoder

__all__ = ["SAESource", "SAE_SOURCES"]


@dataclass(frozen=True)
class SAESource:
    """SAEs given by name (``saes = "<name>"``) instead of folders, e.g. ones packaged with a project model."""

    what: str  # in words, for digests and errors, e.g. "the packaged SAE"
    #: (layers, the model, to check the SAEs belong to it) -> {layer: SAE}
    load: Callable[[list[int], nn.Module | None], dict[int, SparseAutoencoder]]
    digests: Callable[[], dict[int, str]]  # layer -> sha256 of the weights of each SAE it provides


#: named SAE sources (``saes`` values; registered by the packages that provide them, duplicates refused)
SAE_SOURCES: Registry[SAESource] = Registry("SAE source", BENCH_PLUGINS)
