"""Simulation scorer: predict each token's activation from the explanation, correlate with the truth.

For every score-split context (top, quantile and random kinds) the simulator gets ONE prompt
listing the context's ``N`` tokens, numbered, and must reply with ``N`` integers in 0..10
separated by spaces (``"0 0 7 10 0"``): its prediction per token, in order. Then

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

Failed items (transport failures, unparseable replies): when more than
``max_failed_fraction`` of the contexts fail, the Score fails with the most common failure as
its status; otherwise the correlation is over the remaining contexts.
"""

from __future__ import annotations

import json
import math
import re

from autointerp.examples import LatentRecord
from autointerp.llm.base import Completion, LLMClient, Message
from autointerp.scorers.base import Decoder, ItemFailures, Score, Scorer, register, score_examples
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


@register("simulation")
class SimulationScorer(Scorer):
    """Correlation of simulated and true per-token activations (module docstring).

    ``logprobs``: None uses them when the client supports them; ``top_logprobs`` alternatives
    per position are requested (11 values need up to 11).
    """

    def __init__(self, client: LLMClient, tokenizer: Decoder, max_failed_fraction: float = 0.2,
                 logprobs: bool | None = None, top_logprobs: int = 15, n_boot: int = 1000, seed: int = 0):
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        if logprobs and not client.supports_logprobs:
            raise ValueError(f"logprobs=True but client {type(client).__name__} does not support them")
        self.client, self.tokenizer = client, tokenizer
        self.max_failed_fraction, self.top_logprobs, self.n_boot, self.seed = (
            max_failed_fraction, top_logprobs, n_boot, seed)
        self.logprobs = client.supports_logprobs if logprobs is None else logprobs

    def messages(self, explanation: str, pieces: list[str]) -> list[Message]:
        user = SIMULATION_USER.format(explanation=explanation, n=len(pieces), tokens=token_list(pieces))
        return [{"role": "system", "content": SIMULATION_SYSTEM}, {"role": "user", "content": user}]

    def score(self, record: LatentRecord, explanation: str) -> Score:
        examples = [e for e, _ in score_examples(record)]
        if not examples:
            return Score.failed(self.name, "error", f"latent {record.latent} has no score-split examples")
        convs = [self.messages(explanation, [self.tokenizer.decode([t]) for t in e.tokens]) for e in examples]
        max_tokens = 3 * max(len(e.tokens) for e in examples) + 16  # a value and a space each, with slack
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
        if failures.too_many(len(examples), self.max_failed_fraction):
            return failures.as_score(self.name, len(examples), method=method)
        try:
            value = correlation_score(true, predicted)
        except ValueError as err:
            return Score.failed(self.name, "error", str(err), n=len(true), method=method, details=details)
        ci = bootstrap_ci(true, predicted, statistic=correlation_score, n_boot=self.n_boot, seed=self.seed)
        return Score(scorer=self.name, value=value, status="ok", n=len(true), ci_low=ci.low, ci_high=ci.high,
                     method=method, details=details)
