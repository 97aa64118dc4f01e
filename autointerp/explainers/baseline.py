"""``token-enrichment``: a no-LLM baseline naming the tokens a latent fires on more than chance.

Counts ``a_t`` are the tokens at the firing positions (activation > 0) of the record's
explain-split ``top`` examples, ``A = sum_t a_t``; ``b_t``, ``B`` the same for the corpus counts
passed in (e.g. :func:`token_counts` of the held-out contexts). Each token seen in the latent's
contexts is scored by its add-one smoothed log-odds ratio

    score(t) = log((a_t + 1) / (A - a_t + 1)) - log((b_t + 1) / (B - b_t + 1))

and the ``n_tokens`` highest (ties: lower token id) are named: ``tokens: "foo", "bar"``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping

import torch
from jaxtyping import Int
from torch import Tensor

from autointerp.examples import LatentRecord
from autointerp.explainers.base import Explainer, Explanation, explain_examples, register
from autointerp.explainers.prompts import Tokenizer


def token_counts(contexts: Iterable[Iterable[int]] | Int[Tensor, "n ctx"]) -> Counter[int]:
    """How often each token id occurs in ``contexts`` (a tensor or any nested iterable of ids)."""
    if isinstance(contexts, Tensor):
        ids, counts = contexts.flatten().unique(return_counts=True)
        return Counter(dict(zip(ids.tolist(), counts.tolist())))
    return Counter(t for ctx in contexts for t in ctx)


def log_odds(a: int, total_a: int, b: int, total_b: int) -> float:
    """Add-one smoothed log-odds ratio: seen ``a`` of ``total_a`` times versus ``b`` of ``total_b`` times."""
    return math.log((a + 1) / (total_a - a + 1)) - math.log((b + 1) / (total_b - b + 1))


@register("token-enrichment")
class TokenEnrichmentExplainer(Explainer):
    """Names the most enriched firing tokens; needs no language model."""

    def __init__(self, corpus_counts: Mapping[int, int] | Int[Tensor, " vocab"], tokenizer: Tokenizer,
                 *, n_tokens: int = 3):
        """``corpus_counts``: token id -> count, or a tensor of counts indexed by token id."""
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be positive, got {n_tokens}")
        if isinstance(corpus_counts, Tensor):
            counts = corpus_counts.flatten().to(torch.long)
            corpus_counts = {i: c for i, c in enumerate(counts.tolist()) if c}
        self.corpus = Counter(corpus_counts)
        self.corpus_total = sum(self.corpus.values())
        self.tokenizer = tokenizer
        self.n_tokens = n_tokens

    def scores(self, record: LatentRecord) -> dict[int, float]:
        """Log-odds score of every token at a firing position of the explain-split top examples."""
        firing = Counter(t for e in explain_examples(record) if e.kind == "top"
                         for t, a in zip(e.tokens, e.activations) if a > 0)
        total = sum(firing.values())
        return {t: log_odds(a, total, self.corpus[t], self.corpus_total) for t, a in firing.items()}

    def explain(self, record: LatentRecord) -> Explanation:
        scores = self.scores(record)
        if not scores:
            return Explanation(None, "error", self.name, "none", error=(
                f"latent {record.latent} has no firing token in its explain-split top examples"))
        best = sorted(scores, key=lambda t: (-scores[t], t))[:self.n_tokens]
        decoded = [self.tokenizer.decode([t]) for t in best]
        names = [json.dumps(d.strip() or d, ensure_ascii=False) for d in decoded]  # keep a pure-space token
        n_top = sum(1 for e in explain_examples(record) if e.kind == "top")
        return Explanation("tokens: " + ", ".join(names), "ok", self.name, "none", n_examples_used=n_top)
