"""``torchrun`` support: initialise a process group from the environment when one is set."""

from __future__ import annotations

import os

import torch


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` when launched by torchrun (``WORLD_SIZE`` > 1).

    Returns (rank, world_size); (0, 1) in a plain process. The backend is NCCL on CUDA and
    gloo otherwise, unless given.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of an initialised process group, (0, 1) otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()
