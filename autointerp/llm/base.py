"""The interface every language-model client implements.

A client turns chat messages into a :class:`Completion`. Transport problems (rate limits,
timeouts, dropped connections, refusals, unparseable replies) never raise: they come back
as a ``Completion`` whose ``status`` says what happened and whose ``text`` is ``None``, so a
caller can never mistake a failure for an answer. Programming errors (bad arguments) raise
``ValueError``.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Literal, TypedDict

import jsonschema

Role = Literal["system", "user", "assistant"]
Status = Literal["ok", "parse_error", "timeout", "rate_limited", "refused", "error"]
STATUSES: tuple[str, ...] = ("ok", "parse_error", "timeout", "rate_limited", "refused", "error")


class Message(TypedDict):
    """One chat turn, as in the OpenAI chat API: ``{"role": "user", "content": "..."}``."""

    role: Role
    content: str


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its log-probability (natural log, so always <= 0)."""

    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token, its log-probability and the top alternatives at that position."""

    token: str
    """the token that was generated, as text."""
    logprob: float
    """log p(token | prefix) under the model."""
    top: list[TokenLogprob] = field(default_factory=list)
    """the most likely tokens at this position, most likely first (may include ``token``)."""


@dataclass
class Completion:
    """The outcome of one request: an answer (``status == "ok"``) or a described failure."""

    text: str | None
    """the generated text; ``None`` unless ``status == "ok"``."""
    status: Status
    error: str | None = None
    """what went wrong, for humans; ``None`` when ``status == "ok"``."""
    logprobs: list[TokenLogprobs] | None = None
    """per generated token, when log-probabilities were requested and returned."""
    model: str = ""
    cached: bool = False
    """True when served from a :class:`~autointerp.llm.cache.ResponseCache` (no model call)."""
    latency_s: float = 0.0
    """wall-clock time of the call, retries and back-off included."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status == "ok" and self.text is None:
            raise ValueError("an ok Completion needs text")
        if self.status != "ok" and self.text is not None:
            raise ValueError(f"a failed Completion ({self.status}) must have text None")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Completion:
        lps = d.get("logprobs")
        if lps is not None:
            lps = [TokenLogprobs(token=t["token"], logprob=t["logprob"],
                                 top=[TokenLogprob(**a) for a in t.get("top", [])]) for t in lps]
        return cls(**{**d, "logprobs": lps})


def validate_request(messages: list[Message], max_tokens: int, temperature: float, logprobs: int | None,
                     supports_logprobs: bool) -> None:
    """Raise ``ValueError`` for arguments no model could serve (a caller bug, not a transport failure)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or set(m) != {"role", "content"} or not isinstance(m["content"], str):
            raise ValueError(f"bad message {m!r}: expected exactly {{'role': str, 'content': str}}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"bad role {m['role']!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if logprobs is not None:
        if not supports_logprobs:
            raise ValueError("this client does not support logprobs")
        if not isinstance(logprobs, int) or not 0 <= logprobs <= 20:
            raise ValueError(
                f"logprobs (top alternatives per token) must be an int in [0, 20], got {logprobs!r}")


class Deadline:
    """A wall-clock budget for a whole job (``--deadline SECONDS``), shared by every request of it.

    A client with a deadline sends no request once it has passed, and bounds each request's
    timeout and back-off by what is left: the request comes back as a ``timeout`` completion
    (``error`` says the deadline passed), the caller records it, and a rerun redoes it."""

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise ValueError(f"a deadline must be a positive number of seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0

    def failure(self, model: str = "") -> "Completion":
        """The completion of a request the deadline stopped."""
        return Completion(text=None, status="timeout", model=model,
                          error=f"the job's deadline of {self.seconds:g}s passed before this request finished")


class LLMClient(ABC):
    """Chat model client: one abstract method, :meth:`generate`.

    ``generate_many`` defaults to calling ``generate`` in order; clients override it with
    batching (local models) or bounded concurrency (HTTP APIs). Either way the i-th result
    answers the i-th request.

    Answer prefill: where ``supports_prefill`` is true, a conversation that ends with an
    ``assistant`` message is continued, not answered: the completion's text is what follows that
    message's content (the caller joins them). Other clients send such a conversation as is.

    Teacher forcing: where ``supports_forced_logprobs`` is true, :meth:`forced_logprobs` reads a
    whole given answer in one forward pass and returns, at every token of it, the model's
    distribution over what it would have written there. A scorer then asks for its answer format
    by construction instead of hoping the model follows it (OpenAI's "all at once" simulator).
    """

    model: str = ""
    supports_logprobs: bool = False
    supports_prefill: bool = False
    supports_forced_logprobs: bool = False
    """whether :meth:`forced_logprobs` (teacher-forced reading of a given answer) is implemented."""
    supports_schema: bool = False
    """whether :meth:`generate` takes a JSON ``schema`` the answer is constrained to."""
    deadline: Deadline | None = None
    """the job's wall-clock budget (None: none); requests after it come back as ``timeout``."""

    @abstractmethod
    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0,
                 logprobs: int | None = None, schema: dict | None = None) -> Completion:
        """Complete one conversation. ``logprobs=n`` asks for the top-n alternatives per token.
        ``schema`` (only where ``supports_schema``): a JSON schema the answer is constrained to."""

    def generate_many(self, conversations: list[list[Message]], *, max_tokens: int, temperature: float = 0.0,
                      logprobs: int | None = None, schema: dict | None = None) -> list[Completion]:
        extra = {"schema": schema} if schema is not None else {}
        return [self.generate(m, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs, **extra)
                for m in conversations]

    def forced_logprobs(self, conversations: list[list[Message]], *, top_logprobs: int) -> list[Completion]:
        """Teacher-forced log-probabilities of given answers, one forward pass each.

        Each conversation must end with an ``assistant`` message: the answer to read. The i-th
        result is an ok :class:`Completion` whose ``text`` is that answer's content and whose
        ``logprobs`` cover it token by token (their texts spell ``text`` unless a character is split
        between tokens: callers check, and ASCII answers avoid it); at each token
        ``top`` holds the ``top_logprobs`` most likely tokens at that position given everything
        before it, i.e. what the model would have written there instead. Transport failures, and
        a conversation longer than the model's context, come back as failed completions, as from
        :meth:`generate`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no teacher-forced log-probabilities")


def validate_forced(conversations: list[list[Message]], top_logprobs: int) -> None:
    """Raise ``ValueError`` for a teacher-forced request no model could serve."""
    for m in conversations:
        validate_request(m, 1, 0.0, None, False)
        if m[-1]["role"] != "assistant" or not m[-1]["content"]:
            raise ValueError("a teacher-forced conversation must end with a non-empty assistant message "
                             "(the answer to read)")
    if not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20:
        raise ValueError(f"top_logprobs must be an int in [1, 20], got {top_logprobs!r}")


def parse_json_answer(text: str, schema: dict) -> dict | str:
    """A structured answer, parsed strictly: the whole text is one JSON value that ``schema``
    validates; otherwise a message saying why (never a partial value)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the answer is not JSON ({exc.msg} at character {exc.pos})"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"the answer violates its schema: {exc.message}"
    return value
