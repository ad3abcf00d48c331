"""The ``saes`` argument of Feature-Gradient TransMM: {0-based block index: SparseAutoencoder}, checked."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from captum_fgattr.sae.model import SparseAutoencoder

__all__ = ["check_sae_mapping"]


def _key_hint(key: Any) -> str:
    """'; did you mean 3?' for keys that spell an int (JSON string keys, integral floats)."""
    try:
        number = float(key)
    except (TypeError, ValueError):
        return ""
    return f"; did you mean {int(number)}?" if np.isfinite(number) and number == int(number) else ""


def check_sae_mapping(saes: Mapping[int, SparseAutoencoder], depth: int, width: int) -> dict[int, SparseAutoencoder]:
    """``saes`` validated against a model with ``depth`` blocks of width ``width``, sorted by block.

    Keys must be ints (Python or numpy) in 0..depth−1 and values :class:`SparseAutoencoder` s reading
    ``width`` features and trained on that block where they record one (``config.hook_layer``, from
    ``hook_point_layer`` / ``hook_point`` of ``config.json``; an SAE recording none is accepted); the
    error names the first bad key or value.

    Raises:
        TypeError: not a mapping, a key that is not an int (e.g. the JSON string ``"1"`` or ``1.0``), or a
            value that is not a SparseAutoencoder.
        ValueError: empty, a block index out of range, an SAE of another width or trained on another block.
    """
    if not isinstance(saes, Mapping):
        raise TypeError(f"saes must be a mapping {{block index: SparseAutoencoder}}; got {type(saes).__name__}")
    if not saes:
        raise ValueError("saes is empty: give at least one {block index: SparseAutoencoder}")
    checked: dict[int, SparseAutoencoder] = {}
    for key, sae in saes.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(
                f"saes key {key!r} ({type(key).__name__}) is not a block index: keys must be ints "
                f"0..{depth - 1}{_key_hint(key)}"
            )
        if not 0 <= key < depth:
            raise ValueError(f"saes key {key}: block index out of range for a model with {depth} blocks (0..{depth - 1})")
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(
                f"saes[{key}] is a {type(sae).__name__}, not a SparseAutoencoder (load one with "
                "SparseAutoencoder.load(folder) or captum_fgattr.sae.load_sae)"
            )
        sae.check_width(width, where=f"block {key}")
        recorded = sae.config.hook_layer
        if recorded is not None and recorded != key:
            raise ValueError(
                f"saes[{key}]: the SAE records that it was trained on block {recorded} (hook_point_layer) but is "
                f"used at block {key}; its features describe block {recorded}'s residual stream: use it at block "
                f"{recorded} or load the SAE of block {key} (for a layer_<L>/ folder, check that it holds layer L's SAE)"
            )
        checked[int(key)] = sae
    return dict(sorted(checked.items()))
