"""The endpoint client's teacher-forced reading, structured answers, probing and deadline, against
the loopback fake server (every failure mode on demand). The same paths against a real llama.cpp
server: tests/test_llm_server.py (``make test-servers``)."""

from __future__ import annotations

import time

import pytest
from fake_openai_server import FakeOpenAIServer, Reply

from autointerp.llm import Deadline, LocalClient, OpenAICompatibleClient, parse_json_answer
from autointerp.llm.openai_client import PROBE_SCHEMA

CONV = [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "ANSWER: yes"}]


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def client_for(server, tok=None, **kw) -> OpenAICompatibleClient:
    opts = {"api_key_env": None, "timeout_s": 2.0, "max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02,
            **kw}
    return OpenAICompatibleClient(server.base_url, "fake-model", tokenizer=tok, **opts)


def test_forced_reading_sends_the_templated_prompt_and_reads_the_answer_tokens(tok):
    with FakeOpenAIServer() as server:
        client = client_for(server, tok, forced=True, structured=False)
        [c] = client.forced_logprobs([CONV], top_logprobs=2)
        req = server.requests[-1]
    prompt = tok.apply_chat_template(CONV[:-1], tokenize=False, add_generation_prompt=True)
    assert req.path == "/v1/completions"
    assert req.body["prompt"] == prompt + "ANSWER: yes"
    assert (req.body["echo"], req.body["logprobs"], req.body["max_tokens"]) == (True, 2, 1)
    assert c.ok and c.text == "ANSWER: yes"
    # the fake gives one token per character; the generated "!" is left out
    assert [t.token for t in c.logprobs] == list("ANSWER: yes")
    assert all(t.logprob == -0.1 for t in c.logprobs)
    # the top alternatives, most likely first, capped at the number asked
    assert [(a.token, a.logprob) for a in c.logprobs[-1].top] == [("s", -0.1), ("1", -1.5)]


@pytest.mark.parametrize("kind, message", [
    ("no_logprobs", "no log-probabilities of the prompt"),
    ("wrong_tokens", "not the answer"),
    ("html", "no choices"),
])
def test_forced_reading_refuses_what_is_not_the_answer_read(kind, message, tok):
    with FakeOpenAIServer(default=kind) as server:
        [c] = client_for(server, tok, forced=True, structured=False).forced_logprobs([CONV], top_logprobs=2)
    assert c.status == "parse_error" and message in c.error and c.logprobs is None


def test_a_server_that_is_down_is_an_error_status(tok):
    with FakeOpenAIServer() as server:
        url = server.base_url
    client = OpenAICompatibleClient(url, "m", api_key_env=None, tokenizer=tok, forced=True, structured=False,
                                    timeout_s=1.0, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02)
    [c] = client.forced_logprobs([CONV], top_logprobs=2)
    assert c.status == "error" and "connection failed" in c.error


def test_the_probe_turns_forced_reading_off_where_the_server_lacks_it_and_scorers_generate(tok):
    from autointerp.scorers import build_scorer

    with FakeOpenAIServer(default="no_logprobs") as server:
        client = client_for(server, tok, structured=False)
        assert not client.supports_forced_logprobs
        assert "no log-probabilities" in client.capabilities().forced_note
        n = len(server.requests)
        assert not build_scorer("simulation", client=client, tokenizer=tok).forced
        assert len(server.requests) == n  # probed once per client
    with FakeOpenAIServer() as server:
        assert not client_for(server, None, structured=False).supports_forced_logprobs  # no chat template
        assert server.requests == []
        assert client_for(server, tok, structured=False).supports_forced_logprobs
    with pytest.raises(ValueError, match="tokenizer"):
        OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", api_key_env=None, forced=True)


def test_the_schema_probe_prefers_the_openai_form_then_the_llama_cpp_python_form():
    with FakeOpenAIServer(answer='{"answer": "yes"}') as server:
        client = client_for(server, forced=False)
        assert client.supports_schema and client.capabilities().schema_format == "json_schema"
        client.generate([{"role": "user", "content": "q"}], max_tokens=8, schema=PROBE_SCHEMA)
        rf = server.requests[-1].body["response_format"]
    assert rf == {"type": "json_schema", "json_schema": {"name": "answer", "schema": PROBE_SCHEMA, "strict": True}}

    def only_json_object(req):  # answers JSON only when asked in the second form
        rf = req.get("response_format") or {}
        return '{"answer": "no"}' if rf.get("type") == "json_object" else "sure, yes"
    with FakeOpenAIServer(answer=only_json_object) as server:
        client = client_for(server, forced=False)
        assert client.capabilities().schema_format == "json_object"
        assert "json_schema: ok 'sure, yes'" in client.capabilities().schema_note
    with FakeOpenAIServer(default="reject_schema") as server:
        client = client_for(server, forced=False)
        assert not client.supports_schema and "HTTP 400" in client.capabilities().schema_note
        with pytest.raises(ValueError, match="takes no JSON schema"):
            client.generate([{"role": "user", "content": "q"}], max_tokens=8, schema=PROBE_SCHEMA)


def test_strict_json_answers():
    assert parse_json_answer('{"answer": "yes"}', PROBE_SCHEMA) == {"answer": "yes"}
    assert "not JSON" in parse_json_answer('{"answer": "yes"} and more', PROBE_SCHEMA)
    assert "violates its schema" in parse_json_answer('{"answer": "maybe"}', PROBE_SCHEMA)
    assert "violates its schema" in parse_json_answer('{"answer": "yes", "x": 1}', PROBE_SCHEMA)
    # dataset text inside the explanation cannot add a key or end the answer early
    from autointerp.explainers.prompts import parse_structured_explanation

    assert parse_structured_explanation('{"explanation": "cats\\nEXPLANATION: dogs"}').text == "cats\nEXPLANATION: dogs"
    assert parse_structured_explanation('{"explanation": "  "}').status == "parse_error"
    assert parse_structured_explanation('{"explanation": "I cannot help"}').status == "refused"


def test_a_schema_violation_is_a_recorded_parse_error_never_a_score():
    from test_scorers import TOK, make_record

    from autointerp.scorers import build_scorer

    with FakeOpenAIServer(answer='{"answer": "yes"}') as server:
        client = client_for(server, forced=False)
        assert client.supports_schema
        server.default = Reply("schema_violation")
        s = build_scorer("detection", client=client, tokenizer=TOK)
        assert s.structured and not s.forced
        score = s.score(make_record(n_per_kind=4), "the word cat")
    assert score.status == "parse_error" and score.value is None and score.method == "structured-answers"
    assert """'{"answer": 7}'""" in score.error


def test_a_deadline_cuts_a_stalling_request_and_sends_nothing_after_it():
    with FakeOpenAIServer(default=Reply("stall", stall_s=4.0)) as server:
        client = client_for(server, forced=False, structured=False, timeout_s=30, max_retries=5, concurrency=1)
        client.deadline = Deadline(0.6)
        t0 = time.monotonic()
        out = client.generate_many([[{"role": "user", "content": f"q{i}"}] for i in range(4)], max_tokens=4)
        wall = time.monotonic() - t0
        asked = len(server.requests)
    assert wall < 1.6, wall
    assert [c.status for c in out] == ["timeout"] * 4 and all("deadline" in c.error for c in out)
    assert asked == 1
    with pytest.raises(ValueError):
        Deadline(0)


def test_the_local_client_starts_no_batch_after_its_deadline(tiny_model):
    client = LocalClient(tiny_model, batch_size=2)
    client.deadline = Deadline(1e-3)
    time.sleep(0.01)
    out = client.generate_many([[{"role": "user", "content": "hi"}]] * 3, max_tokens=2)
    assert [c.status for c in out] == ["timeout"] * 3
    forced = client.forced_logprobs([CONV], top_logprobs=2)
    assert forced[0].status == "timeout"
