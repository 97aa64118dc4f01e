"""ActivationStore and StreamingSource: bounded memory, exact coverage, reproducible order, resume."""

from __future__ import annotations

import pytest
import torch

from autointerp.activations import CacheConfig, cache_activations, iter_shards, read_manifest
from autointerp.data import ContextConfig, make_contexts, open_corpus
from autointerp.store import ActivationStore, StreamingSource

HP = ["blocks.1.hook_out", "blocks.2.hook_out"]


@pytest.fixture(scope="module")
def cache(tiny_model, tmp_path_factory):
    cfg = CacheConfig(model=str(tiny_model.source), hookpoints=HP, tokens=5000, batch_size=4, shard_contexts=8,
                      context=ContextConfig(ctx_len=64))
    return cache_activations(cfg, tmp_path_factory.mktemp("c") / "acts", model=tiny_model, progress=False)


def all_rows(folder):
    return torch.cat([s["activations"] for s in iter_shards(folder)])


def row_keys(x):
    """A sortable fingerprint of each row, to compare multisets of rows."""
    return sorted(map(tuple, x[:, :4].tolist()))


def test_epoch_covers_every_row_once(cache):
    store = ActivationStore(cache, batch_size=100, buffer_size=1000, seed=1, drop_last=False)
    batches = list(store)
    got = {h: torch.cat([b[h] for b in batches]) for h in HP}
    for h in HP:
        assert row_keys(got[h]) == row_keys(all_rows(cache[h]))
    # rows stay aligned across hook points: the same permutation was applied to both
    ref = {h: all_rows(cache[h]) for h in HP}
    idx = [int((ref[HP[0]] == r).all(1).nonzero()[0]) for r in got[HP[0]][:20]]
    assert torch.equal(got[HP[1]][:20], ref[HP[1]][idx])
    # and it is shuffled
    assert not torch.equal(got[HP[0]], ref[HP[0]])


def test_memory_bound_independent_of_cache_size(cache):
    shard_rows = max(s["rows"] for s in read_manifest(cache[HP[0]])["shards"])
    store = ActivationStore(cache, batch_size=64, buffer_size=512, seed=0)
    n = sum(1 for _ in store)
    assert n == len(store) == 5000 // 64
    assert store.stats["peak_rows"] <= 512 + shard_rows


def test_seeded_order_is_reproducible(cache):
    def first(seed):
        return [b[HP[0]] for b in ActivationStore(cache, batch_size=50, buffer_size=500, seed=seed)][:5]
    a, b, c = first(3), first(3), first(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_resume_from_state_dict(cache):
    full = [b[HP[0]] for b in ActivationStore(cache, batch_size=50, buffer_size=500, seed=7, epochs=2)]
    store = ActivationStore(cache, batch_size=50, buffer_size=500, seed=7, epochs=2)
    it = iter(store)
    head = [next(it)[HP[0]] for _ in range(len(store) + 3)]  # into the second epoch
    state = store.state_dict()
    fresh = ActivationStore(cache, batch_size=50, buffer_size=500, seed=7, epochs=2)
    fresh.load_state_dict(state)
    tail = [b[HP[0]] for b in fresh]
    assert len(head) + len(tail) == len(full)
    assert all(torch.equal(x, y) for x, y in zip(head + tail, full))


def test_ranks_split_batches(cache):
    stores = [ActivationStore(cache, batch_size=64, buffer_size=512, seed=0, rank=r, world_size=2) for r in (0, 1)]
    parts = [[b[HP[0]] for b in s] for s in stores]
    assert len(parts[0]) == len(parts[1]) == len(stores[0])
    whole = [b[HP[0]] for b in ActivationStore(cache, batch_size=64, buffer_size=512, seed=0)]
    assert all(torch.equal(x, y) for x, y in zip(parts[0], whole[0::2]))
    assert all(torch.equal(x, y) for x, y in zip(parts[1], whole[1::2]))


def test_streaming_source_yields_the_cached_rows(tiny_model, cache):
    ctx = make_contexts(open_corpus("python-stdlib"), tiny_model.tokenizer, ContextConfig(ctx_len=64), 5000)
    stream = StreamingSource(tiny_model, ctx, HP, batch_size=100, buffer_size=1000, seed=0, forward_batch=4,
                             drop_last=False)
    got = torch.cat([b[HP[0]] for b in stream])
    ref = all_rows(cache[HP[0]])
    assert got.shape == ref.shape
    a, b = got[torch.argsort(got[:, 0])], ref[torch.argsort(ref[:, 0])]
    assert (a - b).abs().max() < 1e-4
    assert stream.stats["peak_rows"] <= 1000 + 4 * 64


def test_corrupt_shard_named_by_the_store(cache, tmp_path):
    import shutil

    from autointerp.activations import CacheError

    copy = tmp_path / "c"
    shutil.copytree(cache[HP[0]], copy)
    victim = copy / "shard-00002.safetensors"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard-00002\.safetensors is corrupt"):
        for _ in ActivationStore(copy, batch_size=64, buffer_size=512, shuffle=False):
            pass
