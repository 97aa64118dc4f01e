"""Explainers that ask a language model: ``token-activation``, ``highlight`` and ``contrastive``.

All three share :class:`LLMExplainer.explain`:

1. take the record's ``split == "explain"`` examples: the *activating* ones (``top`` then
   ``quantile``, peak > 0) up to ``max_examples`` and, for ``contrastive``, the ``random`` ones
   (the latent is 0 throughout) up to ``max_random``;
2. render the prompt (:mod:`autointerp.explainers.prompts`); while its token count
   (system + user content, counted with ``tokenizer``) exceeds ``max_prompt_tokens``, drop the
   last example and mark the explanation ``prompt_trimmed``;
3. ask the client once; a transport failure (``timeout``, ``rate_limited``, ``refused``, ...)
   is passed through as the explanation's status, an answer is parsed by
   :func:`~autointerp.explainers.prompts.parse_explanation`.
"""

from __future__ import annotations

from autointerp.examples import Example, LatentRecord
from autointerp.explainers import prompts
from autointerp.explainers.base import Explainer, Explanation, explain_examples, register
from autointerp.llm.base import LLMClient


class LLMExplainer(Explainer):
    """Shared machinery; a subclass says which examples it shows (:meth:`select`) and how (:meth:`render`)."""

    def __init__(self, client: LLMClient, tokenizer: prompts.Tokenizer, *, max_examples: int = 20,
                 max_tokens: int = 200, max_prompt_tokens: int = 4000, temperature: float = 0.0):
        if max_examples < 1 or max_tokens < 1 or max_prompt_tokens < 1:
            raise ValueError("max_examples, max_tokens and max_prompt_tokens must be positive")
        self.client = client
        self.tokenizer = tokenizer
        self.max_examples = max_examples
        self.max_tokens = max_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.temperature = temperature

    # -- what a subclass provides ------------------------------------------------------------
    def select(self, record: LatentRecord) -> list[list[Example]]:
        """Groups of examples to show, each in display order (trimming drops from the ends)."""
        return [activating_examples(record)[:self.max_examples]]

    def render(self, record: LatentRecord, groups: list[list[Example]]) -> list[dict]:
        raise NotImplementedError

    # -- the shared part ---------------------------------------------------------------------
    def count_tokens(self, messages: list[dict]) -> int:
        return sum(len(self.tokenizer.encode(m["content"], add_special_tokens=False)) for m in messages)

    def messages(self, record: LatentRecord) -> tuple[list[dict], list[list[Example]], bool]:
        """The prompt that fits ``max_prompt_tokens``, the examples it shows and whether any were dropped.

        Raises ``ValueError`` when no activating example fits.
        """
        groups = [list(g) for g in self.select(record)]
        trimmed = False
        while True:
            if not groups[0]:
                raise ValueError("no activating example fits in max_prompt_tokens="
                                 f"{self.max_prompt_tokens}" if trimmed else
                                 "the record has no activating examples in the explain split")
            msgs = self.render(record, groups)
            if self.count_tokens(msgs) <= self.max_prompt_tokens:
                return msgs, groups, trimmed
            # drop from the end of the longest group (ties: the last group, i.e. non-activating first)
            longest = max(range(len(groups)), key=lambda i: (len(groups[i]), i))
            groups[longest].pop()
            trimmed = True

    def explain(self, record: LatentRecord) -> Explanation:
        return self.explain_many([record])[0]

    def explain_many(self, records: list[LatentRecord]) -> list[Explanation]:
        results: list[Explanation | None] = [None] * len(records)
        asks = []  # (index, messages, common fields) of the records whose prompt could be built
        for i, record in enumerate(records):
            try:
                msgs, groups, trimmed = self.messages(record)
            except ValueError as exc:
                results[i] = Explanation(None, "error", self.name, self.client.model, error=str(exc))
                continue
            asks.append((i, msgs, {"explainer": self.name, "prompt_trimmed": trimmed,
                                   "n_examples_used": sum(map(len, groups))}))
        structured = bool(asks) and self.client.supports_schema
        if structured:  # the server constrains the answer to {"explanation": "..."}; parsed just as strictly
            completions = self.client.generate_many([prompts.structured_messages(m) for _, m, _ in asks],
                                                    max_tokens=self.max_tokens, temperature=self.temperature,
                                                    schema=prompts.EXPLANATION_SCHEMA)
            prefill = ""
        else:
            # a client that continues a started answer gets the marker as the start of its answer:
            # small local models ignore the answer format otherwise (the parse stays just as strict)
            prefill = prompts.MARKER if self.client.supports_prefill else ""
            tail = [{"role": "assistant", "content": prefill}] if prefill else []
            completions = self.client.generate_many([m + tail for _, m, _ in asks], max_tokens=self.max_tokens,
                                                    temperature=self.temperature) if asks else []
        for (i, _, common), completion in zip(asks, completions):
            results[i] = self._finish(completion, {**common, "model": completion.model or self.client.model},
                                      prefill, structured)
        return results

    @staticmethod
    def _finish(completion, common: dict, prefill: str = "", structured: bool = False) -> Explanation:
        """A completion -> an Explanation: transport failures pass through, answers (the prefill
        joined with the completion) are parsed strictly."""
        if not completion.ok:
            return Explanation(None, completion.status, error=completion.error, **common)
        answer = prefill + completion.text
        parsed = prompts.parse_structured_explanation(answer) if structured else prompts.parse_explanation(answer)
        if parsed.status != "ok":
            return Explanation(None, parsed.status, raw=answer, error=parsed.error, **common)
        return Explanation(parsed.text, "ok", raw=answer, **common)


def activating_examples(record: LatentRecord) -> list[Example]:
    """Explain-split ``top`` then ``quantile`` examples whose peak is > 0."""
    return [e for e in explain_examples(record) if e.kind in ("top", "quantile") and max(e.activations) > 0]


def scale_max(record: LatentRecord, examples: list[Example]) -> float:
    """The activation that maps to 10: the latent's max, else (no max recorded) the examples' max."""
    if record.max_activation > 0:
        return record.max_activation
    return max((max(e.activations) for e in examples), default=0.0)


@register("token-activation")
class TokenActivationExplainer(LLMExplainer):
    """Examples with each firing token's activation, scaled 0-10: ``The cat(7) sat``."""

    def render(self, record: LatentRecord, groups: list[list[Example]]) -> list[dict]:
        (examples,) = groups
        top = scale_max(record, examples)
        lines = [prompts.render_token_activation(e, self.tokenizer, top) for e in examples]
        return prompts.build_messages(prompts.TOKEN_ACTIVATION_NOTE, prompts.example_block(lines))


@register("highlight")
class HighlightExplainer(LLMExplainer):
    """Examples with the firing tokens marked: ``The <<cat>> sat``."""

    def render(self, record: LatentRecord, groups: list[list[Example]]) -> list[dict]:
        (examples,) = groups
        lines = [prompts.render_highlight(e, self.tokenizer) for e in examples]
        return prompts.build_messages(prompts.HIGHLIGHT_NOTE, prompts.example_block(lines))


@register("contrastive")
class ContrastiveExplainer(LLMExplainer):
    """Highlighted activating examples versus ``random`` (non-activating) examples, both explain split."""

    def __init__(self, client: LLMClient, tokenizer: prompts.Tokenizer, *, max_random: int = 10, **kwargs):
        super().__init__(client, tokenizer, **kwargs)
        if max_random < 0:
            raise ValueError(f"max_random must be >= 0, got {max_random}")
        self.max_random = max_random

    def select(self, record: LatentRecord) -> list[list[Example]]:
        silent = [e for e in explain_examples(record) if e.kind == "random"]
        return [activating_examples(record)[:self.max_examples], silent[:self.max_random]]

    def render(self, record: LatentRecord, groups: list[list[Example]]) -> list[dict]:
        activating, silent = groups
        return prompts.build_messages(prompts.CONTRASTIVE_NOTE, prompts.contrastive_examples(
            [prompts.render_highlight(e, self.tokenizer) for e in activating],
            [prompts.render_plain(e, self.tokenizer) for e in silent]))
