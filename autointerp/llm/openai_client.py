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

Deadline (``client.deadline``, :class:`~autointerp.llm.base.Deadline`): no request starts after
it; each attempt's timeout and each back-off sleep are cut to what is left; a request it stops
comes back as ``timeout``.

What a server can do beyond chat is probed once per client, on first need
(:meth:`OpenAICompatibleClient.capabilities`), and never assumed:

* **teacher-forced reading** (``forced_logprobs``): the conversation is rendered with the chat
  template of ``tokenizer`` (the served model's, given by the caller: an endpoint does not expose
  its template) and sent to ``/v1/completions`` with ``echo=True``, ``logprobs=k`` and
  ``max_tokens=1``: the server returns, for every prompt token, its log-probability and the top
  ``k`` alternatives at that position (the OpenAI legacy ``logprobs`` object; llama.cpp needs
  all-position logits for it, llama-cpp-python's ``--logits_all true``). The answer's tokens are
  the last prompt tokens before the generated one(s) (``usage.completion_tokens``); their texts
  must spell the answer exactly, else the row fails ``parse_error`` (a token spanning the
  answer's start, or log-probabilities of other tokens than asked). One request per row.
* **structured answers** (``generate(..., schema=S)``): ``response_format`` in the OpenAI form
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (vLLM, llama.cpp's
  server, Ollama), else ``{"type": "json_object", "schema": S}`` (llama-cpp-python). The caller
  still parses the answer strictly (:func:`parse_json_answer`): a server that ignores the
  format cannot slip a malformed answer through.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import openai

from autointerp.llm.base import (Completion, LLMClient, Message, TokenLogprob, TokenLogprobs, parse_json_answer,
                                 validate_forced, validate_request)
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


PROBE_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                "required": ["answer"], "additionalProperties": False}
PROBE_CHAT: list[Message] = [{"role": "user", "content": "Is the sky blue on a clear day? Answer yes or no."}]


@dataclass(frozen=True)
class EndpointCapabilities:
    """What :meth:`OpenAICompatibleClient.capabilities` found the server can do."""

    forced: bool
    """teacher-forced log-probabilities through ``/v1/completions`` (echo + logprobs)."""
    forced_note: str
    schema_format: str | None
    """``"json_schema"`` (OpenAI form), ``"json_object"`` (with ``schema``), or None."""
    schema_note: str


class _Failure(NamedTuple):
    """One failed attempt: the status it would end in, whether to retry, and the server's wait."""

    status: str
    retry: bool
    message: str
    retry_after_s: float | None = None


class OpenAICompatibleClient(LLMClient):
    """Chat completions over HTTP with retries, bounded concurrency, a deadline and an optional cache;
    teacher-forced reading and structured answers where the server has them (module docstring)."""

    supports_logprobs = True

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_retries: int = 5, concurrency: int = 4,
                 cache: ResponseCache | None = None, backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 supports_logprobs: bool = True, tokenizer=None, forced: bool | None = None,
                 structured: bool | None = None):
        """``api_key_env=None`` sends no real key (local servers such as vLLM or llama.cpp).

        ``tokenizer``: the served model's tokenizer (a transformers tokenizer with a chat template,
        or a model spec for :func:`autointerp.models.resolve` to load it from), needed for
        teacher-forced reading. ``forced`` / ``structured``: None probes the server on
        first need; False never uses the feature; True uses it unprobed."""
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, concurrency >= 1 and timeout_s > 0")
        if forced and tokenizer is None:
            raise ValueError("teacher-forced reading through an endpoint needs the served model's tokenizer "
                             "(its chat template renders the prompt)")
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
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            from autointerp.models import resolve

            tokenizer = AutoTokenizer.from_pretrained(resolve(tokenizer)[0])
        self.tokenizer = tokenizer
        self._want = {"forced": forced, "structured": structured}
        self._capabilities: EndpointCapabilities | None = None
        self._probe_lock = threading.Lock()
        # The key lives only inside the SDK client; nothing of ours stores it.
        self._sdk = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self._slots = threading.BoundedSemaphore(concurrency)
        """at most ``concurrency`` requests on the wire, whoever calls (back-off sleeps hold no slot)."""

    def __repr__(self) -> str:
        return (f"OpenAICompatibleClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    # -- what the server can do -------------------------------------------------------------
    def capabilities(self) -> EndpointCapabilities:
        """Probe the server once (thread-safe): teacher-forced log-probabilities and structured
        answers, each with a note saying what was found."""
        with self._probe_lock:
            if self._capabilities is None:
                self._capabilities = EndpointCapabilities(*self._probe_forced(), *self._probe_schema())
                log.info("endpoint %s (%s): forced=%s (%s); schema=%s (%s)", self.base_url, self.model,
                         self._capabilities.forced, self._capabilities.forced_note,
                         self._capabilities.schema_format, self._capabilities.schema_note)
            return self._capabilities

    @property
    def supports_forced_logprobs(self) -> bool:  # type: ignore[override]
        return self._want["forced"] is not False and self.tokenizer is not None and self.capabilities().forced

    @property
    def supports_schema(self) -> bool:  # type: ignore[override]
        return self._want["structured"] is not False and self.capabilities().schema_format is not None

    def _probe_forced(self) -> tuple[bool, str]:
        if self._want["forced"] is False:
            return False, "turned off"
        if self.tokenizer is None:
            return False, "no tokenizer given: the chat template that renders the prompt is unknown"
        if self._want["forced"]:
            return True, "turned on, not probed"
        c = self._forced_one(PROBE_CHAT + [{"role": "assistant", "content": "yes"}], 2, use_cache=False)
        if not c.ok:
            return False, f"probe failed: {c.status}: {c.error}"
        return True, f"echo + logprobs: {len(c.logprobs)} answer token(s) read"

    def _probe_schema(self) -> tuple[str | None, str]:
        if self._want["structured"] is False:
            return None, "turned off"
        notes = []
        for form in ("json_schema", "json_object"):
            if self._want["structured"]:
                return form, "turned on, not probed"
            # one attempt each, no retries: a server that rejects the form answers 400, 422 or (llama-cpp-python) 500
            c = self._chat_attempt(PROBE_CHAT, 24, 0.0, None, PROBE_SCHEMA, form)
            if isinstance(c, Completion) and c.ok and isinstance(parse_json_answer(c.text, PROBE_SCHEMA), dict):
                return form, "; ".join(notes + [f"{form}: the probe's answer {c.text.strip()!r} fits its schema"])
            notes.append(f"{form}: " + (c.message[:120] if isinstance(c, _Failure) else
                                        f"{c.status} {c.error or repr((c.text or '')[:60])}"))
        return None, "; ".join(notes)

    # -- public -----------------------------------------------------------------------------
    def generate(self, messages: list[Message], *, max_tokens: int, temperature: float = 0.0,
                 logprobs: int | None = None, schema: dict | None = None) -> Completion:
        validate_request(messages, max_tokens, temperature, logprobs, self.supports_logprobs)
        form = None
        if schema is not None:
            if not self.supports_schema:
                raise ValueError(f"{self.base_url} takes no JSON schema for answers "
                                 f"({self.capabilities().schema_note})")
            form = self.capabilities().schema_format
        params = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs}
        if schema is not None:
            params["schema"] = schema
        if self.cache is not None:
            hit = self.cache.get(self.model, messages, params)
            if hit is not None:
                return hit
        t0 = time.monotonic()
        completion = self._with_retries(
            lambda: self._chat_attempt(messages, max_tokens, temperature, logprobs, schema, form))
        completion.latency_s = time.monotonic() - t0
        if self.cache is not None and completion.status != "timeout":
            self.cache.put(self.model, messages, params, completion)
        return completion

    def generate_many(self, conversations: list[list[Message]], *, max_tokens: int, temperature: float = 0.0,
                      logprobs: int | None = None, schema: dict | None = None) -> list[Completion]:
        for m in conversations:  # fail fast on a bad request, before any network traffic
            validate_request(m, max_tokens, temperature, logprobs, self.supports_logprobs)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm") as pool:
            return list(pool.map(lambda m: self.generate(m, max_tokens=max_tokens, temperature=temperature,
                                                         logprobs=logprobs, schema=schema), conversations))

    def forced_logprobs(self, conversations: list[list[Message]], *, top_logprobs: int) -> list[Completion]:
        validate_forced(conversations, top_logprobs)
        if not self.supports_forced_logprobs:
            raise NotImplementedError(f"{self.base_url} gives no teacher-forced log-probabilities "
                                      f"({self.capabilities().forced_note})")
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm") as pool:
            return list(pool.map(lambda m: self._forced_one(m, top_logprobs), conversations))

    # -- internals --------------------------------------------------------------------------
    def _forced_one(self, messages: list[Message], top: int, use_cache: bool = True) -> Completion:
        answer = messages[-1]["content"]
        prompt = self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        params = {"forced": True, "top_logprobs": top}
        if use_cache and self.cache is not None:
            hit = self.cache.get(self.model, messages, params)
            if hit is not None:
                return hit
        t0 = time.monotonic()
        completion = self._with_retries(lambda: self._forced_attempt(prompt + answer, answer, top))
        completion.latency_s = time.monotonic() - t0
        if use_cache and self.cache is not None and completion.status != "timeout":
            self.cache.put(self.model, messages, params, completion)
        return completion

    def _with_retries(self, attempt_fn: Callable[[], "Completion | _Failure"]) -> Completion:
        failure: _Failure | None = None
        deadline = self.deadline
        for attempt in range(self.max_retries + 1):
            if failure is not None:
                delay = (failure.retry_after_s if failure.retry_after_s is not None
                         else backoff_delay(attempt - 1, self.backoff_base_s, self.backoff_max_s))
                if deadline is not None and delay >= deadline.remaining():
                    return deadline.failure(self.model)
                log.debug("retry %d/%d of %s in %.2fs after: %s", attempt, self.max_retries, self.model,
                          delay, failure.message)
                time.sleep(delay)
            if deadline is not None and deadline.passed:
                return deadline.failure(self.model)
            outcome = attempt_fn()
            if isinstance(outcome, Completion):
                return outcome
            failure = outcome
            if deadline is not None and deadline.passed:
                return deadline.failure(self.model)
            if not failure.retry:
                break
        n = attempt + 1
        log.warning("%s request failed after %d attempt(s): %s", self.model, n, failure.message)
        return Completion(text=None, status=failure.status, error=f"{failure.message} (after {n} attempt(s))",
                          model=self.model)

    def _timeout(self) -> float:
        """This attempt's timeout: the client's, cut to what is left of the deadline."""
        if self.deadline is None:
            return self.timeout_s
        return max(0.001, min(self.timeout_s, self.deadline.remaining()))

    def _call(self, fn: Callable[[], object]) -> object:
        """One HTTP call through a concurrency slot; every transport failure as a :class:`_Failure`."""
        try:
            with self._slots:
                return fn()
        except openai.APITimeoutError:  # before APIConnectionError: it is a subclass
            return _Failure("timeout", True, f"timed out after {self._timeout():.3g}s")
        except openai.APIConnectionError as exc:
            return _Failure("error", True, f"connection failed: {exc.__cause__ or exc}")
        except openai.APIStatusError as exc:
            code = exc.status_code
            status = "rate_limited" if code == 429 else "error"
            retry = code in RETRYABLE_STATUS or code >= 500
            return _Failure(status, retry, f"HTTP {code}: {exc.message}",
                            parse_retry_after(exc.response.headers.get("retry-after")))
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            return _Failure("parse_error", False, f"response is not a completion: {exc}")

    def _chat_attempt(self, messages, max_tokens, temperature, logprobs, schema=None,
                      form=None) -> Completion | _Failure:
        kwargs: dict = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                        "temperature": temperature}
        if logprobs is not None:
            kwargs.update(logprobs=True, top_logprobs=logprobs)
        if schema is not None:
            kwargs["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
                if form == "json_schema" else {"type": "json_object", "schema": schema})
        response = self._call(lambda: self._sdk.chat.completions.create(**kwargs, timeout=self._timeout()))
        return response if isinstance(response, _Failure) else self._read(response, logprobs)

    def _forced_attempt(self, text: str, answer: str, top: int) -> Completion | _Failure:
        response = self._call(lambda: self._sdk.completions.create(
            model=self.model, prompt=text, max_tokens=1, temperature=0.0, echo=True, logprobs=top,
            timeout=self._timeout()))
        return response if isinstance(response, _Failure) else self._read_forced(response, text, answer, top)

    def _read_forced(self, response, text: str, answer: str, top: int) -> Completion | _Failure:
        """The answer's tokens among an echoed prompt's log-probabilities (module docstring)."""
        choices = getattr(response, "choices", None)
        if not choices:
            return _Failure("parse_error", False, "response has no choices")
        lp = choices[0].logprobs
        if lp is None or not lp.tokens or lp.token_logprobs is None or lp.top_logprobs is None:
            return _Failure("parse_error", False, "the server returned no log-probabilities of the prompt "
                                                  "(no echo with logprobs: llama.cpp needs all-position logits)")
        usage = getattr(response, "usage", None)
        n_gen = getattr(usage, "completion_tokens", None)
        if n_gen is None:  # no usage: the generated text follows the echoed prompt
            generated = (choices[0].text or "")[len(text):]
            n_gen, acc = 0, ""
            while len(acc) < len(generated) and n_gen < len(lp.tokens):
                n_gen += 1
                acc = lp.tokens[-n_gen] + acc
        end = len(lp.tokens) - n_gen
        start, acc = end, ""
        while len(acc) < len(answer) and start > 0:
            start -= 1
            acc = lp.tokens[start] + acc
        if acc != answer:
            return _Failure("parse_error", False,
                            f"the server's last prompt tokens spell {acc[-60:]!r}, not the answer {answer[-60:]!r} "
                            f"(a token spans the answer's start, or log-probabilities of other tokens than asked)")
        out = []
        for j in range(start, end):
            alts, chosen = lp.top_logprobs[j], lp.token_logprobs[j]
            if not alts or chosen is None:
                return _Failure("parse_error", False, f"no log-probabilities at answer token {j - start}")
            ranked = sorted(alts.items(), key=lambda kv: -kv[1])[:top]
            out.append(TokenLogprobs(token=lp.tokens[j], logprob=float(chosen),
                                     top=[TokenLogprob(t, float(v)) for t, v in ranked]))
        return Completion(text=answer, status="ok", logprobs=out, model=self.model)

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
