"""Batches of activations for training: from the disk cache or straight from the model.

Both sources yield ``dict[hookpoint, Float[Tensor, "batch d"]]`` whose rows are aligned
across hook points (row i of every tensor is the same token), shuffled through a buffer
of bounded size, in an order fixed by the seed. Both implement ``state_dict()`` /
``load_state_dict()`` so a training job can checkpoint its position in the data.

Memory bound of the shuffle buffer: at most ``buffer_size`` rows plus one shard (cache)
or one forward batch (streaming) are held, independent of the size of the cache; during
a refill the concatenation briefly holds a second copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from autointerp.activations import CacheError, load_shard, read_manifest
from autointerp.data import Contexts
from autointerp.models import LoadedModel, capture

Batch = dict[str, Tensor]


def _shuffled_batches(chunks: Iterable[Batch], batch_size: int, buffer_size: int, gen: torch.Generator | None,
                      drop_last: bool, stats: dict | None = None) -> Iterator[Batch]:
    """Stream ``chunks`` through a shuffle buffer of ``buffer_size`` rows and cut batches.

    When the buffer holds ``buffer_size`` rows or more, it is permuted and every full batch
    beyond the first ``buffer_size // 2`` rows is emitted, so rows from one chunk are spread
    over roughly ``buffer_size`` rows of output. With ``gen=None`` nothing is permuted and
    batches come out in order. ``stats["peak_rows"]`` records the most rows ever buffered.
    """
    stats = {} if stats is None else stats
    stats.setdefault("peak_rows", 0)
    buf: Batch | None = None
    keep_back = buffer_size // 2 if gen is not None else 0
    if gen is None:
        buffer_size = batch_size

    def rows(b: Batch | None) -> int:
        return 0 if b is None else next(iter(b.values())).shape[0]

    def permuted(b: Batch) -> Batch:
        if gen is None:
            return b
        perm = torch.randperm(rows(b), generator=gen)
        return {k: v[perm] for k, v in b.items()}

    for chunk in chunks:
        buf = chunk if buf is None else {k: torch.cat([buf[k], chunk[k]]) for k in buf}
        stats["peak_rows"] = max(stats["peak_rows"], rows(buf))
        if rows(buf) >= buffer_size:
            buf = permuted(buf)
            n_emit = (rows(buf) - keep_back) // batch_size * batch_size
            for i in range(0, n_emit, batch_size):
                yield {k: v[i:i + batch_size] for k, v in buf.items()}
            buf = {k: v[n_emit:] for k, v in buf.items()}
    if rows(buf):
        buf = permuted(buf)
        n = rows(buf)
        end = n // batch_size * batch_size if drop_last else n
        for i in range(0, end, batch_size):
            yield {k: v[i:i + batch_size] for k, v in buf.items()}


class _Resumable:
    """Position bookkeeping shared by both sources: epoch and batches already yielded."""

    seed: int

    def __init__(self) -> None:
        self._epoch, self._done = 0, 0
        self.stats: dict = {"peak_rows": 0}
        """``peak_rows``: the most activation rows ever held in the shuffle buffer."""

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self._epoch, "batches": self._done}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"data state was saved with seed {state['seed']}, this source has seed {self.seed}")
        self._epoch, self._done = int(state["epoch"]), int(state["batches"])

    def _batches(self, epoch: int) -> Iterator[Batch]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        """Yield batches from the saved position on; batches already consumed are replayed
        without being yielded (exact, and cheap next to training)."""
        while self._epoch < self.epochs:
            skip = self._done
            for i, batch in enumerate(self._batches(self._epoch)):
                if i < skip:
                    continue
                self._done = i + 1
                yield batch
            self._epoch, self._done = self._epoch + 1, 0


class ActivationStore(_Resumable):
    """Shuffled batches from one or more cache folders of the same tokens.

    Args:
        folders: ``{name: folder}`` or a list of folders (named by their hook point), each a
            complete cache (``manifest.json``); all must hold the same tokens.
        batch_size: rows per batch.
        buffer_size: rows held in the shuffle buffer (bounds memory, see module docstring).
        seed: fixes the shard order and the shuffle; epoch ``e`` uses ``seed + e``.
        epochs: passes over the cache.
        dtype: dtype of the yielded activations.
        rank, world_size: for data-parallel training: this rank yields batches
            ``rank, rank + world_size, ...`` and every rank yields the same number.
        shards: indices of the shards to read (default: all), e.g. from ``split_shards``.
    """

    def __init__(self, folders: dict[str, str | Path] | list[str | Path] | str | Path, batch_size: int = 4096,
                 buffer_size: int = 2 ** 18, seed: int = 0, epochs: int = 1, shuffle: bool = True,
                 dtype: torch.dtype = torch.float32, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, verify: bool = True, shards: list[int] | None = None) -> None:
        super().__init__()
        if isinstance(folders, (str, Path)):
            folders = [folders]
        if not isinstance(folders, dict):
            folders = {read_manifest(f)["hookpoint"]: f for f in folders}
        self.folders = {k: Path(v) for k, v in folders.items()}
        self.manifests = {k: read_manifest(f) for k, f in self.folders.items()}
        first = next(iter(self.manifests.values()))
        for name, m in self.manifests.items():
            if [s["rows"] for s in m["shards"]] != [s["rows"] for s in first["shards"]] or \
                    m["corpus"]["contexts_sha256"] != first["corpus"]["contexts_sha256"]:
                raise CacheError(f"cache {self.folders[name]} does not hold the same tokens as the others")
        if batch_size <= 0 or buffer_size < batch_size:
            raise ValueError(f"need 0 < batch_size ({batch_size}) <= buffer_size ({buffer_size})")
        self.batch_size, self.buffer_size, self.seed, self.epochs = batch_size, buffer_size, seed, epochs
        self.shuffle, self.dtype, self.drop_last, self.verify = shuffle, dtype, drop_last, verify
        self.rank, self.world_size = rank, world_size
        self.shards = list(range(len(first["shards"]))) if shards is None else list(shards)
        if not self.shards or not all(0 <= s < len(first["shards"]) for s in self.shards):
            raise ValueError(f"shards must be a non-empty subset of 0..{len(first['shards']) - 1}, got {shards}")
        self.n_tokens = sum(int(first["shards"][s]["rows"]) for s in self.shards)
        self._verified: set[tuple[str, int]] = set()
        self.d = {k: int(m["d"]) for k, m in self.manifests.items()}

    def __len__(self) -> int:
        """Batches per epoch yielded to this rank."""
        n = self.n_tokens // self.batch_size if self.drop_last else -(-self.n_tokens // self.batch_size)
        return n // self.world_size

    def _chunks(self, order: list[int]) -> Iterator[Batch]:
        for s in order:
            # each shard's checksum is checked the first time it is read, not on every epoch
            chunk = {k: load_shard(self.folders[k], m["shards"][s], self.verify and (k, s) not in self._verified)
                     ["activations"].to(self.dtype) for k, m in self.manifests.items()}
            self._verified.update((k, s) for k in self.manifests)
            yield chunk

    def _batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = ([self.shards[i] for i in torch.randperm(len(self.shards), generator=gen).tolist()]
                 if self.shuffle else list(self.shards))
        stream = _shuffled_batches(self._chunks(order), self.batch_size, self.buffer_size,
                                   gen if self.shuffle else None, self.drop_last, self.stats)
        limit = len(self)
        for i, batch in enumerate(stream):
            if i // self.world_size >= limit:
                break
            if i % self.world_size == self.rank:
                yield batch


def split_shards(manifest: dict, heldout_tokens: int) -> tuple[list[int], list[int]]:
    """Split a cache's shards into (train, held-out): the trailing shards holding at least
    ``heldout_tokens`` rows are held out. Whole shards keep the two sets disjoint by construction."""
    rows = [int(s["rows"]) for s in manifest["shards"]]
    held, total = [], 0
    for i in reversed(range(len(rows))):
        if total >= heldout_tokens:
            break
        held.insert(0, i)
        total += rows[i]
    train = [i for i in range(len(rows)) if i not in held]
    if heldout_tokens > 0 and not train:
        raise ValueError(f"the cache holds {sum(rows)} tokens in {len(rows)} shards: too few to hold out "
                         f"{heldout_tokens} tokens and still train; cache more tokens or use smaller shards")
    return train, held


class StreamingSource(_Resumable):
    """Batches straight from the model, no disk cache, behind the ``ActivationStore`` interface.

    Each forward pass of ``forward_batch`` contexts adds its kept positions to the shuffle
    buffer. Use it when the activations would not fit on disk or are needed only once.
    """

    def __init__(self, model: LoadedModel, contexts: Contexts, hookpoints: list[str], batch_size: int = 4096,
                 buffer_size: int = 2 ** 16, seed: int = 0, epochs: int = 1, forward_batch: int = 16,
                 drop_last: bool = True) -> None:
        super().__init__()
        self.model, self.contexts, self.hookpoints = model, contexts, list(hookpoints)
        self.batch_size, self.buffer_size, self.seed, self.epochs = batch_size, buffer_size, seed, epochs
        self.forward_batch, self.drop_last = forward_batch, drop_last
        self.n_tokens = contexts.n_kept

    def __len__(self) -> int:
        return self.n_tokens // self.batch_size if self.drop_last else -(-self.n_tokens // self.batch_size)

    def _chunks(self) -> Iterator[Batch]:
        c = self.contexts
        for b in range(0, len(c.tokens), self.forward_batch):
            ids = c.tokens[b:b + self.forward_batch].to(self.model.device)
            keep = c.keep[b:b + self.forward_batch].to(ids.device)
            out = capture(self.model, ids, self.hookpoints)
            yield {h: out[h][keep].float().cpu() for h in self.hookpoints}

    def _batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        yield from _shuffled_batches(self._chunks(), self.batch_size, self.buffer_size, gen, self.drop_last,
                                     self.stats)
