"""The activation cache: exact values, manifest, crash safety, corruption and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autointerp.activations import CacheConfig, CacheError, cache_activations, iter_shards, read_manifest
from autointerp.data import ContextConfig, CorpusError
from autointerp.models import HookPointError, ModelNotFoundError
from helpers import AUTOINTERP, REPO, make_tiny_model, plain_hidden_states, run_cli

HP = ["blocks.1.hook_out", "blocks.3.mlp.hook_in"]


def small_cfg(model_dir, corpus="python-stdlib", **kw) -> CacheConfig:
    base = dict(model=str(model_dir), hookpoints=HP, corpus=corpus, tokens=3000, batch_size=4, shard_contexts=8,
                context=ContextConfig(ctx_len=64))
    return CacheConfig(**{**base, **kw})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_values_and_manifest(tiny_model, tmp_path):
    cfg = small_cfg(tiny_model.source)
    out = cache_activations(cfg, tmp_path / "acts", model=tiny_model, progress=False)
    m = read_manifest(out[HP[0]])
    assert m["tokens"] == 3000 and m["d"] == 64 and m["hookpoint"] == HP[0]
    assert sum(s["rows"] for s in m["shards"]) == 3000
    assert m["model"]["sha256"] == tiny_model.checksum and m["corpus"]["spec"] == "python-stdlib"
    assert m["exclusions"]["rules"] == {"special_tokens": True, "first_positions": 4}
    assert m["exclusions"]["dropped"]["first_positions"] > 0
    # every row equals the plain transformers hidden state of its token
    shard = next(iter_shards(out[HP[0]]))
    ctx = shard["contexts"].long()
    hidden = plain_hidden_states(tiny_model.source, ctx)[2]
    rows = hidden[shard["ctx"].long(), shard["ctx_pos"].long()]
    assert (rows - shard["activations"]).abs().max() < 1e-4
    assert torch.equal(ctx[shard["ctx"].long(), shard["ctx_pos"].long()].int(), shard["token_ids"])
    assert (shard["ctx_pos"] >= 4).all()
    # the two hook points hold the same tokens
    other = next(iter_shards(out[HP[1]]))
    assert torch.equal(other["token_ids"], shard["token_ids"])


def test_storage_dtypes(tiny_model, tmp_path):
    ref = cache_activations(small_cfg(tiny_model.source, tokens=500), tmp_path / "f32", model=tiny_model,
                            progress=False)[HP[0]]
    x = next(iter_shards(ref))["activations"]
    for dtype, tol in [("float16", 1e-3), ("bfloat16", 1e-2)]:
        out = cache_activations(small_cfg(tiny_model.source, tokens=500, dtype=dtype), tmp_path / dtype,
                                model=tiny_model, progress=False)[HP[0]]
        y = next(iter_shards(out))["activations"]
        assert str(y.dtype) == f"torch.{dtype}"
        assert ((y.float() - x).norm() / x.norm()) < tol


def test_finished_cache_is_not_recomputed(tiny_model, tmp_path):
    cfg = small_cfg(tiny_model.source, tokens=400)
    out = cache_activations(cfg, tmp_path / "a", model=tiny_model, progress=False)[HP[0]]
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    cache_activations(cfg, tmp_path / "a", model=tiny_model, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_other_config_refused_unless_overwrite(tiny_model, tmp_path):
    cache_activations(small_cfg(tiny_model.source, tokens=400), tmp_path / "a", model=tiny_model, progress=False)
    other = small_cfg(tiny_model.source, tokens=500)
    with pytest.raises(CacheError, match="different config.*--overwrite"):
        cache_activations(other, tmp_path / "a", model=tiny_model, progress=False)
    assert read_manifest(tmp_path / "a" / HP[0])["tokens"] == 400  # nothing lost
    cache_activations(other, tmp_path / "a", model=tiny_model, progress=False, overwrite=True)
    assert read_manifest(tmp_path / "a" / HP[0])["tokens"] == 500


def test_corrupted_shard_is_named(tiny_model, tmp_path):
    out = cache_activations(small_cfg(tiny_model.source), tmp_path / "a", model=tiny_model, progress=False)[HP[0]]
    victim = out / "shard-00001.safetensors"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard-00001\.safetensors is corrupt"):
        list(iter_shards(out))


def test_short_corpus_says_how_many(tiny_model, text_corpus, tmp_path, caplog):
    cfg = small_cfg(tiny_model.source, corpus=str(text_corpus), tokens=1_000_000)
    out = cache_activations(cfg, tmp_path / "a", model=tiny_model, progress=False)[HP[0]]
    m = read_manifest(out)
    assert m["corpus_exhausted"] and 0 < m["tokens"] < 1_000_000
    assert f"has only {m['tokens']} usable tokens" in caplog.text


def test_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(HookPointError, match="unknown hook point"):
        cache_activations(small_cfg(tiny_model.source, hookpoints=["blocks.1.nope"]), tmp_path / "a",
                          model=tiny_model, progress=False)
    with pytest.raises(HookPointError, match="beyond the model"):
        cache_activations(small_cfg(tiny_model.source, hookpoints=["blocks.7.hook_out"]), tmp_path / "a",
                          model=tiny_model, progress=False)
    with pytest.raises(ModelNotFoundError):
        cache_activations(small_cfg(tmp_path / "no-model"), tmp_path / "a", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no usable tokens"):
        cache_activations(small_cfg(tiny_model.source, corpus=str(tmp_path / "empty")), tmp_path / "a",
                          model=tiny_model, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="cannot write the cache"):
        cache_activations(small_cfg(tiny_model.source), tmp_path / "file" / "sub", model=tiny_model,
                          progress=False)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        small_cfg(tiny_model.source, shard_contexts=6)
    with pytest.raises(ValueError, match="dtype must be one of"):
        small_cfg(tiny_model.source, dtype="int8")
    with pytest.raises(CacheError, match="no manifest.json"):
        read_manifest(tmp_path)


def test_cli_errors_are_clear(tiny_model_dir, tmp_path):
    proc = run_cli("cache", "--model", str(tiny_model_dir), "--hookpoints", "blocks.9.hook_out",
                   "--tokens", "100", "--out", str(tmp_path / "a"), check=False)
    assert proc.returncode == 2
    assert "layer 9 is beyond the model, which has 4 layers" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory, tokenizer_dir):
    """A random model big enough that a cache job takes a few seconds (time to kill it)."""
    return make_tiny_model(tmp_path_factory.mktemp("slow") / "model", tokenizer_dir, n_layers=6, d_model=256)


def test_resume_after_sigkill_is_byte_identical(slow_model_dir, tmp_path):
    args = ["cache", "--model", str(slow_model_dir), "--hookpoints", "blocks.4.hook_out,blocks.2.hook_out",
            "--tokens", "60000", "--batch-size", "4", "--shard-contexts", "4", "--threads", "1"]
    ref = tmp_path / "ref"
    run_cli(*args, "--out", str(ref))

    killed = tmp_path / "killed"
    for attempt in range(3):
        proc = subprocess.Popen([*AUTOINTERP, *args, "--out", str(killed)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        deadline = time.time() + 120
        shards = killed / "blocks.4.hook_out"
        while time.time() < deadline and len(list(shards.glob("shard-*.safetensors"))) < 5 + 5 * attempt:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (shards / "manifest.json").exists(), "job finished before it could be killed"
    n_before = len(list(shards.glob("shard-*.safetensors")))
    assert 0 < n_before < len(read_manifest(ref / "blocks.4.hook_out")["shards"])
    run_cli(*args, "--out", str(killed))
    assert folder_bytes(killed) == folder_bytes(ref)


def test_torchrun_two_ranks_match_single_process(tiny_model_dir, tmp_path):
    args = ["cache", "--model", str(tiny_model_dir), "--hookpoints", "blocks.1.hook_out",
            "--tokens", "4000", "--batch-size", "4", "--shard-contexts", "8", "--threads", "1"]
    run_cli(*args, "--out", str(tmp_path / "single"))
    torchrun = [os.path.join(os.path.dirname(AUTOINTERP[0]), "torchrun"), "--standalone", "--nproc_per_node", "2",
                "-m", "autointerp.cli", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(torchrun, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = folder_bytes(tmp_path / "single"), folder_bytes(tmp_path / "ddp")
    assert single.keys() == ddp.keys() and len(single) > 3
    assert single == ddp
    shard = load_file(tmp_path / "ddp" / "blocks.1.hook_out" / "shard-00001.safetensors")
    assert shard["activations"].shape[1] == 64
    assert json.loads((tmp_path / "ddp" / "blocks.1.hook_out" / "manifest.json").read_text())["tokens"] == 4000
