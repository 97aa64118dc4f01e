"""The explainer interface: a latent's examples in, one :class:`Explanation` out.

An explainer sees only the examples of a :class:`~autointerp.examples.LatentRecord` whose
``split == "explain"``; the ``"score"`` examples are kept for judging the explanation, so an
explainer that read them would grade its own homework.

Failures never become text: an :class:`Explanation` has ``text`` only when ``status == "ok"``;
otherwise ``status`` says what went wrong (the statuses of :mod:`autointerp.llm.base`),
``error`` says it for humans and ``raw`` keeps the model's answer when it could not be parsed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass

from autointerp.examples import Example, LatentRecord
from autointerp.llm.base import STATUSES, Status


@dataclass
class Explanation:
    """What an explainer concluded about one latent, or why it could not."""

    text: str | None
    """the explanation; ``None`` unless ``status == "ok"``."""
    status: Status
    explainer: str
    """registry name of the explainer that produced it."""
    model: str
    """the language model asked ("none" for explainers that ask none)."""
    raw: str | None = None
    """the model's full answer, kept when it could not be parsed or was a refusal."""
    error: str | None = None
    """what went wrong, for humans; ``None`` when ``status == "ok"``."""
    prompt_trimmed: bool = False
    """True when examples were dropped to fit the prompt budget."""
    n_examples_used: int = 0
    """examples shown to the model (after trimming)."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status == "ok" and not self.text:
            raise ValueError("an ok Explanation needs non-empty text")
        if self.status != "ok" and self.text is not None:
            raise ValueError(f"a failed Explanation ({self.status}) must have text None")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


class Explainer(ABC):
    """One abstract method: :meth:`explain`. Subclasses register under a name with :func:`register`."""

    name: str = ""
    """set by :func:`register`."""

    @abstractmethod
    def explain(self, record: LatentRecord) -> Explanation:
        """Explain ``record`` from its ``split == "explain"`` examples only."""

    def explain_many(self, records: list[LatentRecord]) -> list[Explanation]:
        """Explain several records; LLM explainers override this to send the prompts together
        (``LLMClient.generate_many``: one batch on a local model, concurrent requests on an endpoint)."""
        return [self.explain(r) for r in records]


def explain_examples(record: LatentRecord) -> list[Example]:
    """The examples an explainer may look at: those of the ``"explain"`` split, in record order."""
    return record.split("explain")


_REGISTRY: dict[str, type[Explainer]] = {}


def register(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator: make ``build_explainer(name, ...)`` construct the class."""

    def deco(cls: type[Explainer]) -> type[Explainer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"explainer name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def explainer_names() -> list[str]:
    return sorted(_REGISTRY)


def build_explainer(name: str, **kwargs) -> Explainer:
    """Construct the explainer registered as ``name`` with ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown explainer {name!r}; valid names: {', '.join(explainer_names())}")
    return _REGISTRY[name](**kwargs)
