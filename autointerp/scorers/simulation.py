"""Simulation scorer: predict each token's activation from the explanation, correlate with the truth.

For every score-split context (top, quantile and random kinds) the simulator gets ONE prompt.
A model that generates its answer (an endpoint) sees the context's ``N`` tokens, numbered, and
must reply with ``N`` integers in 0..10 separated by spaces (``"0 0 7 10 0"``): its prediction
per token, in order; a client that reads a given answer is teacher-forced instead (below). Then

    value = correlation_score(true activations, predictions)   (Pearson r over all tokens)

with a bootstrap 95% interval resampling whole contexts.

How predictions are read (``Score.method``):

* ``"logprob-expectation"``: the generated tokens are walked in order; every generated token
  whose stripped text is an integer in 0..10 is a *value position*, and the k-th value position
  is the prediction for context token k. At a value position the prediction is

      E[v] = sum_v v * p(v) / sum_v p(v)

  over the position's top alternatives (and the generated token) whose stripped text is an
  integer ``v`` in 0..10. This needs exactly ``N`` value positions and the generated tokens to
  spell the reply; otherwise that item falls back to the parsed numbers.
* ``"parsed-numbers"``: the reply, stripped, must be exactly ``N`` integers in 0..10 separated by
  whitespace; a wrong count or any other text fails the item.
* ``"mixed"``: some items each way (``details["n_logprob_items"]`` says how many used logprobs).
* ``"structured-numbers"``: where the client constrains answers to a JSON schema
  (``LLMClient.supports_schema``, an endpoint that takes ``response_format``) and reads no given
  answer, the reply must be exactly ``{"predictions": [N integers in 0..10]}``.
* ``"forced-logprob-expectation"``: the default with a client that reads a given answer
  (``LLMClient.supports_forced_logprobs``, e.g. the local client): OpenAI's "all at once"
  simulation. The answer is written for the model, one line per token,
  ``<token as a JSON string><TAB>0``, and ONE teacher-forced pass reads, at every value slot,
  the model's distribution over what it would have written there instead of the placeholder:

      E[v] = sum_v v * p(v) / sum_v p(v),    v in 0..9 among the slot's top alternatives

  The scale is 0-9 here because every digit is one token in every tokenizer we know, while
  "10" is two tokens in many (SmolLM2's): a one-token readout of 0-10 would fold p(10) into
  p(1). Pearson's r does not depend on the scale. The placeholder is ``0`` (the usual value
  of a sparse latent), so a slot's context shows the earlier tokens with their prior value
  rather than the model's own guesses; the prompt holds one worked example so that even the
  first slot is read in the answer format. No reply is parsed, so no model can break the
  format; an item fails only when a slot has no digit among its top alternatives, or when
  the client's tokens do not put the slot on a token of its own.

Failed items (transport failures, unparseable replies): when more than
``max_failed_fraction`` of the contexts fail, the Score fails with the most common failure as
its status; otherwise the correlation is over the remaining contexts.
"""

from __future__ import annotations

import json
import math
import re

from autointerp.examples import LatentRecord
from autointerp.llm.base import Completion, LLMClient, Message, parse_json_answer
from autointerp.scorers.base import Decoder, ItemFailures, Score, Scorer, neutralise, register, score_examples
from autointerp.scorers.metrics import bootstrap_ci, correlation_score

MAX_VALUE = 10
_VALUE_RE = re.compile(r"^(10|[0-9])$")

SIMULATION_SYSTEM = (
    "You simulate a feature of a language model. Given an explanation of the feature and a numbered list "
    "of tokens, predict how strongly the feature activates on each token, as an integer from 0 (not at "
    "all) to 10 (maximally). Tokens are shown as JSON strings.\n"
    "Reply with exactly one line: one integer per token, in order, separated by single spaces, "
    "and nothing else.")
SIMULATION_USER = ("Feature explanation: {explanation}\n\nTokens ({n}):\n{tokens}\n\n"
                   "Predictions ({n} integers):")

def predictions_schema(n: int) -> dict:
    """The answer where the client takes a schema and reads no given answer: exactly ``n`` integers
    in 0..MAX_VALUE (as an ``enum``: llama.cpp's schema grammars enforce enums, not ``maximum``)."""
    return {"type": "object", "properties": {"predictions": {
        "type": "array", "items": {"type": "integer", "enum": list(range(MAX_VALUE + 1))},
        "minItems": n, "maxItems": n}}, "required": ["predictions"], "additionalProperties": False}
_FORMAT_LINE = ("Reply with exactly one line: one integer per token, in order, separated by single spaces, "
                "and nothing else.")
STRUCTURED_FORMAT_LINE = 'Reply with JSON and nothing else: {"predictions": [one integer per token, in order]}'

FORCED_MAX_VALUE = 9
FORCED_PLACEHOLDER = "0"
FORCED_SYSTEM = (
    "You simulate a feature of a language model. Given an explanation of the feature and a text quoted "
    "between <text> and </text>, predict how strongly the feature activates on each token of the text, as a "
    "digit from 0 (not at all) to 9 (maximally).\n"
    "Reply with one line per token, in order: the token as a JSON string, a tab, and the digit.\n\n"
    "Example. Feature explanation: the word \"cat\"\n<text>The cat sat on the mat near a cat</text>\n"
    "Reply:\n\"The\"\t0\n\" cat\"\t9\n\" sat\"\t0\n\" on\"\t0\n\" the\"\t0\n\" mat\"\t0\n"
    "\" near\"\t0\n\" a\"\t0\n\" cat\"\t8")
FORCED_USER = "Feature explanation: {explanation}\n\n<text>{text}</text>"


def token_list(pieces: list[str]) -> str:
    """``"k<TAB>json string"`` per token: JSON escapes quotes and line breaks, so no token can fake
    a line of the prompt."""
    return "\n".join(f"{k}\t{json.dumps(p, ensure_ascii=False)}" for k, p in enumerate(pieces))


def parse_numbers(text: str, n: int) -> list[float] | None:
    """Exactly ``n`` whitespace-separated integers in 0..MAX_VALUE, else None."""
    parts = text.split()
    if len(parts) != n or not all(_VALUE_RE.match(p) for p in parts):
        return None
    return [float(p) for p in parts]


def structured_numbers(text: str, n: int) -> list[float] | str:
    """``{"predictions": [n integers in 0..MAX_VALUE]}`` and nothing else, or why not."""
    value = parse_json_answer(text, predictions_schema(n))
    return value if isinstance(value, str) else [float(v) for v in value["predictions"]]


def logprob_expectations(c: Completion, n: int) -> list[float] | None:
    """Expected value per context token from the value positions' top logprobs (module docstring)."""
    if not c.logprobs or "".join(t.token for t in c.logprobs) != c.text:
        return None
    out = []
    for t in c.logprobs:
        if not _VALUE_RE.match(t.token.strip()):
            continue
        alts = {a.token: a.logprob for a in t.top}
        alts.setdefault(t.token, t.logprob)
        weights = [(int(tok.strip()), math.exp(lp)) for tok, lp in alts.items()
                   if _VALUE_RE.match(tok.strip())]
        total = sum(w for _, w in weights)
        out.append(sum(v * w for v, w in weights) / total)
    return out if len(out) == n else None


def forced_answer(pieces: list[str]) -> tuple[str, list[int]]:
    """The answer a teacher-forced simulator reads, and the character offset of each value slot.

    One line per token, ``json.dumps(piece)`` (ASCII-only: quotes, tabs, line breaks and non-ASCII
    characters are escaped, so a token can neither fake a line nor be split between tokens
    mid-character) + TAB + the placeholder.
    """
    lines, slots, offset = [], [], 0
    for piece in pieces:
        head = json.dumps(piece, ensure_ascii=True) + "\t"
        slots.append(offset + len(head))
        line = head + FORCED_PLACEHOLDER + "\n"
        lines.append(line)
        offset += len(line)
    return "".join(lines), slots


def forced_expectations(c: Completion, slots: list[int]) -> list[float] | str:
    """``E[v]`` per value slot of a teacher-forced completion, or why it cannot be read (module docstring)."""
    if not c.logprobs or "".join(t.token for t in c.logprobs) != c.text:
        return "the client's tokens do not spell the answer"
    starts, offset = {}, 0
    for t in c.logprobs:
        starts[offset] = t
        offset += len(t.token)
    out = []
    for k, slot in enumerate(slots):
        t = starts.get(slot)
        if t is None or t.token != FORCED_PLACEHOLDER:
            return f"value slot {k} is not a token of its own"
        digits = {}
        for a in t.top:
            if len(a.token) == 1 and a.token.isdigit():
                digits[int(a.token)] = digits.get(int(a.token), 0.0) + math.exp(a.logprob)
        total = sum(digits.values())
        if total <= 0:
            return f"no digit among the top {len(t.top)} alternatives at token {k}"
        out.append(sum(v * w for v, w in digits.items()) / total)
    return out


def _read_items(examples, replies: list[Completion], read) -> tuple[ItemFailures, list, list]:
    """Per item: a failed completion, a reading that says why it failed (``read(i, c) -> str``), or
    the predictions (``read(i, c) -> list``) beside the true activations."""
    failures, true, predicted = ItemFailures(), [], []
    for i, (e, c) in enumerate(zip(examples, replies)):
        pred = read(i, c) if c.ok else None
        if not c.ok:
            failures.add_completion(c)
        elif isinstance(pred, str):
            failures.add("parse_error", pred)
        else:
            true.append(list(e.activations))
            predicted.append(pred)
    return failures, true, predicted


@register("simulation")
class SimulationScorer(Scorer):
    """Correlation of simulated and true per-token activations (module docstring).

    ``logprobs``: None uses them when the client supports them; ``top_logprobs`` alternatives
    per position are requested (None: 20 on the forced path, else 15; 11 values need up to 11).
    ``forced``: None reads a teacher-forced answer when the client can
    (``supports_forced_logprobs``), otherwise the model generates its answer.
    """

    def __init__(self, client: LLMClient, tokenizer: Decoder, max_failed_fraction: float = 0.2,
                 logprobs: bool | None = None, top_logprobs: int | None = None, n_boot: int = 1000, seed: int = 0,
                 forced: bool | None = None):
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        if logprobs and not client.supports_logprobs:
            raise ValueError(f"logprobs=True but client {type(client).__name__} does not support them")
        if forced and not client.supports_forced_logprobs:
            raise ValueError(f"forced=True but client {type(client).__name__} cannot read a given answer")
        self.client, self.tokenizer = client, tokenizer
        self.max_failed_fraction, self.n_boot, self.seed = max_failed_fraction, n_boot, seed
        self.logprobs = client.supports_logprobs if logprobs is None else logprobs
        self.forced = client.supports_forced_logprobs if forced is None else forced
        self.structured = not self.forced and client.supports_schema
        """ask for a JSON answer the server constrains (generation path only)."""
        self.top_logprobs = top_logprobs if top_logprobs is not None else 20 if self.forced else 15

    def forced_messages(self, explanation: str, pieces: list[str]) -> tuple[list[Message], list[int]]:
        """The teacher-forced conversation (answer included) and its value slots."""
        answer, slots = forced_answer(pieces)
        user = FORCED_USER.format(explanation=explanation, text=neutralise("".join(pieces)))
        return ([{"role": "system", "content": FORCED_SYSTEM}, {"role": "user", "content": user},
                 {"role": "assistant", "content": answer}], slots)

    def messages(self, explanation: str, pieces: list[str]) -> list[Message]:
        user = SIMULATION_USER.format(explanation=explanation, n=len(pieces), tokens=token_list(pieces))
        return [{"role": "system", "content": SIMULATION_SYSTEM}, {"role": "user", "content": user}]

    def score(self, record: LatentRecord, explanation: str) -> Score:
        examples = [e for e, _ in score_examples(record)]
        if not examples:
            return Score.failed(self.name, "error", f"latent {record.latent} has no score-split examples")
        pieces = [[self.tokenizer.decode([t]) for t in e.tokens] for e in examples]
        if self.forced:
            return self._score_forced(examples, pieces, explanation)
        convs = [self.messages(explanation, p) for p in pieces]
        max_tokens = 3 * max(len(e.tokens) for e in examples) + 16  # a value and a space each, with slack
        if self.structured:
            return self._score_structured(examples, convs, max_tokens + 16)
        replies = self.client.generate_many(convs, max_tokens=max_tokens, temperature=0.0,
                                            logprobs=self.top_logprobs if self.logprobs else None)
        failures, true, predicted, n_logprob = ItemFailures(), [], [], 0
        for e, c in zip(examples, replies):
            if not c.ok:
                failures.add_completion(c)
                continue
            pred = logprob_expectations(c, len(e.tokens)) if self.logprobs else None
            if pred is not None:
                n_logprob += 1
            elif (pred := parse_numbers(c.text, len(e.tokens))) is None:
                failures.add("parse_error", f"expected {len(e.tokens)} integers in 0..{MAX_VALUE}, "
                             f"got {c.text[:80]!r}")
                continue
            true.append(list(e.activations))
            predicted.append(pred)
        method = ("logprob-expectation" if predicted and n_logprob == len(predicted)
                  else "parsed-numbers" if n_logprob == 0 else "mixed")
        details = {**failures.details(len(examples)), "n_logprob_items": n_logprob}
        return self._correlate(examples, failures, true, predicted, method, details)

    def _score_structured(self, examples, convs: list[list[Message]], max_tokens: int) -> Score:
        convs = [[{**m, "content": m["content"].replace(_FORMAT_LINE, STRUCTURED_FORMAT_LINE)} for m in conv]
                 for conv in convs]
        replies: list[Completion | None] = [None] * len(convs)
        for n in sorted({len(e.tokens) for e in examples}):  # one schema per length: its count is exact
            idx = [i for i, e in enumerate(examples) if len(e.tokens) == n]
            for i, c in zip(idx, self.client.generate_many([convs[i] for i in idx], max_tokens=max_tokens,
                                                            temperature=0.0, schema=predictions_schema(n))):
                replies[i] = c
        failures, true, predicted = _read_items(examples, replies,
                                                lambda i, c: structured_numbers(c.text, len(examples[i].tokens)))
        return self._correlate(examples, failures, true, predicted, "structured-numbers",
                               failures.details(len(examples)))

    def _score_forced(self, examples, pieces: list[list[str]], explanation: str) -> Score:
        asks = [self.forced_messages(explanation, p) for p in pieces]
        replies = self.client.forced_logprobs([m for m, _ in asks], top_logprobs=self.top_logprobs)
        failures, true, predicted = _read_items(examples, replies, lambda i, c: forced_expectations(c, asks[i][1]))
        details = {**failures.details(len(examples)), "n_logprob_items": len(predicted),
                   "scale": f"0-{FORCED_MAX_VALUE}"}
        return self._correlate(examples, failures, true, predicted, "forced-logprob-expectation", details)

    def _correlate(self, examples, failures: ItemFailures, true, predicted, method: str, details: dict) -> Score:
        if failures.too_many(len(examples), self.max_failed_fraction):
            return failures.as_score(self.name, len(examples), method=method)
        try:
            value = correlation_score(true, predicted)
        except ValueError as err:
            return Score.failed(self.name, "error", str(err), n=len(true), method=method, details=details)
        ci = bootstrap_ci(true, predicted, statistic=correlation_score, n_boot=self.n_boot, seed=self.seed)
        return Score(scorer=self.name, value=value, status="ok", n=len(true), ci_low=ci.low, ci_high=ci.high,
                     method=method, details=details)
