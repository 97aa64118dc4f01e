"""Published dictionaries in a run (``autointerp run --dictionary PATH``) and hook-point names both ways."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import dictionaries as dl
from autointerp.config import load_config
from autointerp.models.hooknames import from_saelens, from_sparsify, to_saelens
from autointerp.pipeline import run
from autointerp.published import PublishedDictionaryError, dictionary_hookpoint
from autointerp.runfolder import RunFolder
from dictionaries.interop import export_saelens, load_any
from helpers import run_cli, tiny_run_config, write_word_corpus


@pytest.mark.parametrize("ours, theirs", [("blocks.3.hook_in", "blocks.3.hook_resid_pre"),
                                          ("blocks.15.hook_out", "blocks.15.hook_resid_post"),
                                          ("blocks.0.ln2.hook_in", "blocks.0.hook_resid_mid"),
                                          ("blocks.7.attn.hook_out", "blocks.7.hook_attn_out"),
                                          ("blocks.7.mlp.hook_out", "blocks.7.hook_mlp_out")])
def test_hook_names_map_both_ways(ours, theirs):
    assert from_saelens(theirs) == ours and to_saelens(ours) == theirs
    assert from_saelens(ours) == ours and to_saelens(theirs) == theirs  # already in the target naming


def test_sparsify_module_names_and_unknown_names():
    assert from_sparsify("layers.6") == "blocks.6.hook_out"
    assert from_sparsify("layers.6.mlp") == "blocks.6.mlp.hook_out"
    assert from_sparsify("model.layers.2.self_attn") == "blocks.2.attn.hook_out"
    with pytest.raises(ValueError, match="'blocks.3.hook_z' has no equivalent here; understood"):
        from_saelens("blocks.3.hook_z")
    with pytest.raises(ValueError, match="'embed' has no equivalent"):
        from_sparsify("embed")


def _random(d_in: int, seed: int = 3) -> dl.Dictionary:
    torch.manual_seed(seed)
    d = dl.build(dl.DictionaryConfig("topk", d_in=d_in, n_latents=48, k=4))
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return d.eval()


def _saelens_folder(tmp_path, d_in: int, hook: str | None = "blocks.2.hook_resid_post"):
    folder = export_saelens(_random(d_in), tmp_path / "published" / "sae")
    raw = json.loads((folder / "cfg.json").read_text())
    if hook:  # as SAE Lens writes it
        raw.setdefault("metadata", {})["hook_name"] = hook
    (folder / "cfg.json").write_text(json.dumps(raw))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_word_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(tiny_model_dir, corpus, dictionary, **train):
    raw = tiny_run_config(tiny_model_dir, corpus)
    raw["train"].update(dictionary=str(dictionary), **train)
    return load_config(raw)


def test_a_saelens_dictionary_runs_every_stage_without_training(tiny_model_dir, corpus, tmp_path):
    src = _saelens_folder(tmp_path, 64)
    root = tmp_path / "run"
    figures = run(_cfg(tiny_model_dir, corpus, src), root, progress=False)
    rf = RunFolder(root)
    (ddir,) = rf.dictionary_dirs()
    assert ddir.name == "blocks.2.hook_out"  # SAE Lens's hook_resid_post, in our naming
    assert list((rf.activations).iterdir()) == [rf.activations / "blocks.2.hook_out"]
    prov = json.loads((ddir / "autointerp.json").read_text())
    assert prov["job"]["format"] == "saelens" and prov["train_shards"] == [] and prov["steps"] == 0
    manifest = json.loads((rf.activations / "blocks.2.hook_out" / "manifest.json").read_text())
    assert prov["heldout_shards"] == list(range(len(manifest["shards"])))  # nothing trained: all held out
    x = torch.randn(10, 64)
    with torch.no_grad():
        assert torch.allclose(dl.load(ddir)(x).x_hat, load_any(src)(x).x_hat, atol=1e-5)
    assert figures["train"]["dictionaries"]["blocks.2.hook_out"]["imported_from"] == str(src)
    assert figures["evaluate"]["dictionaries"]["blocks.2.hook_out"]["fvu"] is not None
    assert figures["examples"]["dictionaries"]["blocks.2.hook_out"]["features"] == 48
    assert rf.report.is_file()


def test_sparsify_and_our_own_folders_and_an_explicit_hook_point(tiny_model_dir, corpus, tmp_path):
    from dictionaries.interop import load_sparsify

    d = _random(64, seed=5)
    sp = tmp_path / "sparsify" / "layers.1"
    sp.mkdir(parents=True)
    # sparsify's layout: W_dec rows per latent, encoder as a Linear
    save_file({"encoder.weight": d.W_enc.detach().T.contiguous(), "encoder.bias": d.b_enc.detach().contiguous(),
               "W_dec": d.W_dec.detach().contiguous(), "b_dec": d.b_dec.detach().contiguous()},
              str(sp / "sae.safetensors"))
    (sp / "cfg.json").write_text(json.dumps({"activation": "topk", "num_latents": 48, "k": 4, "d_in": 64,
                                             "normalize_decoder": False, "skip_connection": False,
                                             "transcode": False, "multi_topk": False}))
    load_sparsify(sp)
    assert dictionary_hookpoint(sp) == "blocks.1.hook_out"
    ours = dl.save(d, tmp_path / "ours")
    with pytest.raises(PublishedDictionaryError, match="does not say which hook point it reads: set "
                                                       "train.dictionary_hookpoint"):
        dictionary_hookpoint(ours)
    assert dictionary_hookpoint(ours, "blocks.3.hook_resid_pre") == "blocks.3.hook_in"
    root = tmp_path / "run"
    run(_cfg(tiny_model_dir, corpus, ours, dictionary_hookpoint="blocks.1.hook_out"), root, progress=False,
        until="examples")
    assert [p.name for p in RunFolder(root).dictionary_dirs()] == ["blocks.1.hook_out"]


def test_bad_published_dictionaries_are_clear_errors(tiny_model_dir, corpus, tmp_path):
    wide = _saelens_folder(tmp_path / "wide", 96)
    proc = run_cli("run", "--out", str(tmp_path / "r1"), "--model", str(tiny_model_dir), "--dictionary", str(wide),
                   "--cache.corpus", str(corpus), "--cache.tokens", "500", check=False)
    assert proc.returncode == 2
    assert "reads vectors of width 96, but" in proc.stderr and "gives width 64 at blocks.2.hook_out" in proc.stderr
    assert not (tmp_path / "r1" / "activations" / "blocks.2.hook_out").exists()  # refused before caching
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    from autointerp.pipeline import RunError

    with pytest.raises(RunError, match="stage cache: .*not a dictionaries, SAE Lens or sparsify folder"):
        run(_cfg(tiny_model_dir, corpus, junk), tmp_path / "r2", progress=False)
    nohook = _saelens_folder(tmp_path / "nohook", 64, hook=None)
    with pytest.raises(PublishedDictionaryError, match="does not say which hook point"):
        dictionary_hookpoint(nohook)
    far = _saelens_folder(tmp_path / "far", 64, hook="blocks.40.hook_resid_post")
    with pytest.raises(RunError, match="stage cache: .*blocks.40.hook_out"):
        run(_cfg(tiny_model_dir, corpus, far), tmp_path / "r3", progress=False)
    shutil.rmtree(tmp_path / "r1", ignore_errors=True)
