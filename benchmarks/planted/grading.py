"""Grading helpers of the planted benchmark (shared by ``audit.py``, ``behaviour.py`` and the tests):
the labels are read only here, after an audit has run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
SEPARATES = 0.95
"""a latent whose context-level max has this AUROC (triggered vs other contexts) separates them."""


def shared_prefix_positions(model_dir: Path, corpus: Path) -> tuple[int, str]:
    """Context positions (BOS included) that every document of the corpus shares, and their text
    (tokenised as the cache does: :func:`autointerp.audit.checks.corpus_facts`)."""
    from autointerp.audit.checks import corpus_facts

    facts = corpus_facts(Path(model_dir), str(corpus), ctx_len=1 << 30)
    return facts.shared_prefix, facts.shared_prefix_text


def run_config(model: str, corpus: Path, exclude_first: int, latents: int, k: int, threads: int) -> dict:
    return {
        "model": model, "threads": threads,
        "cache": {"corpus": str(corpus), "hookpoints": ["mid"], "tokens": 400_000, "ctx_len": 128,
                  "packing": "document", "exclude_first": exclude_first},
        # the corpus is small (~70k kept tokens): several epochs in small batches
        "train": {"latents": latents, "k": k, "epochs": 10, "batch_size": 1024, "heldout_tokens": 8_000},
        "evaluate": {"contexts": 32},
        "explain": {"explainers": ["token-enrichment"], "llm_features": 0},
        "report": {"feature_pages": "explained"},
    }


def sh(*args: str) -> None:
    import subprocess

    cmd = [sys.executable, "-m", "autointerp.cli", *args]
    print("$ autointerp", " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def context_max(run_dir: Path, n_docs: int) -> tuple[np.ndarray, str]:
    """``[documents, latents]`` max activation of every latent per corpus document (kept tokens)."""
    import dictionaries as dl
    from autointerp.activations import load_shard, read_manifest
    from autointerp.runfolder import RunFolder

    ddir = RunFolder(run_dir).dictionary_dirs()[0]
    prov = json.loads((ddir / "autointerp.json").read_text())
    folder = Path(prov["caches"][prov["input_hookpoint"]]["folder"])
    manifest = read_manifest(folder)
    d = dl.load(ddir)
    out: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for entry in manifest["shards"]:
            s = load_shard(folder, entry)
            z = d(s["activations"].float()).latents
            for doc in s["doc"].unique().tolist():
                m = z[s["doc"] == doc].max(0).values
                out[doc] = torch.maximum(out[doc], m) if doc in out else m
    if max(out) >= n_docs:
        raise RuntimeError(f"document {max(out)} in the cache but only {n_docs} labels")
    acts = np.zeros((n_docs, d.cfg.n_latents), dtype=np.float32)
    for doc, m in out.items():
        acts[doc] = m.numpy()
    return acts, ddir.name


def auroc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores [N, F]`` for binary ``labels [N]`` (ties averaged)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
