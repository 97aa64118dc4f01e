"""Explainers: a latent's explain-split examples in, one :class:`Explanation` out.

Registered names (:func:`build_explainer`): ``token-activation``, ``highlight``, ``contrastive``
(ask a language model) and ``token-enrichment`` (a no-LLM baseline).
"""

from autointerp.explainers.base import (
    Explainer, Explanation, build_explainer, explain_examples, explainer_names, register)
from autointerp.explainers.baseline import TokenEnrichmentExplainer, log_odds, token_counts
from autointerp.explainers.llm_explainers import (
    ContrastiveExplainer, HighlightExplainer, LLMExplainer, TokenActivationExplainer, activating_examples)
from autointerp.explainers.prompts import MARKER, MAX_EXPLANATION_CHARS, neutralise, parse_explanation

__all__ = [
    "MARKER", "MAX_EXPLANATION_CHARS", "ContrastiveExplainer", "Explainer", "Explanation",
    "HighlightExplainer",
    "LLMExplainer", "TokenActivationExplainer", "TokenEnrichmentExplainer", "activating_examples",
    "build_explainer", "explain_examples", "explainer_names", "log_odds", "neutralise", "parse_explanation",
    "register", "token_counts",
]
