"""Scorers on synthetic records with fake LLM clients: oracles score perfectly, chance scores chance."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest

from autointerp.examples import Example, LatentRecord
from autointerp.llm.base import Completion, LLMClient, TokenLogprob, TokenLogprobs
from autointerp.scorers import SCORERS, Score, build_scorer, score_with_controls
from autointerp.scorers.base import neutralise
from autointerp.scorers.detection import DETECTION_SYSTEM, parse_answer
from autointerp.scorers.metrics import auroc, balanced_accuracy, bootstrap_ci, correlation_score
from autointerp.scorers.simulation import (FORCED_SYSTEM, FORCED_USER, forced_answer, forced_expectations,
                                           parse_numbers)

FILLER = [" the", " a", " dog", " ran", " over", " hill", " blue", " sky", " of", " and", " we", " it",
          " red", " car", " tree", " sun", " rain", " book", " door", " milk"]
VOCAB = [" cat", " EXPLAINONLY", "<", ">", "\n", *FILLER]
CAT = 0


class WordTokenizer:
    """Token id -> text piece; decode concatenates (like a BPE tokenizer with leading spaces)."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


TOK = WordTokenizer(VOCAB)


def make_record(n_per_kind: int = 40, length: int = 12, seed: int = 0) -> LatentRecord:
    """Activating contexts contain " cat" (activation > 0 exactly there); random contexts never do.

    Every other example is in the explain split and carries the token " EXPLAINONLY".
    """
    rng = random.Random(seed)
    filler_ids = list(range(VOCAB.index(" the"), len(VOCAB)))
    rec = LatentRecord(latent=3, density=0.1, max_activation=5.0)
    ctx = 0
    for kind, bucket in (("top", rec.top), ("quantile", rec.quantiles), ("random", rec.random)):
        for i in range(n_per_kind):
            split = "explain" if i % 2 == 0 else "score"
            tokens = [rng.choice(filler_ids) for _ in range(length)]
            acts = [0.0] * length
            if kind != "random":
                for p in rng.sample(range(length), rng.randint(1, 3)):
                    tokens[p] = CAT
                    acts[p] = rng.uniform(1.0, 5.0) if kind == "top" else rng.uniform(0.2, 1.5)
            if split == "explain":
                tokens[0] = VOCAB.index(" EXPLAINONLY")
            bucket.append(Example(context_index=ctx, start=0, tokens=tokens, activations=acts,
                                  peak_position=int(np.argmax(acts)), kind=kind, split=split))
            ctx += 1
    return rec


class FakeClient(LLMClient):
    """Answers each user prompt with ``reply(prompt) -> Completion``; records prompts.

    With ``forced``, it also reads given answers: ``forced(messages, top_logprobs) -> Completion``.
    """

    model = "fake"

    def __init__(self, reply, supports_logprobs: bool = False, forced=None):
        self.reply, self.supports_logprobs, self.prompts = reply, supports_logprobs, []
        self.forced, self.supports_forced_logprobs = forced, forced is not None
        self.conversations = []

    def generate(self, messages, *, max_tokens, temperature=0.0, logprobs=None):
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        return self.reply(prompt, logprobs)

    def forced_logprobs(self, conversations, *, top_logprobs):
        self.conversations.extend(conversations)
        return [self.forced(m, top_logprobs) for m in conversations]


def ok(text: str, logprobs=None) -> Completion:
    return Completion(text=text, status="ok", logprobs=logprobs)


# ---------------------------------------------------------------- metrics

def test_metrics():
    assert correlation_score([[0, 1], [2]], [[0, 2], [4]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant"):
        correlation_score([0, 1, 2], [3, 3, 3])
    with pytest.raises(ValueError, match="length"):
        correlation_score([0, 1, 2], [0, 1])
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    with pytest.raises(ValueError, match="single class"):
        auroc([1, 1], [0.1, 0.2])
    assert balanced_accuracy([0, 0, 0, 1], [1, 1, 1, 1]) == 0.5
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = y + rng.normal(0, 1, 200)
    ci = bootstrap_ci(y, s, statistic=auroc, n_boot=200, seed=1)
    assert ci.low < auroc(y, s) < ci.high and ci.n_valid == 200
    assert bootstrap_ci(y, s, statistic=auroc, n_boot=200, seed=1) == ci  # seeded


def test_score_invariants_and_registry():
    with pytest.raises(ValueError, match="value None"):
        Score(scorer="x", value=0.3, status="timeout", n=1, error="late")
    with pytest.raises(ValueError, match="needs a value"):
        Score(scorer="x", value=None, status="ok", n=1)
    assert set(SCORERS) == {"embedding", "detection", "fuzzing", "simulation"}
    with pytest.raises(ValueError, match=r"valid: \['detection', 'embedding', 'fuzzing', 'simulation'\]"):
        build_scorer("nope")


# ---------------------------------------------------------------- simulation

def _truth_by_tokens(rec: LatentRecord) -> dict[tuple, list[float]]:
    return {tuple(TOK.vocab[t] for t in e.tokens): e.activations for e in rec.examples}


def _prompt_tokens(prompt: str) -> tuple:
    return tuple(json.loads(m) for m in re.findall(r"^\d+\t(\".*\")$", prompt, re.MULTILINE))


def _as_ints(acts: list[float], top: float = 5.0) -> list[int]:
    return [round(10 * a / top) for a in acts]


def _digit_logprobs(values: list[int]) -> list[TokenLogprobs]:
    """Tokens "v", " v", ...; each position: p=0.8 on v, 0.2 on v+1 (or v-1 at 10)."""
    out = []
    for k, v in enumerate(values):
        alt = v + 1 if v < 10 else v - 1
        sp = "" if k == 0 else " "
        out.append(TokenLogprobs(token=f"{sp}{v}", logprob=math.log(0.8),
                                 top=[TokenLogprob(f"{sp}{v}", math.log(0.8)),
                                      TokenLogprob(f"{sp}{alt}", math.log(0.2)),
                                      TokenLogprob(" the", math.log(1e-4))]))
    return out


def oracle_simulator(rec: LatentRecord, with_logprobs: bool = False, shuffled: bool = False) -> FakeClient:
    truth = _truth_by_tokens(rec)
    all_acts = list(truth.values())
    rng = random.Random(1)

    def reply(prompt, logprobs):
        acts = truth[_prompt_tokens(prompt)]
        if shuffled:  # the true activations of an independently drawn context of the same length
            acts = rng.choice(all_acts)
        values = _as_ints(acts)
        if with_logprobs and logprobs:
            lps = _digit_logprobs(values)
            return ok("".join(t.token for t in lps), lps)
        return ok(" ".join(map(str, values)))

    return FakeClient(reply, supports_logprobs=with_logprobs)


@pytest.mark.parametrize("with_logprobs", [False, True])
def test_simulation_oracle_and_shuffled(with_logprobs):
    rec = make_record(n_per_kind=100)
    n_score = len(rec.split("score"))
    client = oracle_simulator(rec, with_logprobs)
    s = build_scorer("simulation", client=client, tokenizer=TOK, n_boot=200).score(rec, "the word cat")
    assert s.ok and s.n == n_score == 150
    assert s.method == ("logprob-expectation" if with_logprobs else "parsed-numbers")
    assert s.value > 0.98 and s.ci_low <= s.value <= s.ci_high
    assert not any("EXPLAINONLY" in p for p in client.prompts)  # only score-split contexts
    shuffled = build_scorer("simulation", client=oracle_simulator(rec, with_logprobs, shuffled=True),
                            tokenizer=TOK, n_boot=200).score(rec, "the word cat")
    assert shuffled.ok and abs(shuffled.value) < 0.2


def test_simulation_logprob_expectation_exact():
    lps = _digit_logprobs([0, 10, 3])
    from autointerp.scorers.simulation import logprob_expectations

    c = ok("".join(t.token for t in lps), lps)
    assert logprob_expectations(c, 3) == pytest.approx([0.2, 9.8, 3.2])
    assert logprob_expectations(c, 4) is None
    assert parse_numbers("0 10 3", 3) == [0.0, 10.0, 3.0]
    assert parse_numbers("0 10 3", 4) is None and parse_numbers("0, 1, 2", 3) is None
    assert parse_numbers("0 11 3", 3) is None


@pytest.mark.parametrize("name", ["simulation", "detection", "fuzzing"])
@pytest.mark.parametrize("failure,status", [("timeout", "timeout"), ("garbage", "parse_error")])
def test_failed_completions_give_failed_score(name, failure, status):
    def reply(prompt, logprobs):
        if failure == "timeout":
            return Completion(text=None, status="timeout", error="took too long")
        return ok("I think maybe? ANSWER: perhaps")

    s = build_scorer(name, client=FakeClient(reply), tokenizer=TOK).score(make_record(10), "cats")
    assert s.status == status and s.value is None and s.error
    assert s.details["n_failed"] == s.details["n_items"] > 0


def test_a_few_failures_are_tolerated():
    rec = make_record(40)
    inner = oracle_simulator(rec)
    calls = iter(range(10_000))

    def reply(prompt, logprobs):
        if next(calls) % 10 == 0:
            return ok("1 2")  # wrong count: that item fails
        return inner.reply(prompt, logprobs)

    s = build_scorer("simulation", client=FakeClient(reply), tokenizer=TOK, n_boot=100).score(rec, "cat")
    assert s.ok and s.value > 0.98 and s.details["n_failed"] == 6 and s.n == 60 - 6


# ---------------------------------------------------------------- detection and fuzzing

def _yes_if(cond):
    return lambda prompt, logprobs: ok(f"ANSWER: {'yes' if cond(prompt) else 'no'}")


def _text(prompt: str) -> str:
    return re.search(r"<text>(.*)</text>", prompt, re.DOTALL).group(1)


def test_detection_oracle_random_and_always_yes():
    rec = make_record(60)
    oracle = FakeClient(_yes_if(lambda p: " cat" in _text(p)))
    s = build_scorer("detection", client=oracle, tokenizer=TOK, n_boot=100).score(rec, "the word cat")
    assert s.ok and s.value == 1.0 and s.n == 90 and "auroc" not in s.details
    assert not any("EXPLAINONLY" in p for p in oracle.prompts)
    yes_man = FakeClient(_yes_if(lambda p: True))
    always = build_scorer("detection", client=yes_man, tokenizer=TOK).score(rec, "x")
    assert always.value == 0.5
    coin = random.Random(0)
    rand = build_scorer("detection", client=FakeClient(_yes_if(lambda p: coin.random() < 0.5)), tokenizer=TOK,
                        n_boot=200).score(rec, "x")
    assert abs(rand.value - 0.5) < 0.15 and rand.ci_low < 0.5 < rand.ci_high


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, size=40)
        y[:2] = [0, 1]
        s = rng.integers(0, 5, size=40).astype(float)  # many ties
        assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError):
        auroc([0, 1], [0.1, float("nan")])


def test_vectorised_auroc_bootstrap_equals_the_loop():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=12)
    s = rng.integers(0, 4, size=12).astype(float)
    fast = bootstrap_ci(y, s, statistic=auroc, n_boot=300, seed=2)
    slow = bootstrap_ci(y, s, statistic=lambda a, b: auroc(a, b), n_boot=300, seed=2)  # not in the fast table
    assert fast.n_valid == slow.n_valid < 300  # some resamples draw one class and are skipped
    assert fast.low == pytest.approx(slow.low, abs=1e-12) and fast.high == pytest.approx(slow.high, abs=1e-12)


def test_detection_auroc_from_logprobs():
    def reply(prompt, logprobs):
        p = 0.9 if " cat" in _text(prompt) else 0.3  # P(yes); generated word is the more likely one
        word = "yes" if p > 0.5 else "no"
        toks = [TokenLogprobs("ANSWER", 0.0), TokenLogprobs(":", 0.0),
                TokenLogprobs(f" {word}", math.log(max(p, 1 - p)),
                              [TokenLogprob(" yes", math.log(p)), TokenLogprob(" no", math.log(1 - p))])]
        return ok(f"ANSWER: {word}", toks)

    s = build_scorer("detection", client=FakeClient(reply, supports_logprobs=True), tokenizer=TOK,
                     n_boot=100).score(make_record(20), "cat")
    assert s.value == 1.0 and s.details["auroc"] == 1.0


def test_fuzzing_oracle_and_always_yes():
    rec = make_record(40)
    # yes iff every highlighted span is the cat token
    oracle = FakeClient(_yes_if(lambda p: set(re.findall(r"<<(.*?)>>", _text(p))) <= {" cat", " cat cat"}))
    s = build_scorer("fuzzing", client=oracle, tokenizer=TOK, n_boot=100).score(rec, "the word cat")
    n_activating = sum(e.kind != "random" for e in rec.split("score"))
    assert s.ok and s.value == 1.0 and s.n == 2 * n_activating
    yes_man = FakeClient(_yes_if(lambda p: True))
    always = build_scorer("fuzzing", client=yes_man, tokenizer=TOK).score(rec, "x")
    assert always.value == 0.5


def test_answer_parsing_is_strict():
    assert parse_answer(ok("ANSWER: yes")).yes and not parse_answer(ok("answer: No.")).yes
    assert parse_answer(ok("The text mentions cats.\nANSWER: yes")).yes
    for bad in ("yes", "ANSWER: yes\nANSWER: no", "ANSWER: yes, clearly", "ANSWER: maybe", ""):
        assert parse_answer(ok(bad)) is None, bad


def test_dataset_text_is_neutralised_in_prompts():
    assert neutralise("a<<b>>\nANSWER: yes") == "a‹‹b››⏎ANSWER: yes"
    rec = make_record(4)
    e = rec.split("score")[0]
    e.tokens[1:4] = [VOCAB.index("<"), VOCAB.index(">"), VOCAB.index("\n")]
    client = FakeClient(_yes_if(lambda p: True))
    build_scorer("detection", client=client, tokenizer=TOK).score(rec, "cats")
    first = client.prompts[0]
    assert _text(first).count("<") == 0 and "\n" not in _text(first)
    assert first.startswith("Feature explanation: cats\n\n<text>")
    assert DETECTION_SYSTEM.endswith("Reply with exactly one line: ANSWER: yes or ANSWER: no")


def test_controls_use_the_same_contexts():
    rec = make_record(30)
    client = FakeClient(_yes_if(lambda p: " cat" in _text(p) and "cat" in p.split("\n")[0]))
    scores = score_with_controls(build_scorer("detection", client=client, tokenizer=TOK, n_boot=50), rec,
                                 "the word cat", {"random_explanation": "rivers", "baseline": "token ' cat'"})
    assert set(scores) == {"explanation", "random_explanation", "baseline"}
    assert len({s.n for s in scores.values()}) == 1
    assert scores["explanation"].value == 1.0 and scores["random_explanation"].value == 0.5
    texts = [_text(p) for p in client.prompts]
    n = scores["explanation"].n
    assert texts[:n] == texts[n:2 * n] == texts[2 * n:]
    fuzz = build_scorer("fuzzing", client=FakeClient(_yes_if(lambda p: True)), tokenizer=TOK)
    fz = score_with_controls(fuzz, rec, "cat", {"random_explanation": "rivers"})
    assert fz["explanation"].n == fz["random_explanation"].n


# ---------------------------------------------------------------- embedding (real MiniLM)

CAT_SENTENCES = ["The cat purred on the warm windowsill.", "My kitten chased a ball of yarn.",
                 "Cats love to nap in the sun.", "The tabby cat caught a mouse.",
                 "She fed her cat some tuna.", "The kitten meowed for milk.",
                 "A black cat crossed the street.", "Our cat sleeps on the sofa all day."]
FINANCE_SENTENCES = ["The central bank raised interest rates.", "Stock markets fell sharply on Monday.",
                     "Investors bought government bonds.", "The company reported quarterly earnings.",
                     "Inflation eroded household savings.", "The bank approved the mortgage loan.",
                     "Bond yields climbed after the report.", "The fund manager sold his shares."]


def test_embedding_scorer_cats_vs_finance():
    words = sorted({w for s in CAT_SENTENCES + FINANCE_SENTENCES for w in s.split()} | {"EXPLAINONLY"})
    tok = WordTokenizer([" " + w for w in words])
    ids = {w: i for i, w in enumerate(words)}
    rec = LatentRecord(latent=0, density=0.1, max_activation=1.0)
    labelled = [(s, "top") for s in CAT_SENTENCES] + [(s, "random") for s in FINANCE_SENTENCES]
    for i, (sent, kind) in enumerate(labelled):
        toks = [ids[w] for w in sent.split()]
        acts = [1.0 if kind == "top" else 0.0] * len(toks)
        ex = Example(context_index=i, start=0, tokens=toks, activations=acts, peak_position=0, kind=kind,
                     split="score")
        (rec.top if kind == "top" else rec.random).append(ex)
    # an explain-split example that would hurt the score if it were used
    leak = [ids["cat"], ids["kitten"], ids["EXPLAINONLY"]]
    rec.random.append(Example(context_index=99, start=0, tokens=leak, activations=[0.0] * 3, peak_position=0,
                              kind="random", split="explain"))
    scorer = build_scorer("embedding", tokenizer=tok, n_boot=200)
    good, bad = scorer.score(rec, "cats and kittens"), scorer.score(rec, "volcanic eruptions and lava")
    assert good.ok and good.n == 16 and good.method == "cosine-auroc"
    assert good.value > 0.8 and good.ci_low is not None
    assert bad.ok and bad.value < good.value
    assert scorer.score(rec, "banks, stocks and money").value < 0.5  # describes the random contexts


# ---------------------------------------------------------------- teacher-forced reading

def _forced_tokens(answer: str) -> list[str]:
    """How a BPE tokenizer would cut the forced simulation answer: the JSON string, TAB, value, line break."""
    out = []
    for line in answer.splitlines(keepends=True):
        head, value = line.rstrip("\n").rsplit("\t", 1)
        out += [head, "\t", value, "\n"]
    return out


def forced_oracle(rec: LatentRecord, shuffled: bool = False, no_digits_every: int = 0):
    """Reads the forced simulation answer; at each value slot p=0.7 on round(9 a / max), 0.3 on " the"."""
    truth = _truth_by_tokens(rec)
    all_acts = list(truth.values())
    rng = random.Random(2)
    calls = iter(range(10**6))

    def forced(messages, top):
        answer = messages[-1]["content"]
        pieces = tuple(json.loads(line.rsplit("\t", 1)[0]) for line in answer.splitlines())
        acts = rng.choice(all_acts) if shuffled else truth[pieces]
        values = iter([round(9 * a / 5.0) for a in acts])
        skip = no_digits_every and next(calls) % no_digits_every == 0
        toks = []
        for t in _forced_tokens(answer):
            top_alts = [TokenLogprob(" the", math.log(0.3))]
            if t == "0" and not skip:
                top_alts.insert(0, TokenLogprob(str(next(values)), math.log(0.7)))
            toks.append(TokenLogprobs(t, math.log(0.5), top_alts))
        return ok(answer, toks)

    return FakeClient(lambda p, lp: pytest.fail("the forced path never generates"), forced=forced)


def test_simulation_forced_oracle_shuffled_and_exact_prompt():
    rec = make_record(n_per_kind=100)
    client = forced_oracle(rec)
    s = build_scorer("simulation", client=client, tokenizer=TOK, n_boot=200).score(rec, "the word cat")
    assert s.ok and s.method == "forced-logprob-expectation" and s.n == 150 and s.value > 0.98
    assert s.details["scale"] == "0-9" and s.details["n_logprob_items"] == 150
    shuffled = build_scorer("simulation", client=forced_oracle(rec, shuffled=True), tokenizer=TOK,
                            n_boot=200).score(rec, "the word cat")
    assert shuffled.ok and abs(shuffled.value) < 0.2
    # the exact conversation of one context: system, user with the neutralised text, forced answer
    e = rec.split("score")[0]
    pieces = [TOK.decode([t]) for t in e.tokens]
    first = client.conversations[0]
    assert first == [{"role": "system", "content": FORCED_SYSTEM},
                     {"role": "user", "content": FORCED_USER.format(explanation="the word cat",
                                                                    text=neutralise("".join(pieces)))},
                     {"role": "assistant", "content": "".join(json.dumps(p) + "\t0\n" for p in pieces)}]
    assert FORCED_USER == "Feature explanation: {explanation}\n\n<text>{text}</text>"
    assert FORCED_SYSTEM.startswith("You simulate a feature of a language model.") and "digit from 0" in FORCED_SYSTEM
    assert not any("EXPLAINONLY" in m[1]["content"] for m in client.conversations)


def test_forced_answer_escapes_tokens_and_failures_are_explicit():
    answer, slots = forced_answer([' "x"', "\n", "\tcafé"])
    assert answer == '" \\"x\\""\t0\n"\\n"\t0\n"\\tcaf\\u00e9"\t0\n' and answer.isascii()
    assert [answer[k] for k in slots] == ["0", "0", "0"] and len(answer.splitlines()) == 3
    toks = [TokenLogprobs(t, -0.1, [TokenLogprob("3", -0.5), TokenLogprob("7", -0.5), TokenLogprob("x", -3)])
            for t in _forced_tokens(answer)]
    assert forced_expectations(ok(answer, toks), slots) == pytest.approx([5.0] * 3)
    no_digit = [TokenLogprobs(t.token, t.logprob, [TokenLogprob("x", -0.1)]) for t in toks]
    assert "no digit" in forced_expectations(ok(answer, no_digit), slots)
    merged = [TokenLogprobs("".join(_forced_tokens(answer)[:3]), -0.1), *toks[3:]]
    assert "not a token of its own" in forced_expectations(ok(answer, merged), slots)
    # a few unreadable items are tolerated and counted; too many fail the score
    rec = make_record(40)
    some = build_scorer("simulation", client=forced_oracle(rec, no_digits_every=10), tokenizer=TOK,
                        n_boot=50).score(rec, "cat")
    assert some.ok and some.details["n_failed"] == 6 and some.n == 54
    most = build_scorer("simulation", client=forced_oracle(rec, no_digits_every=1), tokenizer=TOK).score(rec, "c")
    assert most.status == "parse_error" and most.value is None and "no digit" in most.error


def _forced_yes_no(p_yes_of):
    def forced(messages, top):
        p = p_yes_of(_text(messages[1]["content"]))
        assert messages[-1] == {"role": "assistant", "content": "ANSWER: yes"}
        return ok("ANSWER: yes", [TokenLogprobs("AN", -0.1), TokenLogprobs("SWER", -0.1), TokenLogprobs(":", -0.1),
                                   TokenLogprobs(" yes", math.log(p), [TokenLogprob(" yes", math.log(p)),
                                                                       TokenLogprob(" no", math.log(1 - p))])])
    return forced


@pytest.mark.parametrize("name", ["detection", "fuzzing"])
def test_yes_no_forced_reading(name):
    rec = make_record(40)
    is_right = ((lambda t: " cat" in t) if name == "detection"
                else (lambda t: set(re.findall(r"<<(.*?)>>", t)) <= {" cat", " cat cat"}))
    never = lambda p, lp: pytest.fail("the forced path never generates")  # noqa: E731
    sharp = build_scorer(name, client=FakeClient(never, forced=_forced_yes_no(
        lambda t: 0.9 if is_right(t) else 0.2)), tokenizer=TOK, n_boot=50).score(rec, "cat")
    assert sharp.ok and sharp.method == "forced-logprobs" and sharp.value == 1.0 and sharp.details["auroc"] == 1.0
    # a yes-biased judge that still ranks right: balanced accuracy 0.5, AUROC 1
    biased = build_scorer(name, client=FakeClient(never, forced=_forced_yes_no(
        lambda t: 0.8 if is_right(t) else 0.6)), tokenizer=TOK, n_boot=50).score(rec, "cat")
    assert biased.value == 0.5 and biased.details["auroc"] == 1.0
    blind = build_scorer(name, client=FakeClient(never, forced=_forced_yes_no(lambda t: 0.7)), tokenizer=TOK,
                         n_boot=50).score(rec, "cat")
    assert blind.details["auroc"] == 0.5
    generating = build_scorer(name, client=FakeClient(_yes_if(lambda p: True), forced=_forced_yes_no(
        lambda t: 0.7)), tokenizer=TOK, forced=False).score(rec, "cat")
    assert generating.method == "parsed-answers"
    with pytest.raises(ValueError, match="forced=True"):
        build_scorer(name, client=FakeClient(never), tokenizer=TOK, forced=True)
