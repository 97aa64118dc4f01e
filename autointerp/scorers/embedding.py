"""Embedding scorer: does the explanation retrieve the activating contexts?

With ``q = embed(explanation)`` and ``d_i = embed(text of context i)`` (all-MiniLM-L6-v2,
L2-normalised), ``s_i = q . d_i`` is the cosine similarity, and

    value = AUROC(s_i, y_i),   y_i = 1 for top/quantile contexts, 0 for random ones

over the score split, with a bootstrap 95% interval over the contexts. No LLM is called.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from autointerp.examples import LatentRecord
from autointerp.scorers.base import Decoder, Score, Scorer, register, score_examples
from autointerp.scorers.metrics import auroc, bootstrap_ci

_MODELS: dict[str, object] = {}
"""Loaded sentence-transformers models by folder: one load per process (a load takes seconds)."""


def load_embedder(folder: str | Path | None = None):
    """The sentence-transformers model in ``folder`` (default: the embedded MiniLM asset), cached."""
    if folder is None:
        from autointerp.models.embedded import ASSETS

        folder = ASSETS["all-minilm-l6-v2"].ensure()
    key = str(Path(folder).resolve())
    if key not in _MODELS:
        import autointerp  # noqa: F401  (offline mode before sentence_transformers imports transformers)
        from sentence_transformers import SentenceTransformer

        _MODELS[key] = SentenceTransformer(key, device="cpu")
    return _MODELS[key]


@register("embedding")
class EmbeddingScorer(Scorer):
    """AUROC of explanation-context cosine similarity (activating vs random contexts).

    ``tokenizer`` decodes the examples' token ids to text; ``model_folder`` defaults to the
    embedded all-MiniLM-L6-v2.
    """

    def __init__(self, tokenizer: Decoder, model_folder: str | Path | None = None, batch_size: int = 32,
                 n_boot: int = 1000, seed: int = 0):
        self.tokenizer, self.model_folder = tokenizer, model_folder
        self.batch_size, self.n_boot, self.seed = batch_size, n_boot, seed
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    CACHE_SIZE = 50_000
    """texts whose embedding is kept (384 floats each: ~77 MB): contexts and explanations recur
    across features (random contexts, an explanation and its controls), so most are embedded once."""

    def _embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings ``[len(texts), d]``; texts seen recently come from the cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            emb = load_embedder(self.model_folder).encode(missing, batch_size=self.batch_size,
                                                          normalize_embeddings=True, convert_to_numpy=True,
                                                          show_progress_bar=False)
            self._cache.update(zip(missing, emb))
        out = np.stack([self._cache[t] for t in texts])
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return out

    def score(self, record: LatentRecord, explanation: str) -> Score:
        items = score_examples(record)
        labels = [y for _, y in items]
        if len(set(labels)) < 2:
            return Score.failed(self.name, "error", f"latent {record.latent}: the score split needs both "
                                f"activating and random contexts, got labels {sorted(set(labels))}",
                                n=len(items))
        docs = [self.tokenizer.decode(e.tokens) for e, _ in items]
        emb = self._embed([explanation, *docs])
        sims_N = emb[1:] @ emb[0]
        ci = bootstrap_ci(labels, sims_N.tolist(), statistic=auroc, n_boot=self.n_boot, seed=self.seed)
        return Score(scorer=self.name, value=auroc(labels, sims_N), status="ok", n=len(items), ci_low=ci.low,
                     ci_high=ci.high, method="cosine-auroc",
                     details={"mean_sim_activating": float(np.mean(sims_N[np.array(labels) == 1])),
                              "mean_sim_random": float(np.mean(sims_N[np.array(labels) == 0]))})
