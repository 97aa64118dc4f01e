"""Yes/no scorers: can an LLM tell, from the explanation, which items show the latent?

* :class:`DetectionScorer` (``"detection"``): one item per score-split context; "does this text
  contain the feature?"; label 1 for top/quantile contexts, 0 for random ones.
* :class:`FuzzingScorer` (``"fuzzing"``): per activating score-split context, two items: the
  context with its truly activating tokens (activation > 0) highlighted (label 1), and a copy
  with as many randomly chosen non-activating tokens highlighted (label 0); "do the highlighted
  tokens match the feature?".

The reply must hold exactly one line ``ANSWER: yes`` or ``ANSWER: no`` (case-insensitive, an
optional final period); anything else fails that item. With ``F`` failed items out of ``N``,
the Score fails (status: the most common item failure) when ``F > max_failed_fraction * N``;
otherwise, over the parsed items,

    value = balanced_accuracy(y, answer == yes)

with a bootstrap 95% interval, and, when every parsed item came with log-probabilities,
``details["auroc"] = AUROC(y, P(yes))`` where, at the generated token that starts the answer
word, ``P(yes) = p_yes / (p_yes + p_no)``, ``p_yes`` (``p_no``) summing the top alternatives
whose stripped, lower-cased text is ``yes`` (``no``).

With a client that reads a given answer (``LLMClient.supports_forced_logprobs``, e.g. the local
client) the default is the teacher-forced method (``method == "forced-logprobs"``): the answer
``ANSWER: yes`` is written for the model and ONE forward pass reads ``P(yes)`` at the answer
word, as above; the item's answer is ``P(yes) > 0.5``. No reply is parsed, so a model that
would not follow the format still gives its judgement; an item fails only when neither word is
among the top alternatives there.

Dataset text is passed through :func:`~autointerp.scorers.base.neutralise` (``<``/``>`` and line
breaks replaced), so it cannot fake a highlight ``<<...>>``, close the ``<text>`` quote, or put
an ``ANSWER:`` line of its own on a line of the prompt.

Where the client constrains answers to a JSON schema (``LLMClient.supports_schema``) and reads no
given answer, the reply must be exactly ``{"answer": "yes"|"no"}`` (``method == "structured-answers"``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from autointerp.examples import LatentRecord
from autointerp.llm.base import Completion, LLMClient, Message, parse_json_answer
from autointerp.scorers.base import (Decoder, ItemFailures, Score, Scorer, neutralise, register,
                                     score_examples)
from autointerp.scorers.metrics import auroc, balanced_accuracy, bootstrap_ci

FORCED_ANSWER = "ANSWER: yes"
ANSWER_RE = re.compile(r"^\s*answer\s*:\s*(yes|no)\s*\.?\s*$", re.IGNORECASE)
_ANSWER_PREFIX_RE = re.compile(r"^\s*answer\s*:", re.IGNORECASE)

DETECTION_SYSTEM = (
    "You evaluate explanations of features of a language model. You are given a feature explanation and "
    "a text quoted between <text> and </text>. Decide whether the text contains the feature described.\n"
    "Reply with exactly one line: ANSWER: yes or ANSWER: no")
DETECTION_USER = ("Feature explanation: {explanation}\n\n<text>{text}</text>\n\n"
                  "Does the text contain this feature?")

FUZZING_SYSTEM = (
    "You evaluate explanations of features of a language model. You are given a feature explanation and "
    "a text quoted between <text> and </text> in which some tokens are highlighted as <<token>>. Decide "
    "whether the highlighted tokens are the ones the explanation describes.\n"
    "Reply with exactly one line: ANSWER: yes or ANSWER: no")
FUZZING_USER = ("Feature explanation: {explanation}\n\n<text>{text}</text>\n\n"
                "Do the highlighted tokens match this feature?")


YES_NO_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                 "required": ["answer"], "additionalProperties": False}
"""the answer where the client takes a schema (``LLMClient.supports_schema``) and reads no given answer."""
_FORMAT_LINE = "Reply with exactly one line: ANSWER: yes or ANSWER: no"
STRUCTURED_FORMAT_LINE = 'Reply with JSON and nothing else: {"answer": "yes"} or {"answer": "no"}'


@dataclass(frozen=True)
class ParsedAnswer:
    """A strictly parsed yes/no reply."""

    yes: bool
    p_yes: float | None
    """P(yes) from the log-probabilities at the answer word; None when unavailable."""


def parse_answer(c: Completion) -> ParsedAnswer | None:
    """The yes/no answer of an ok completion, or None when the reply breaks the format.

    Exactly one line may start with ``ANSWER:`` and it must be ``ANSWER: yes|no`` (optional period).
    """
    lines = c.text.split("\n")
    answer_lines = [i for i, line in enumerate(lines) if _ANSWER_PREFIX_RE.match(line)]
    if len(answer_lines) != 1:
        return None
    i = answer_lines[0]
    m = ANSWER_RE.match(lines[i])
    if m is None:
        return None
    word_start = sum(len(line) + 1 for line in lines[:i]) + m.start(1)
    return ParsedAnswer(yes=m.group(1).lower() == "yes", p_yes=_p_yes(c, word_start))


def structured_answer(c: Completion) -> ParsedAnswer | None:
    """The answer of a schema-constrained reply: the whole text is ``{"answer": "yes"|"no"}``."""
    value = parse_json_answer(c.text, YES_NO_SCHEMA)
    return None if isinstance(value, str) else ParsedAnswer(yes=value["answer"] == "yes", p_yes=None)


def forced_answer(c: Completion) -> ParsedAnswer | None:
    """The judgement read from a teacher-forced ``ANSWER: yes``: yes when ``P(yes) > 0.5``; None
    when the answer word's position has neither word among its alternatives."""
    if c.text != FORCED_ANSWER:
        return None
    p = _p_yes(c, FORCED_ANSWER.index("yes"))
    return None if p is None else ParsedAnswer(yes=p > 0.5, p_yes=p)


def _p_yes(c: Completion, word_start: int) -> float | None:
    """P(yes) at the generated token whose text starts at or just before (leading spaces) ``word_start``.

    Tokens are laid end to end: token ``k`` covers ``text[o_k : o_k + len(token_k)]``. The answer
    token is the one whose span contains ``word_start`` and whose text, stripped, is the answer
    word; if the tokens do not spell the text, or that token also holds other characters
    (``": yes"``), there is no P(yes).
    """
    if not c.logprobs or "".join(t.token for t in c.logprobs) != c.text:
        return None
    offset = 0
    for t in c.logprobs:
        if offset <= word_start < offset + len(t.token):
            if t.token.strip().lower() not in ("yes", "no"):
                return None
            alts = {a.token: a.logprob for a in t.top}
            alts.setdefault(t.token, t.logprob)
            p = {w: sum(math.exp(lp) for tok, lp in alts.items() if tok.strip().lower() == w)
                 for w in ("yes", "no")}
            total = p["yes"] + p["no"]
            return p["yes"] / total if total > 0 else None
        offset += len(t.token)
    return None


class _YesNoScorer(Scorer):
    """Shared machinery: items -> prompts -> strict answers -> balanced accuracy (+ AUROC)."""

    system: str = ""
    user: str = ""

    def __init__(self, client: LLMClient, tokenizer: Decoder, max_failed_fraction: float = 0.2,
                 logprobs: bool | None = None, max_tokens: int = 8, n_boot: int = 1000, seed: int = 0,
                 forced: bool | None = None):
        """``forced``: None reads a teacher-forced answer when the client can, else the model generates."""
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        if logprobs and not client.supports_logprobs:
            raise ValueError(f"logprobs=True but client {type(client).__name__} does not support them")
        if forced and not client.supports_forced_logprobs:
            raise ValueError(f"forced=True but client {type(client).__name__} cannot read a given answer")
        self.client, self.tokenizer = client, tokenizer
        self.max_failed_fraction, self.max_tokens = max_failed_fraction, max_tokens
        self.n_boot, self.seed = n_boot, seed
        self.logprobs = client.supports_logprobs if logprobs is None else logprobs
        self.forced = client.supports_forced_logprobs if forced is None else forced
        self.structured = not self.forced and client.supports_schema
        """ask for a JSON answer the server constrains (generation path only)."""

    def items(self, record: LatentRecord) -> list[tuple[str, int]]:
        """``(quoted text, label)`` per item; depends on the record only (never the explanation)."""
        raise NotImplementedError

    def messages(self, explanation: str, text: str) -> list[Message]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user.format(explanation=explanation, text=text)}]

    def score(self, record: LatentRecord, explanation: str) -> Score:
        items = self.items(record)
        if len({y for _, y in items}) < 2:
            return Score.failed(self.name, "error", f"latent {record.latent}: the score split gives no "
                                f"items of both labels ({len(items)} items)", n=len(items))
        convs = [self.messages(explanation, text) for text, _ in items]
        if self.forced:
            method, read = "forced-logprobs", forced_answer
            replies = self.client.forced_logprobs(
                [m + [{"role": "assistant", "content": FORCED_ANSWER}] for m in convs], top_logprobs=5)
        elif self.structured:
            method, read = "structured-answers", structured_answer
            convs = [[{**m, "content": m["content"].replace(_FORMAT_LINE, STRUCTURED_FORMAT_LINE)} for m in conv]
                     for conv in convs]
            replies = self.client.generate_many(convs, max_tokens=self.max_tokens, temperature=0.0,
                                                schema=YES_NO_SCHEMA)
        else:
            method, read = "parsed-answers", parse_answer
            replies = self.client.generate_many(convs, max_tokens=self.max_tokens, temperature=0.0,
                                                logprobs=5 if self.logprobs else None)
        failures, labels, answers = ItemFailures(), [], []
        for (_, y), c in zip(items, replies):
            parsed = read(c) if c.ok else None
            if not c.ok:
                failures.add_completion(c)
            elif parsed is None:
                failures.add("parse_error", "neither yes nor no among the top alternatives at the answer word"
                             if self.forced else f"not {{'answer': 'yes'|'no'}}: {c.text[:80]!r}" if self.structured
                             else f"no single 'ANSWER: yes|no' line in {c.text[:80]!r}")
            else:
                labels.append(y)
                answers.append(parsed)
        details = failures.details(len(items))
        if failures.too_many(len(items), self.max_failed_fraction):
            return failures.as_score(self.name, len(items), method=method)
        if len(set(labels)) < 2:
            return Score.failed(self.name, "error", "the parsed items hold a single label", n=len(labels),
                                details=details)
        said_yes = [a.yes for a in answers]
        ci = bootstrap_ci(labels, said_yes, statistic=balanced_accuracy, n_boot=self.n_boot, seed=self.seed)
        p_yes = [a.p_yes for a in answers]
        if all(p is not None for p in p_yes):
            details["auroc"] = auroc(labels, p_yes)
            auc_ci = bootstrap_ci(labels, p_yes, statistic=auroc, n_boot=self.n_boot, seed=self.seed)
            details["auroc_ci"] = (auc_ci.low, auc_ci.high)
        return Score(scorer=self.name, value=balanced_accuracy(labels, said_yes), status="ok", n=len(labels),
                     ci_low=ci.low, ci_high=ci.high, method=method, details=details)


@register("detection")
class DetectionScorer(_YesNoScorer):
    """Balanced accuracy of "does this context contain the feature?" (module docstring)."""

    system, user = DETECTION_SYSTEM, DETECTION_USER

    def items(self, record: LatentRecord) -> list[tuple[str, int]]:
        return [(neutralise(self.tokenizer.decode(e.tokens)), y) for e, y in score_examples(record)]


def highlight(pieces: list[str], marked: set[int]) -> str:
    """Token texts joined, each run of consecutive ``marked`` positions wrapped in ``<<``/``>>``."""
    out = []
    for i, piece in enumerate(pieces):
        if i in marked and i - 1 not in marked:
            out.append("<<")
        out.append(neutralise(piece))
        if i in marked and i + 1 not in marked:
            out.append(">>")
    return "".join(out)


@register("fuzzing")
class FuzzingScorer(_YesNoScorer):
    """Balanced accuracy of "do the highlighted tokens match the feature?" (module docstring).

    The decoy copy of context ``c`` highlights ``k`` (the number of truly activating tokens)
    positions drawn without replacement from its non-activating ones, seeded by
    ``(seed, latent, c)``; a context without ``k`` non-activating tokens gives no decoy.
    """

    system, user = FUZZING_SYSTEM, FUZZING_USER

    def items(self, record: LatentRecord) -> list[tuple[str, int]]:
        out = []
        for e, y in score_examples(record):
            if y == 0:
                continue
            active = {i for i, a in enumerate(e.activations) if a > 0}
            if not active:
                continue
            pieces = [self.tokenizer.decode([t]) for t in e.tokens]
            out.append((highlight(pieces, active), 1))
            inactive = [i for i in range(len(e.tokens)) if i not in active]
            if len(inactive) >= len(active):
                rng = random.Random(f"{self.seed}:{record.latent}:{e.context_index}")
                out.append((highlight(pieces, set(rng.sample(inactive, len(active)))), 0))
        return out
