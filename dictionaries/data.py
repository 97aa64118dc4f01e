"""Where training batches come from.

A batch is ``dict[str, Tensor]`` keyed by hook-point name, each value ``[batch, d]``
(e.g. ``{"blocks.15.hook_out": acts_BD}``). A :class:`BatchSource` yields such batches and can
save and restore its position as a JSON-able dict, so a checkpoint can resume the data stream
exactly where it stopped.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BatchSource", "TensorBatchSource"]


@runtime_checkable
class BatchSource(Protocol):
    """Protocol for the trainer's data.

    ``iter(source)`` continues from the current position. ``state_dict()`` describes the position
    after the last batch yielded; ``load_state_dict(state)`` moves there, so that a fresh source
    that loads the state yields the same batches the old one would have yielded next. Under
    ``torch.distributed`` every rank owns a source for its own shard.
    """

    def __iter__(self) -> Iterator[dict[str, Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorBatchSource:
    """Endless, shuffled, resumable batches from in-memory tensors (tests and small jobs).

    Every epoch draws a permutation of the ``N`` rows from a generator seeded by
    ``(seed, epoch)``; the permutation is cut into global batches of ``batch_size * world_size``
    rows and rank ``r`` takes the ``r``-th slice of ``batch_size`` rows. The ragged tail of each
    epoch is dropped. State: ``{"epoch": e, "batch": b}`` (next batch to yield).

    Args:
        tensors: ``{key: [N, d_key]}``, all with the same ``N``.
        batch_size: rows per batch *per rank*.
        seed: shuffling seed.
        rank, world_size: shard; default to ``torch.distributed``'s if initialised, else 0 and 1.
    """

    def __init__(
        self,
        tensors: dict[str, Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if not tensors:
            raise ValueError("tensors is empty")
        lengths = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors need the same number of rows, got {lengths}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        self.world_size = world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.seed = seed
        self.n_rows = next(iter(lengths.values()))
        self.batches_per_epoch = self.n_rows // (batch_size * self.world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{self.n_rows} rows is fewer than one global batch ({batch_size} x {self.world_size} ranks)"
            )
        self.epoch = 0
        self.batch = 0

    def _permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=gen)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        perm = self._permutation(self.epoch)
        while True:
            if self.batch >= self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
                perm = self._permutation(self.epoch)
            start = (self.batch * self.world_size + self.rank) * self.batch_size
            rows = perm[start : start + self.batch_size]
            self.batch += 1
            yield {k: v[rows] for k, v in self.tensors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "rank", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"source state has {key}={state[key]!r}, this source has {getattr(self, key)!r}"
                )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
