"""What a dictionary folder trained by ``autointerp train`` records about its origin: its name (the
``features.dictionary`` key), its provenance (model, hook points, caches), the model's tokenizer and
the token counts of its held-out contexts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from autointerp.training import PROVENANCE


def dictionary_name(dictionary_dir: str | Path) -> str:
    """The ``features.dictionary`` key of a dictionary: its folder name."""
    return Path(dictionary_dir).resolve().name


def provenance(dictionary_dir: str | Path) -> dict:
    """The dictionary's provenance file (model, hook points, caches, held-out shards), as written by
    ``autointerp train``; a ``FileNotFoundError`` for a folder without one."""
    path = Path(dictionary_dir) / PROVENANCE
    if not path.exists():
        raise FileNotFoundError(f"{dictionary_dir} has no {PROVENANCE}: not a dictionary trained by `autointerp train`")
    return json.loads(path.read_text())


def model_spec(dictionary_dir: str | Path) -> str:
    """The spec of the model whose activations the dictionary was trained on."""
    return provenance(dictionary_dir)["model"]["spec"]


def load_tokenizer(dictionary_dir: str | Path):
    """The tokenizer of the dictionary's model (no weights loaded)."""
    import autointerp  # noqa: F401  (offline mode before transformers is imported)
    from transformers import AutoTokenizer

    from autointerp.models import resolve

    return AutoTokenizer.from_pretrained(resolve(model_spec(dictionary_dir))[0])


def heldout_token_counts(dictionary_dir: str | Path) -> Counter[int]:
    """Token counts of the held-out contexts of the dictionary's cache (the baseline's corpus)."""
    from autointerp.activations import load_shard, read_manifest
    from autointerp.explainers import token_counts

    prov = provenance(dictionary_dir)
    folder = Path(prov["caches"][prov["input_hookpoint"]]["folder"])
    manifest = read_manifest(folder)
    counts: Counter[int] = Counter()
    for s in prov["heldout_shards"]:
        counts.update(token_counts(load_shard(folder, manifest["shards"][s])["contexts"]))
    return counts
