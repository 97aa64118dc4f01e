"""The scorer interface: ``Scorer.score(record, explanation) -> Score``, a registry, and controls.

A scorer measures how well an explanation predicts a latent's behaviour on the record's
``split == "score"`` examples only (the explainer saw the ``"explain"`` ones). Activating
examples are the ``top`` and ``quantile`` kinds (label 1), non-activating the ``random`` kind
(label 0).

Failures never become numbers: a :class:`Score` whose ``status`` is not ``"ok"`` has
``value`` None and says why in ``error``.
"""

from __future__ import annotations

import collections
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

from autointerp.examples import Example, LatentRecord
from autointerp.explainers.prompts import neutralise  # noqa: F401  (one definition for every prompt)
from autointerp.llm.base import STATUSES, Completion, Status


class Decoder(Protocol):
    """What scorers need of a tokenizer (a Hugging Face tokenizer qualifies)."""

    def decode(self, token_ids: list[int]) -> str: ...


@dataclass
class Score:
    """The result of scoring one explanation of one latent."""

    scorer: str
    """registry name of the scorer (``"simulation"``, ``"detection"``, ...)."""
    value: float | None
    """the metric; None unless ``status == "ok"``."""
    status: Status
    """``"ok"`` or why no value could be given (the LLM statuses: most common item failure)."""
    n: int
    """items (contexts, or highlighted copies) the value is computed over."""
    ci_low: float | None = None
    """bootstrap 95% interval over the items (None when not computed or undefined)."""
    ci_high: float | None = None
    method: str = ""
    """how predictions were read, e.g. ``"logprob-expectation"`` or ``"parsed-numbers"``."""
    details: dict = field(default_factory=dict)
    """scorer-specific extras: failure counts, secondary metrics."""
    error: str | None = None
    """what went wrong, for humans; None when ``status == "ok"``."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status == "ok" and self.value is None:
            raise ValueError("an ok Score needs a value")
        if self.status != "ok" and self.value is not None:
            raise ValueError(f"a failed Score ({self.status}) must have value None")
        if self.status != "ok" and not self.error:
            raise ValueError(f"a failed Score ({self.status}) must say what went wrong in error")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, scorer: str, status: Status, error: str, n: int = 0, method: str = "",
               details: dict | None = None) -> Score:
        return cls(scorer=scorer, value=None, status=status, n=n, method=method, details=details or {},
                   error=error)


class Scorer(ABC):
    """One abstract method: :meth:`score`. Subclasses register under a name with :func:`register`."""

    name: str = ""

    @abstractmethod
    def score(self, record: LatentRecord, explanation: str) -> Score:
        """Score ``explanation`` of ``record.latent`` on the record's score-split examples."""


SCORERS: dict[str, type[Scorer]] = {}
"""Registry name -> scorer class (filled when :mod:`autointerp.scorers` is imported)."""


def register(name: str):
    """Class decorator adding a :class:`Scorer` subclass to :data:`SCORERS` under ``name``."""
    def wrap(cls: type[Scorer]) -> type[Scorer]:
        if name in SCORERS and SCORERS[name] is not cls:
            raise ValueError(f"scorer name {name!r} already registered by {SCORERS[name].__name__}")
        cls.name = name
        SCORERS[name] = cls
        return cls
    return wrap


def build_scorer(name: str, **kwargs) -> Scorer:
    """Instantiate the scorer registered as ``name`` with ``kwargs``."""
    import autointerp.scorers  # noqa: F401  (registers the built-in scorers)

    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid: {sorted(SCORERS)}")
    return SCORERS[name](**kwargs)


def score_with_controls(scorer: Scorer, record: LatentRecord, explanation: str,
                        control_explanations: dict[str, str]) -> dict[str, Score]:
    """Score ``explanation`` (key ``"explanation"``) and each control text on the same contexts.

    Controls put a number in context: ``{"random_explanation": <another latent's explanation>,
    "baseline": <the no-LLM baseline's text>}``. The same ``record`` goes to the same scorer, and
    every scorer picks its contexts (and any random highlighting) from the record alone, never
    from the explanation, so all scores are over the same items.
    """
    if "explanation" in control_explanations:
        raise ValueError("'explanation' is reserved for the explanation under test")
    out = {"explanation": scorer.score(record, explanation)}
    for key, text in control_explanations.items():
        out[key] = scorer.score(record, text)
    return out


def score_examples(record: LatentRecord) -> list[tuple[Example, int]]:
    """The record's score-split examples with labels: 1 for top/quantile, 0 for random."""
    return [(e, 0 if e.kind == "random" else 1) for e in record.split("score")]


@dataclass
class ItemFailures:
    """Failed items of an LLM scorer, by status."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    """a few error messages, for humans."""

    def add(self, status: Status, error: str) -> None:
        self.counts[status] += 1
        if len(self.examples) < 3:
            self.examples.append(f"{status}: {error}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add_completion(self, c: Completion) -> None:
        self.add(c.status, c.error or "")

    def too_many(self, n_items: int, max_fraction: float) -> bool:
        return n_items == 0 or self.total > max_fraction * n_items

    def as_score(self, scorer: str, n_items: int, method: str = "") -> Score:
        """The failed Score: status the most common item failure."""
        status = self.counts.most_common(1)[0][0] if self.counts else "error"
        return Score.failed(scorer, status, f"{self.total}/{n_items} items failed ({dict(self.counts)}); "
                            f"e.g. {'; '.join(self.examples)}", method=method, details=self.details(n_items))

    def details(self, n_items: int) -> dict:
        return {"n_items": n_items, "n_failed": self.total, "failures": dict(self.counts)}
