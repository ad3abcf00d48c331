"""Deterministic CPU training: a fixed torch thread count and deterministic algorithms, restored afterwards.

Example::

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with deterministic(threads=1):
    ...     torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    (1, True)
    >>> torch.get_num_threads() == before
    True
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["deterministic"]


@contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads and ``torch.use_deterministic_algorithms(True)``.

    Together with seeded generators this makes CPU training bit-reproducible on one CPU type: the
    caller's thread count (``torch.set_num_threads``, ``OMP_NUM_THREADS``) no longer reaches the
    kernels. Different CPU types may still differ (other SIMD kernels). Both settings are restored on
    exit, also when the body raises.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r}; expected a positive int")
    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before_det, warn_only=before_warn)
        torch.set_num_threads(before_threads)
