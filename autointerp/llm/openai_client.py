"""A client for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...).

Retries are ours, not the SDK's (it is built with ``max_retries=0``) so that every outcome
maps onto one :class:`~autointerp.llm.base.Completion` status:

* 429, 408, 409, 5xx, timeouts and dropped connections are retried, up to ``max_retries``
  times, after ``Retry-After`` seconds when the server sends it, else after a "full jitter"
  back-off: ``delay = uniform(0, min(backoff_max_s, backoff_base_s * 2**attempt))``;
* when retries run out the status is ``rate_limited`` (last failure a 429), ``timeout``
  (last failure a timeout) or ``error``;
* other 4xx errors are not retried (``error``); a body that is not a chat completion is
  ``parse_error``; ``finish_reason == "content_filter"`` or a refusal message is ``refused``.

The API key is read from the environment variable named by ``api_key_env`` and handed only
to the SDK (which sends it as the ``Authorization`` header). It is never logged, never part
of ``repr``, errors or the cache key.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import openai

from autointerp.llm.base import Completion, LLMClient, Message, TokenLogprob, TokenLogprobs, validate_request
from autointerp.llm.cache import ResponseCache

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_RETRY_AFTER_S = 120.0
"""a ``Retry-After`` longer than this is clamped, so one bad header cannot hang a run."""


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential back-off: ``uniform(0, min(max_s, base_s * 2**attempt))``."""
    return (rng or random).uniform(0.0, min(max_s, base_s * 2.0 ** attempt))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form); None if absent or unparseable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form: fall back to our own back-off
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _Failure(NamedTuple):
    """One failed attempt: the status it would end in, whether to retry, and the server's wait."""

    status: str
    retry: bool
    message: str
    retry_after_s: float | None = None


class OpenAICompatibleClient(LLMClient):
    """Chat completions over HTTP with retries, bounded concurrency and an optional cache."""

    supports_logprobs = True

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_retries: int = 5, concurrency: int = 4,
                 cache: ResponseCache | None = None, backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 supports_logprobs: bool = True):
        """``api_key_env=None`` sends no real key (local servers such as vLLM or llama.cpp)."""
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, concurrency >= 1 and timeout_s > 0")
        if api_key_env is None:
            api_key = "no-key"
        else:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(f"environment variable {api_key_env} is not set: it must hold the API key")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.cache = cache
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.supports_logprobs = supports_logprobs
        # The key lives only inside the SDK client; nothing of ours stores it.
        self._sdk = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self._slots = threading.BoundedSemaphore(concurrency)
        """at most ``concurrency`` requests on the wire, whoever calls (back-off sleeps hold no slot)."""

    def __repr__(self) -> str:
        return (f"OpenAICompatibleClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    # -- public -----------------------------------------------------------------------------
    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0,
                 logprobs: int | None = None) -> Completion:
        validate_request(messages, max_tokens, temperature, logprobs, self.supports_logprobs)
        params = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs}
        if self.cache is not None:
            hit = self.cache.get(self.model, messages, params)
            if hit is not None:
                return hit
        t0 = time.monotonic()
        completion = self._with_retries(messages, max_tokens, temperature, logprobs)
        completion.latency_s = time.monotonic() - t0
        if self.cache is not None:
            self.cache.put(self.model, messages, params, completion)
        return completion

    def generate_many(self, conversations: list[list[Message]], *, max_tokens: int, temperature: float = 0.0,
                      logprobs: int | None = None) -> list[Completion]:
        for m in conversations:  # fail fast on a bad request, before any network traffic
            validate_request(m, max_tokens, temperature, logprobs, self.supports_logprobs)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm") as pool:
            return list(pool.map(lambda m: self.generate(m, max_tokens=max_tokens, temperature=temperature,
                                                         logprobs=logprobs), conversations))

    # -- internals --------------------------------------------------------------------------
    def _with_retries(self, messages, max_tokens, temperature, logprobs) -> Completion:
        failure: _Failure | None = None
        for attempt in range(self.max_retries + 1):
            if failure is not None:
                delay = (failure.retry_after_s if failure.retry_after_s is not None
                         else backoff_delay(attempt - 1, self.backoff_base_s, self.backoff_max_s))
                log.debug("retry %d/%d of %s in %.2fs after: %s", attempt, self.max_retries, self.model,
                          delay, failure.message)
                time.sleep(delay)
            outcome = self._attempt(messages, max_tokens, temperature, logprobs)
            if isinstance(outcome, Completion):
                return outcome
            failure = outcome
            if not failure.retry:
                break
        n = attempt + 1
        log.warning("%s request failed after %d attempt(s): %s", self.model, n, failure.message)
        return Completion(text=None, status=failure.status, error=f"{failure.message} (after {n} attempt(s))",
                          model=self.model)

    def _attempt(self, messages, max_tokens, temperature, logprobs) -> Completion | _Failure:
        kwargs: dict = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                        "temperature": temperature}
        if logprobs is not None:
            kwargs.update(logprobs=True, top_logprobs=logprobs)
        try:
            with self._slots:
                response = self._sdk.chat.completions.create(**kwargs)
        except openai.APITimeoutError:  # before APIConnectionError: it is a subclass
            return _Failure("timeout", True, f"timed out after {self.timeout_s}s")
        except openai.APIConnectionError as exc:
            return _Failure("error", True, f"connection failed: {exc.__cause__ or exc}")
        except openai.APIStatusError as exc:
            code = exc.status_code
            status = "rate_limited" if code == 429 else "error"
            retry = code in RETRYABLE_STATUS or code >= 500
            return _Failure(status, retry, f"HTTP {code}: {exc.message}",
                            parse_retry_after(exc.response.headers.get("retry-after")))
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            return _Failure("parse_error", False, f"response is not a chat completion: {exc}")
        return self._read(response, logprobs)

    def _read(self, response, logprobs: int | None) -> Completion | _Failure:
        choices = getattr(response, "choices", None)
        if not choices:
            return _Failure("parse_error", False, "response has no choices")
        choice = choices[0]
        message = choice.message
        if choice.finish_reason == "content_filter" or getattr(message, "refusal", None):
            return _Failure("refused", False, f"model refused (finish_reason={choice.finish_reason!r}, "
                                              f"refusal={getattr(message, 'refusal', None)!r})")
        if message is None or not isinstance(message.content, str):
            return _Failure("parse_error", False, "response message has no text content")
        token_lps = None
        if logprobs is not None and choice.logprobs is not None and choice.logprobs.content is not None:
            token_lps = [TokenLogprobs(token=t.token, logprob=t.logprob,
                                       top=[TokenLogprob(a.token, a.logprob) for a in (t.top_logprobs or [])])
                         for t in choice.logprobs.content]
        return Completion(text=message.content, status="ok", logprobs=token_lps, model=self.model)
