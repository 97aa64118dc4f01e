"""Language-model clients: one interface (:class:`LLMClient`), an HTTP client for
OpenAI-compatible APIs, a local transformers client, and an on-disk response cache."""

from autointerp.llm.base import (
    STATUSES, Completion, Deadline, LLMClient, Message, Status, TokenLogprob, TokenLogprobs, parse_json_answer,
    validate_request)
from autointerp.llm.cache import ResponseCache, cache_key
from autointerp.llm.local import LocalClient
from autointerp.llm.openai_client import OpenAICompatibleClient, backoff_delay, parse_retry_after

__all__ = [
    "STATUSES", "Completion", "Deadline", "LLMClient", "LocalClient", "Message", "OpenAICompatibleClient",
    "ResponseCache",
    "Status", "TokenLogprob", "TokenLogprobs", "backoff_delay", "cache_key", "parse_json_answer", "parse_retry_after",
    "validate_request",
]
