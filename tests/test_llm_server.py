"""Every LLM explainer and scorer end to end through a real llama.cpp server (llama-cpp-python's
``llama_cpp.server``) serving the embedded SmolLM2 GGUF, and the same scorers on the local client
(the same GGUF, dequantised to float32 and run by transformers) for comparison.

Run by ``make test-servers`` (marked ``server``). The server runs the quantised file with llama.cpp's
own kernels (Q4_1 weights, activations quantised to 8 bits inside its matrix products), the local
client the dequantised weights in float32: the two read the same answer with log-probabilities that
differ by a few hundredths of a nat on average (measured: mean 0.028, max 0.22 over a 41-token
simulation answer), so the tolerances below are set from that, not from float rounding:

* per answer token, the log-probability of the given token: mean |difference| <= 0.1 nat, max <= 0.6;
* per simulation slot, the expected value on the 0-9 scale: |difference| <= 0.75;
* per detection / fuzzing item, P(yes): |difference| <= 0.15;
* the score itself (simulation r, balanced accuracy over these few items): equal within 0.35 for r
  and equal judgements on at least all but one item.
"""

from __future__ import annotations

import numpy as np
import pytest
from llama_server import ALIAS

from autointerp.examples import Example, LatentRecord
from autointerp.explainers import build_explainer, explainer_names
from autointerp.llm import LocalClient, OpenAICompatibleClient
from autointerp.llm.base import LLMClient

pytestmark = [pytest.mark.server, pytest.mark.real_model]

CAT_TEXTS = ["The cat sat on the warm mat all day.", "My cat chased a small mouse in the garden.",
             "A black cat slept under the old car.", "Her cat purred loudly on the sofa tonight."]
OTHER_TEXTS = ["The train left the station at noon.", "We bought fresh bread at the market.",
               "The river rose after three days of rain.", "He painted the fence a bright blue."]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from autointerp.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m")[0])


@pytest.fixture(scope="module")
def record(tok):
    """Latent "the word cat": 4.0 on every " cat" token; two contexts of each kind per split."""
    cat = tok(" cat", add_special_tokens=False)["input_ids"]
    assert len(cat) == 1
    rec = LatentRecord(latent=0, density=0.01, max_activation=4.0)
    ctx = 0
    for kind, texts, bucket in (("top", CAT_TEXTS, rec.top), ("random", OTHER_TEXTS, rec.random)):
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            acts = [4.0 if t == cat[0] else 0.0 for t in ids]
            bucket.append(Example(context_index=ctx, start=0, tokens=ids, activations=acts,
                                  peak_position=int(np.argmax(acts)), kind=kind,
                                  split="explain" if i % 2 == 0 else "score"))
            ctx += 1
    return rec


@pytest.fixture(scope="module")
def endpoint(llama_server, tok):
    return OpenAICompatibleClient(llama_server, ALIAS, api_key_env=None, tokenizer=tok, timeout_s=300,
                                  max_retries=1, concurrency=1)


@pytest.fixture(scope="module")
def local():
    return LocalClient("smollm2-135m", batch_size=4)


class Recording(LLMClient):
    """Passes every call to ``inner`` and keeps the completions, in order."""

    def __init__(self, inner: LLMClient):
        self.inner, self.model, self.seen = inner, inner.model, []
        self.supports_logprobs = inner.supports_logprobs
        self.supports_prefill = inner.supports_prefill
        self.supports_forced_logprobs = inner.supports_forced_logprobs
        self.supports_schema = inner.supports_schema

    def generate(self, messages, **kw):
        return self.generate_many([messages], **kw)[0]

    def generate_many(self, conversations, **kw):
        out = self.inner.generate_many(conversations, **kw)
        self.seen += out
        return out

    def forced_logprobs(self, conversations, *, top_logprobs):
        out = self.inner.forced_logprobs(conversations, top_logprobs=top_logprobs)
        self.seen += out
        return out


def test_the_probe_finds_what_llama_cpp_python_serves(endpoint):
    caps = endpoint.capabilities()
    assert caps.forced, caps.forced_note
    # llama-cpp-python takes {"type": "json_object", "schema": ...}, not OpenAI's json_schema form
    assert caps.schema_format == "json_object", caps.schema_note
    assert "json_schema" in caps.schema_note  # the OpenAI form was tried first and refused
    assert endpoint.supports_forced_logprobs and endpoint.supports_schema


@pytest.mark.parametrize("scorer", ["simulation", "detection", "fuzzing"])
def test_each_scorer_through_the_server_agrees_with_the_local_client(scorer, endpoint, local, record, tok):
    from autointerp.scorers import build_scorer
    from autointerp.scorers.detection import forced_answer
    from autointerp.scorers.simulation import forced_expectations

    got = {}
    for name, client in (("server", Recording(endpoint)), ("local", Recording(local))):
        s = build_scorer(scorer, client=client, tokenizer=tok)
        assert s.forced
        got[name] = (s.score(record, "the word cat"), client.seen)
    (srv, srv_seen), (loc, loc_seen) = got["server"], got["local"]
    assert srv.ok and loc.ok, (srv.error, loc.error)
    assert srv.method == loc.method and srv.method.startswith("forced")
    assert srv.n == loc.n and len(srv_seen) == len(loc_seen) > 0
    for a, b in zip(srv_seen, loc_seen):
        assert a.ok and b.ok
        assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs]
        diff = np.abs([x.logprob - y.logprob for x, y in zip(a.logprobs, b.logprobs)])
        assert diff.mean() <= 0.1 and diff.max() <= 0.6, (diff.mean(), diff.max())
    if scorer == "simulation":
        from autointerp.scorers.simulation import forced_answer as sim_answer

        for a, b in zip(srv_seen, loc_seen):
            _, slots = sim_answer([p for p in _pieces_of(a.text)])
            ea, eb = forced_expectations(a, slots), forced_expectations(b, slots)
            assert np.abs(np.subtract(ea, eb)).max() <= 0.75
        assert abs(srv.value - loc.value) <= 0.35, (srv.value, loc.value)
    else:
        pa = [forced_answer(c).p_yes for c in srv_seen]
        pb = [forced_answer(c).p_yes for c in loc_seen]
        assert np.abs(np.subtract(pa, pb)).max() <= 0.15, (pa, pb)
        assert sum((x > 0.5) != (y > 0.5) for x, y in zip(pa, pb)) <= 1


def _pieces_of(answer: str) -> list[str]:
    """The token pieces a forced simulation answer was written from (one JSON string per line)."""
    import json

    return [json.loads(line.rsplit("\t", 1)[0]) for line in answer.splitlines()]


@pytest.mark.parametrize("name", [n for n in explainer_names() if n != "token-enrichment"])
def test_each_llm_explainer_through_the_server_gives_a_strictly_parsed_answer(name, endpoint, record, tok):
    client = Recording(endpoint)
    explainer = build_explainer(name, client=client, tokenizer=tok)
    result = explainer.explain(record)
    assert len(client.seen) == 1 and client.seen[0].ok, client.seen[0].error
    # the server constrained the answer to {"explanation": ...}: it parses as that JSON, and the
    # explanation is the parsed text or a recorded parse/refusal status with the raw answer kept
    import json

    raw = json.loads(client.seen[0].text)
    assert set(raw) == {"explanation"}
    if result.ok:
        assert result.text == raw["explanation"].strip()
    else:
        assert result.status in ("parse_error", "refused") and result.raw == client.seen[0].text and result.error


@pytest.mark.parametrize("scorer, method", [("simulation", "structured-numbers"), ("detection", "structured-answers")])
def test_scorers_fall_back_to_structured_generation_without_teacher_forcing(scorer, method, llama_server, record, tok):
    from autointerp.scorers import build_scorer

    client = OpenAICompatibleClient(llama_server, ALIAS, api_key_env=None, timeout_s=300, max_retries=1, concurrency=1)
    assert not client.supports_forced_logprobs  # no tokenizer: the chat template is unknown
    s = build_scorer(scorer, client=client, tokenizer=tok)
    assert not s.forced and s.structured
    score = s.score(record, "the word cat")
    # a 135M model's judgements may be poor, but its answers are constrained JSON: parsed, never lost
    assert score.method == method
    assert score.details.get("failures", {}).get("parse_error", 0) == 0, score.details
    assert score.ok or score.error


def test_the_explain_and_score_commands_through_the_server(llama_server, tiny_model, tmp_path):
    """The CLI end to end: `autointerp explain` with an LLM explainer and `autointerp score` with a
    teacher-forced scorer, both through the server, the second bounded by --deadline."""
    import sqlite3

    from helpers import run_cli, small_dictionary

    ddir = small_dictionary(tiny_model, tmp_path, "blocks.1.hook_out", 0)[0]
    db = tmp_path / "features.db"
    flags = ["--db", str(db), "--endpoint", llama_server, "--endpoint-model", ALIAS,
             "--endpoint-tokenizer", "smollm2-135m", "--request-timeout", "120", "--retries", "1"]
    out = run_cli("explain", str(ddir), "--explainer", "token-activation", "--features", "2", *flags).stdout
    assert "explain token-activation: " in out
    con = sqlite3.connect(db)
    rows = con.execute("SELECT status, model, raw_response, error FROM explanations "
                       "WHERE explainer = 'token-activation'").fetchall()
    assert len(rows) == 2 and all(m == ALIAS for _, m, _, _ in rows)
    # a strictly parsed JSON answer or a recorded status with its reason; never an unlabelled value
    assert all(s == "ok" or (s in ("parse_error", "refused") and e) for s, _, _, e in rows), rows
    # two baseline explanations: the first's random-explanation control is the second's
    run_cli("explain", str(ddir), "--explainer", "token-enrichment", "--features", "2", "--db", str(db))
    t0 = __import__("time").monotonic()
    out = run_cli("score", str(ddir), "--scorer", "detection", "--explainer", "token-enrichment", "--features", "1",
                  "--deadline", "12", *flags).stdout
    assert __import__("time").monotonic() - t0 < 12 + 60  # start-up, the probe and the deadline
    scores = con.execute("SELECT control, status, error, details FROM scores WHERE scorer = 'detection'").fetchall()
    con.close()
    assert scores, out
    if "deadline passed" in out:  # the usual case here: ~6 s per teacher-forced row on 2 cores
        assert any(s == "timeout" and "deadline" in (e or "") for _, s, e, _ in scores), scores
    assert all(s in ("ok", "timeout") for _, s, _, _ in scores), scores
    assert all('"forced-logprobs"' in d for _, s, _, d in scores if s == "ok")
