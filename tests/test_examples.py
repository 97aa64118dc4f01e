"""Latent examples from the held-out shards, checked against a brute-force pass over them."""

from __future__ import annotations

import json

import pytest
import torch

import dictionaries as dl
from autointerp import examples as ex
from autointerp.activations import load_shard, read_manifest
from autointerp.examples import ExamplesConfig, collect_examples
from helpers import small_dictionary

HP = "blocks.1.hook_out"
DEAD = 0  # the latent the fixture kills
CFG = ExamplesConfig(n_top=5, n_quantile_bins=3, n_per_quantile=2, n_random=4, window=(3, 2), batch=100)


@pytest.fixture(scope="module")
def dictionary_dir(tiny_model, tmp_path_factory):
    """A 32-latent TopK dictionary over a tiny cache; latent 0 killed; the training shards deleted
    afterwards, so that reading one would fail."""
    path, folder = small_dictionary(tiny_model, tmp_path_factory.mktemp("ex"), HP, DEAD)
    prov = json.loads((path / "autointerp.json").read_text())
    for s in prov["train_shards"]:
        (folder / read_manifest(folder)["shards"][s]["file"]).unlink()
    return path


@pytest.fixture(scope="module")
def records(dictionary_dir):
    return collect_examples(dictionary_dir, CFG, progress=False)


@pytest.fixture(scope="module")
def brute(dictionary_dir):
    """Per held-out context: token ids, dense latents ``[L, F]`` (0 at excluded positions); and densities."""
    prov = json.loads((dictionary_dir / "autointerp.json").read_text())
    folder = prov["caches"][HP]["folder"]
    manifest = read_manifest(folder)
    d = dl.load(dictionary_dir)
    dense, tokens, fired, n = {}, {}, 0, 0
    with torch.inference_mode():
        for s in prov["heldout_shards"]:
            entry = manifest["shards"][s]
            t = load_shard(folder, entry)
            z = d.encode(t["activations"].float())
            fired = fired + (z > 0).sum(0)
            n += z.shape[0]
            lo, hi = entry["contexts"]
            for c in range(lo, hi):
                tokens[c] = t["contexts"][c - lo]
                dense[c] = torch.zeros(t["contexts"].shape[1], z.shape[1])
            for row in range(z.shape[0]):
                dense[int(t["ctx"][row])][int(t["ctx_pos"][row])] = z[row]
    return {"dense": dense, "tokens": tokens, "density": (fired.double() / n)}


def test_density_and_dead_latent(records, brute):
    assert sorted(records) == list(range(32))
    for f, rec in records.items():
        assert rec.density == pytest.approx(float(brute["density"][f]), abs=1e-12)
    dead = records[DEAD]
    assert dead.dead and dead.density == 0 and dead.max_activation == 0 and dead.examples == []
    assert sum(not r.dead for r in records.values()) >= 20  # the rest mostly fire


def test_top_examples_are_the_highest_peaks(records, brute):
    for f, rec in records.items():
        peaks = torch.stack([z[:, f].max() for z in brute["dense"].values()])
        expected = peaks[peaks > 0].sort(descending=True).values[:CFG.n_top].tolist()
        got = [e.peak for e in rec.top]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), f
        for e in rec.top:
            assert e.peak == pytest.approx(float(brute["dense"][e.context_index][:, f].max()), rel=1e-5)
        assert rec.max_activation == pytest.approx(max(expected, default=0.0), rel=1e-5)


def test_windows_match_the_encoded_cache(records, brute):
    width = sum(CFG.window) + 1
    checked = 0
    for f, rec in records.items():
        for e in rec.examples:
            z = brute["dense"][e.context_index][:, f]
            assert len(e.tokens) == len(e.activations) == width
            assert e.tokens == brute["tokens"][e.context_index][e.start:e.start + width].tolist()
            assert e.activations == pytest.approx(z[e.start:e.start + width].tolist(), rel=1e-5, abs=1e-6)
            assert 0 <= e.peak_position < width
            if e.kind == "random":
                assert float(z.max()) == 0.0  # never fires in a random example's context
            else:
                assert e.peak == pytest.approx(float(z.max()), rel=1e-5)  # the window holds the peak
            checked += 1
    assert checked > 200


def test_quantile_and_random_samples(records, brute):
    for rec in records.values():
        if rec.dead:
            continue
        top = {e.context_index for e in rec.top}
        q = rec.quantiles
        assert not top & {e.context_index for e in q}
        assert len({e.context_index for e in q}) == len(q)
        assert all(e.peak > 0 for e in q)
        assert [e.quantile for e in q] == sorted(e.quantile for e in q)
        for lower, upper in zip(q, q[1:]):
            if lower.quantile < upper.quantile:
                assert lower.peak <= upper.peak
        silent = [c for c, z in brute["dense"].items() if float(z[:, rec.latent].max()) == 0.0]
        assert len(rec.random) == min(CFG.n_random, len(silent))  # a uniform sample of the silent ones
        assert len({e.context_index for e in rec.random}) == len(rec.random)
    fired_in = [r for r in records.values() if len(r.top) == CFG.n_top and len(r.quantiles) == CFG.n_quantile]
    assert fired_in  # some latent fills every quantile bin
    assert sum(len(r.random) == CFG.n_random for r in records.values()) >= 10


def test_explain_and_score_sets_disjoint(records):
    n_both = 0
    for rec in records.values():
        explain = {(e.kind, e.context_index) for e in rec.split("explain")}
        score = {(e.kind, e.context_index) for e in rec.split("score")}
        assert not explain & score
        assert len(explain) + len(score) == len(rec.examples)
        for kind in ("top", "quantile", "random"):
            of_kind = [e for e in rec.examples if e.kind == kind]
            n_explain = sum(e.split == "explain" for e in of_kind)
            assert n_explain == -(-len(of_kind) // 2)  # ceil(n / 2)
        n_both += bool(explain) and bool(score)
    assert n_both >= 20


def test_deterministic_and_chunk_invariant(dictionary_dir, records):
    again = collect_examples(dictionary_dir, CFG, progress=False)
    assert again == records  # same seed, same batch: identical, splits included
    other = collect_examples(dictionary_dir, CFG, progress=False, batch=10_000, seed=1)
    for f, rec in records.items():
        assert other[f].density == rec.density
        assert [e.peak for e in other[f].top] == pytest.approx([e.peak for e in rec.top], rel=1e-5)


def test_reads_only_heldout_shards(dictionary_dir, monkeypatch):
    prov = json.loads((dictionary_dir / "autointerp.json").read_text())
    read = []

    def spy(folder, entry, verify=True):
        read.append(entry["file"])
        return load_shard(folder, entry, verify)

    monkeypatch.setattr(ex, "load_shard", spy)
    collect_examples(dictionary_dir, CFG, progress=False)
    files = [s["file"] for s in read_manifest(prov["caches"][HP]["folder"])["shards"]]
    assert read == [files[s] for s in prov["heldout_shards"]]
    assert not set(read) & {files[s] for s in prov["train_shards"]}


def test_config_checks(dictionary_dir, tmp_path):
    assert ExamplesConfig(window=4).window == (4, 4)
    with pytest.raises(ValueError, match="window"):
        ExamplesConfig(window=(-1, 2))
    with pytest.raises(ValueError, match="explain_fraction"):
        ExamplesConfig(explain_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="autointerp.json"):
        collect_examples(tmp_path, progress=False)
