"""Distributed evaluation under ``torchrun``: this process's share of the work, a barrier, the process group.

Every rank opens the same run folder; :class:`~captum_fgattr.bench.evaluate.evaluate_methods` gives rank ``r``
of ``world`` every ``world``-th batch, the store's transactions keep the ranks' rows apart, and rank 0 alone
writes configurations and reports. Outside ``torchrun`` everything here is a no-op (rank 0 of 1).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["Shard", "current_shard", "sync_ranks", "process_group"]


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: every ``world``-th batch, starting at ``rank``."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank={self.rank!r}, world={self.world!r}; expected 0 <= rank < world")


def current_shard() -> Shard:
    """This process's shard: (rank, world size) of the initialised ``torch.distributed`` group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Shard()


def sync_ranks() -> None:
    """Wait for every rank (no-op outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextmanager
def process_group(device: str) -> Iterator[str]:
    """Join the ``torchrun`` process group if there is one (gloo on CPU, nccl on CUDA: one GPU per rank) and
    leave it at the end; yields the device this rank uses (``cuda:<LOCAL_RANK>`` for a CUDA ``device``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or torch.distributed.is_initialized():
        yield device
        return
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device
    finally:
        torch.distributed.destroy_process_group()
