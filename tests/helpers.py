"""Helpers shared by the tests (importable as ``helpers``: setup.cfg puts tests/ on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
AUTOINTERP = [sys.executable, "-m", "autointerp.cli"]


def make_tiny_model(path: Path, tokenizer_dir: Path, n_layers: int = 4, d_model: int = 64, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def make_tiny_gemma(path: Path, tokenizer_dir: Path, n_layers: int = 4, d_model: int = 32, sliding_window: int = 4,
                    softcap: float | None = None, vocab_size: int = 262_144, seed: int = 0) -> Path:
    """A tiny random Gemma 3: Gemma's 262,144-row vocabulary (the tokenizer of ``tokenizer_dir``
    uses its first ids), scaled embeddings, every layer but the last on a ``sliding_window``-token
    window, optional final logit soft-capping."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Gemma3TextConfig(vocab_size=max(vocab_size, len(tok)), hidden_size=d_model, intermediate_size=2 * d_model,
                           num_hidden_layers=n_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           query_pre_attn_scalar=16, sliding_window=sliding_window,
                           layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
                           final_logit_softcapping=softcap, max_position_embeddings=512, tie_word_embeddings=True,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # random norms (Gemma's RMSNorm weight is an offset from 1, initialised 0)
        for name, prm in model.named_parameters():
            if "norm" in name:
                prm.normal_(0, 0.3)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def run_cli(*args: str, env: dict | None = None, check: bool = True):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([*AUTOINTERP, *args], capture_output=True, text=True, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"autointerp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def plain_hidden_states(model_dir, ids):
    """``output_hidden_states`` of a plain transformers model (its default attention), no bridge."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return plain(ids, output_hidden_states=True).hidden_states


def small_dictionary(tiny_model, root: Path, hookpoint: str, dead: int) -> tuple[Path, Path]:
    """A 32-latent TopK dictionary over a tiny cache of ``tiny_model``, latent ``dead`` killed
    (zero encoder column, very negative bias). Returns (dictionary folder, cache folder)."""
    import dictionaries as dl
    from autointerp.activations import CacheConfig, cache_activations
    from autointerp.data import ContextConfig
    from autointerp.training import TrainJob, train_from_cache

    cfg = CacheConfig(model=str(tiny_model.source), hookpoints=[hookpoint], tokens=2500, batch_size=4,
                      shard_contexts=8, context=ContextConfig(ctx_len=32))
    folder = cache_activations(cfg, root / "acts", model=tiny_model, progress=False)[hookpoint]
    job = TrainJob(activations=[str(folder)], out=str(root / "dicts"), latents=[32], k=[4], batch_size=128,
                   heldout_tokens=600, buffer_size=512)
    train_from_cache(job, progress=False)
    path = root / "dicts" / hookpoint
    d = dl.load(path)
    with torch.no_grad():
        d.W_enc[:, dead] = 0.0
        d.b_enc[dead] = -1e4
    dl.save(d, path)
    return path, folder


def write_word_corpus(folder: Path, n_docs: int = 8, words_per_doc: int = 400) -> Path:
    """Plain-text documents of code-like words, deterministic."""
    words = "alpha beta gamma delta import return class def print self value index list dict".split()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        body = " ".join(words[(i * 7 + j * j) % len(words)] for j in range(words_per_doc))
        (folder / f"doc{i}.txt").write_text(f"Document {i}: {body}\n")
    return folder


def tiny_run_config(model_dir: Path, corpus: Path) -> dict:
    """An ``autointerp run`` config for the tiny model that runs every stage in seconds."""
    return {
        "model": str(model_dir), "threads": 2,
        "cache": {"corpus": str(corpus), "hookpoints": ["mid"], "tokens": 3000, "ctx_len": 32, "batch_size": 8,
                  "shard_contexts": 16, "exclude_first": 1},
        "train": {"latents": 64, "k": 4, "batch_size": 256, "heldout_tokens": 900, "checkpoint_every": 2},
        "evaluate": {"contexts": 8},
        "examples": {"n_top": 6, "n_quantile_bins": 2, "n_per_quantile": 2, "n_random": 6, "window_before": 4,
                     "window_after": 2},
        "explain": {"llm_features": 2, "concurrency": 2, "features": 12},
        "report": {"feature_pages": "explained"},
    }
