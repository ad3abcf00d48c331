"""Models the project defines itself (``fgattr:<name>``): :class:`ProjectModel` and their registry
:data:`PROJECT_MODELS`, without torch, so that ``fgattr <command> --help`` lists them in an instant."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captum_fgattr.bench.plugins import BENCH_PLUGINS
from captum_fgattr.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ProjectModel", "PROJECT_MODELS"]


@dataclass(frozen=True)
class ProjectModel:
    """A model the project defines itself, loaded as ``fgattr:<name>``: a fixed shape and its own weights."""

    num_classes: int
    img_size: int
    depth: int  # blocks
    num_patches: int  # patch tokens
    #: (checkpoint, cache_dir, device, progress) -> the model in eval mode
    load: Callable[[str | None, str | os.PathLike[str] | None, str | torch.device, bool], nn.Module]
    #: checkpoint -> (what, sha256) of the weights a run's numbers depend on, or None (nothing recorded to compare)
    digest: Callable[[str | None], tuple[str, str] | None]


#: ``fgattr:<name>`` models (registered by the packages that define them; duplicates refused)
PROJECT_MODELS: Registry[ProjectModel] = Registry("project model (fgattr:<name>)", BENCH_PLUGINS)
