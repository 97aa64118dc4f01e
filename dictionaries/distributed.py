"""Thin helpers over ``torch.distributed``; every function is a no-op (or identity) when it is not
initialised, so the trainer has a single code path for 1 and N processes.

Data parallelism here is plain gradient averaging: every rank starts from rank 0's weights
(:func:`broadcast_module_`), sums and divides gradients (:func:`average_gradients_`) and takes the
same deterministic optimizer step, so ranks hold identical weights after every step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "World",
    "all_true",
    "average_gradients_",
    "barrier",
    "broadcast_buffers_",
    "broadcast_module_",
    "current_world",
    "logical_or_",
    "mean_",
    "sum_int",
]


class World(NamedTuple):
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm(t: Tensor) -> Tensor:
    """``t`` on a device the process group's backend can reduce (NCCL needs CUDA tensors)."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def current_world() -> World:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without ``torch.distributed``."""
    return World(dist.get_rank(), dist.get_world_size()) if _active() else World(0, 1)


def barrier() -> None:
    if _active():
        dist.barrier()


@torch.no_grad()
def broadcast_module_(module: nn.Module) -> None:
    """Overwrite every parameter and buffer with rank 0's copy."""
    if not _active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def broadcast_buffers_(module: nn.Module) -> None:
    """Overwrite every buffer with rank 0's copy."""
    if not _active():
        return
    for t in module.buffers():
        dist.broadcast(t, src=0)


@torch.no_grad()
def average_gradients_(module: nn.Module) -> None:
    """Replace each ``.grad`` by its mean over ranks (one all-reduce of the concatenated grads)."""
    if not _active():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:  # a parameter without gradient on one rank must still join the reduction
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def mean_(t: Tensor) -> Tensor:
    """All-reduce ``t`` in place to its mean over ranks; returns ``t``."""
    if _active():
        c = _comm(t)
        dist.all_reduce(c, op=dist.ReduceOp.SUM)
        t.copy_(c / dist.get_world_size())
    return t


def logical_or_(mask: Tensor) -> Tensor:
    """Bool tensor true where it is true on any rank."""
    if not _active():
        return mask
    as_int = _comm(mask.to(torch.int32))
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool().to(mask.device)


def all_true(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (a collective: call it on all ranks)."""
    if not _active():
        return flag
    t = _comm(torch.tensor(1 if flag else 0, dtype=torch.int32))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t)


def sum_int(n: int) -> int:
    """Sum of ``n`` over ranks."""
    if not _active():
        return n
    t = _comm(torch.tensor(n, dtype=torch.int64))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t)
