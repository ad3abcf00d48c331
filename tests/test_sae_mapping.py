"""``saes`` mapping of Feature-Gradient TransMM: int block keys and SparseAutoencoder values, errors name the bad entry."""
from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from captum_fgattr.sae import SAEConfig, SparseAutoencoder
from captum_fgattr.sae.mapping import check_sae_mapping


def sae(width: int = 32) -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d_in=width, n_features=64, activation="topk", k=4), seed=0)


def test_valid_mapping_is_sorted_with_python_int_keys():
    a, b = sae(), sae()
    checked = check_sae_mapping({np.int64(2): a, 0: b}, depth=3, width=32)
    assert list(checked) == [0, 2] and all(type(k) is int for k in checked)
    assert checked[0] is b and checked[2] is a


@pytest.mark.parametrize("key, message", [
    ("1", r"saes key '1' \(str\) is not a block index: keys must be ints 0..2; did you mean 1\?"),
    (1.0, r"saes key 1.0 \(float\) is not a block index.*did you mean 1\?"),
    (True, r"saes key True \(bool\)"),
    ("layer_1", r"saes key 'layer_1' \(str\) is not a block index: keys must be ints 0..2$"),
])
def test_non_int_keys_are_named(key, message):
    with pytest.raises(TypeError, match=message):
        check_sae_mapping({key: sae()}, depth=3, width=32)


def test_bad_values_ranges_and_widths_are_named():
    with pytest.raises(TypeError, match=r"saes\[1\] is a Linear, not a SparseAutoencoder"):
        check_sae_mapping({0: sae(), 1: nn.Linear(32, 64)}, depth=3, width=32)
    with pytest.raises(ValueError, match="saes key 3: block index out of range.*0..2"):
        check_sae_mapping({3: sae()}, depth=3, width=32)
    with pytest.raises(ValueError, match="width mismatch at block 1"):
        check_sae_mapping({1: sae(16)}, depth=3, width=32)
    with pytest.raises(ValueError, match="empty"):
        check_sae_mapping({}, depth=3, width=32)
    with pytest.raises(TypeError, match="must be a mapping"):
        check_sae_mapping([sae()], depth=3, width=32)
