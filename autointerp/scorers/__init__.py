"""Scorers: how well does an explanation predict a latent's activations on held-out examples?

``build_scorer(name, **kw)`` builds one from the registry: ``"embedding"``, ``"detection"``,
``"fuzzing"``, ``"simulation"``. Each has one method, ``score(record, explanation) -> Score``.
"""

from autointerp.scorers.base import (SCORERS, Score, Scorer, build_scorer, register, score_examples,
                                     score_with_controls)
from autointerp.scorers.detection import DetectionScorer, FuzzingScorer
from autointerp.scorers.embedding import EmbeddingScorer
from autointerp.scorers.simulation import SimulationScorer

__all__ = ["SCORERS", "DetectionScorer", "EmbeddingScorer", "FuzzingScorer", "Score", "Scorer",
           "SimulationScorer", "build_scorer", "register", "score_examples", "score_with_controls"]
