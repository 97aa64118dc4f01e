"""Embedding scorer: does the explanation retrieve the activating contexts?

With ``q = embed(explanation)`` and ``d_i = embed(text of context i)`` (all-MiniLM-L6-v2,
L2-normalised), ``s_i = q . d_i`` is the cosine similarity, and

    value = AUROC(s_i, y_i),   y_i = 1 for top/quantile contexts, 0 for random ones

over the score split, with a bootstrap 95% interval over the contexts. No LLM is called.
"""

from __future__ import annotations

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
        self._docs_key: tuple[str, ...] | None = None
        self._docs_emb = None

    def score(self, record: LatentRecord, explanation: str) -> Score:
        items = score_examples(record)
        labels = [y for _, y in items]
        if len(set(labels)) < 2:
            return Score.failed(self.name, "error", f"latent {record.latent}: the score split needs both "
                                f"activating and random contexts, got labels {sorted(set(labels))}",
                                n=len(items))
        model = load_embedder(self.model_folder)
        docs = [self.tokenizer.decode(e.tokens) for e, _ in items]
        # an explanation and its controls are scored on the same contexts: embed them once
        key = tuple(docs)
        if self._docs_key != key:
            self._docs_emb = model.encode(docs, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False)
            self._docs_key = key
        query = model.encode([explanation], normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)[0]
        sims_N = self._docs_emb @ query
        ci = bootstrap_ci(labels, sims_N.tolist(), statistic=auroc, n_boot=self.n_boot, seed=self.seed)
        return Score(scorer=self.name, value=auroc(labels, sims_N), status="ok", n=len(items), ci_low=ci.low,
                     ci_high=ci.high, method="cosine-auroc",
                     details={"mean_sim_activating": float(np.mean(sims_N[np.array(labels) == 1])),
                              "mean_sim_random": float(np.mean(sims_N[np.array(labels) == 0]))})
