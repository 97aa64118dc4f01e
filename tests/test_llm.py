"""LLM clients: every failure mode of the HTTP client against a loopback fake server, the
response cache, key hygiene, and the local transformers client on a tiny random Llama."""

from __future__ import annotations

import logging
import math
import random
import threading
import time

import pytest
import torch

from autointerp.llm import (
    Completion, LocalClient, OpenAICompatibleClient, ResponseCache, TokenLogprobs, backoff_delay,
    parse_retry_after)
from autointerp.llm.local import _common_prefix_len
from fake_openai_server import FakeOpenAIServer, Reply

KEY = "sk-test-SECRET-7f3a9c1e5b"
MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", KEY)
    return "FAKE_LLM_KEY"


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def make_client(server, api_key, **kw) -> OpenAICompatibleClient:
    opts = {"timeout_s": 0.4, "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw}
    return OpenAICompatibleClient(server.base_url, "fake-model", api_key_env=api_key, **opts)


# ---------------------------------------------------------------------------------------
# Outcomes: status and number of attempts for every server behaviour.

@pytest.mark.parametrize("replies, status, attempts", [
    (["good"], "ok", 1),
    (["garbage"], "parse_error", 1),
    (["refuse"], "refused", 1),
    (["429", "429", "429"], "rate_limited", 3),
    (["500", "500", "500"], "error", 3),
    ([Reply("stall", stall_s=1.0)] * 3, "timeout", 3),
    (["drop", "drop", "drop"], "error", 3),
    (["429", "500", "good"], "ok", 3),
    (["drop", "good"], "ok", 2),
    ([Reply("stall", stall_s=1.0), "good"], "ok", 2),
    (["500", "500", "429"], "rate_limited", 3),
    (["429", "429", "500"], "error", 3),
])
def test_status_and_retry_count(server, api_key, replies, status, attempts):
    server.push(*replies)
    c = make_client(server, api_key).generate(MSGS, max_tokens=8)
    assert c.status == status, c.error
    assert len(server.requests) == attempts
    if status == "ok":
        assert c.text == "hello world" and c.error is None
    else:
        assert c.text is None and c.error
        assert f"after {attempts} attempt" in c.error


def test_client_error_is_not_retried(server, api_key):
    client = OpenAICompatibleClient(server.base_url.replace("/v1", "/nowhere"), "m", api_key_env=api_key,
                                    max_retries=3, backoff_base_s=0.01)
    c = client.generate(MSGS, max_tokens=8)
    assert c.status == "error" and "HTTP 404" in c.error
    assert len(server.requests) == 1


def test_answer_from_callback_and_request_shape(server, api_key):
    server.answer = lambda req: req["messages"][-1]["content"].upper()
    c = make_client(server, api_key).generate(MSGS, max_tokens=7, temperature=0.5)
    assert c.text == "SAY HELLO." and c.model == "fake-model" and not c.cached and c.latency_s > 0
    body = server.requests[0].body
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and body["messages"] == MSGS
    assert "logprobs" not in body


def test_logprobs_requested_and_parsed(server, api_key):
    c = make_client(server, api_key).generate(MSGS, max_tokens=8, logprobs=3)
    body = server.requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert [t.token for t in c.logprobs] == ["hello", " world"]
    assert all(isinstance(t, TokenLogprobs) and len(t.top) == 3 and t.top[0].token == t.token
               for t in c.logprobs)
    assert c.logprobs[0].top[2].logprob == pytest.approx(-2.25)


# ---------------------------------------------------------------------------------------
# Timing: Retry-After honoured, back-off bounded.

def test_retry_after_is_honoured(server, api_key):
    server.push(Reply("429", retry_after="1"), "good")
    t0 = time.monotonic()
    c = make_client(server, api_key, backoff_max_s=0.01).generate(MSGS, max_tokens=8)
    elapsed = time.monotonic() - t0
    assert c.ok and len(server.requests) == 2
    assert 0.9 <= server.requests[1].t_start - server.requests[0].t_start < 3.0
    assert elapsed >= 0.9


def test_retry_after_zero_retries_at_once(server, api_key):
    server.push(Reply("429", retry_after="0"), Reply("429", retry_after="0"), "good")
    t0 = time.monotonic()
    c = make_client(server, api_key, backoff_base_s=10.0, backoff_max_s=10.0).generate(MSGS, max_tokens=8)
    assert c.ok and len(server.requests) == 3
    assert time.monotonic() - t0 < 1.0  # the 10 s back-off was not used


def test_backoff_is_full_jitter_and_bounded():
    rng = random.Random(0)
    for attempt in range(12):
        cap = min(2.0, 0.1 * 2 ** attempt)
        delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.8 * cap and min(delays) < 0.2 * cap  # spread over the whole range
    assert parse_retry_after("2") == 2.0 and parse_retry_after("-1") == 0.0
    assert parse_retry_after("1e9") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_backoff_total_time_is_bounded(server, api_key):
    server.push(*["500"] * 6)
    t0 = time.monotonic()
    c = make_client(server, api_key, max_retries=5, backoff_base_s=0.05, backoff_max_s=0.1).generate(
        MSGS, max_tokens=8)
    assert c.status == "error" and len(server.requests) == 6
    assert time.monotonic() - t0 < 5 * 0.1 + 1.0


# ---------------------------------------------------------------------------------------
# Cache.

def test_cache_hit_on_repeat_and_failures_not_stored(server, api_key, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    client = make_client(server, api_key, cache=cache)
    first = client.generate(MSGS, max_tokens=8, logprobs=2)
    second = client.generate(MSGS, max_tokens=8, logprobs=2)
    assert first.ok and not first.cached and second.cached
    assert (second.text, second.logprobs) == (first.text, first.logprobs)
    assert len(server.requests) == 1 and len(cache) == 1

    other = [{"role": "user", "content": "Something else."}]
    server.push("500", "500", "500")
    assert client.generate(other, max_tokens=8).status == "error"
    assert len(cache) == 1
    server.push("refuse")
    assert client.generate(other, max_tokens=8).status == "refused"
    assert len(cache) == 1
    assert client.generate(other, max_tokens=8).ok  # the failures were not replayed
    assert len(cache) == 2 and len(server.requests) == 6
    # Parameters are part of the key.
    client.generate(MSGS, max_tokens=9, logprobs=2)
    assert len(server.requests) == 7

    # Persisted on disk: a fresh cache object over the same file still hits.
    cache.close()
    again = make_client(server, api_key, cache=ResponseCache(tmp_path / "cache.sqlite"))
    assert again.generate(MSGS, max_tokens=8, logprobs=2).cached


def test_cache_is_thread_safe(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")

    def work(k):
        for i in range(25):
            msgs = [{"role": "user", "content": f"{k}-{i}"}]
            cache.put("m", msgs, {}, Completion(text=f"{k}-{i}", status="ok"))
            assert cache.get("m", msgs, {}).text == f"{k}-{i}"

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 100
    assert not cache.put("m", MSGS, {}, Completion(text=None, status="timeout", error="x"))
    assert cache.get("m", MSGS, {}) is None


# ---------------------------------------------------------------------------------------
# Concurrency.

def test_concurrency_limit_respected(api_key):
    with FakeOpenAIServer(default=Reply("good", delay_s=0.1)) as server:
        client = make_client(server, api_key, concurrency=3, timeout_s=5)
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
        server.answer = lambda req: req["messages"][0]["content"]
        out = client.generate_many(convs, max_tokens=4)
    assert [c.text for c in out] == [f"q{i}" for i in range(12)]  # order kept
    assert len(server.requests) == 12
    assert server.max_in_flight == 3


# ---------------------------------------------------------------------------------------
# The key goes to the server's Authorization header and nowhere else.

def test_api_key_never_leaks(server, api_key, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    cache = ResponseCache(tmp_path / "keycheck.sqlite")
    client = make_client(server, api_key, cache=cache)
    server.push("429", "429", "429", "500", "500", "500", "drop", "drop", "drop", "garbage", "refuse",
                Reply("stall", stall_s=1.0), Reply("stall", stall_s=1.0), Reply("stall", stall_s=1.0), "good")
    results = [client.generate([{"role": "user", "content": f"m{i}"}], max_tokens=4) for i in range(7)]
    assert [r.status for r in results] == ["rate_limited", "error", "error", "parse_error", "refused",
                                           "timeout", "ok"]
    cache.close()

    everything = [repr(client), str(client.__dict__.keys()), repr(cache), caplog.text,
                  *capsys.readouterr()] + [repr(r) for r in results]
    for f in tmp_path.iterdir():
        everything.append(f.read_bytes().decode("latin-1"))
    assert "retry 1/2" in caplog.text and "Sending HTTP Request" in caplog.text  # DEBUG really was captured
    for text in everything:
        assert KEY not in text
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in server.requests)
    assert all(KEY not in str(r.body) for r in server.requests)

    with pytest.raises(ValueError, match="FAKE_MISSING_KEY") as exc:
        OpenAICompatibleClient(server.base_url, "m", api_key_env="FAKE_MISSING_KEY")
    assert KEY not in str(exc.value)


def test_bad_arguments_raise(server, api_key):
    client = make_client(server, api_key)
    with pytest.raises(ValueError):
        client.generate([], max_tokens=4)
    with pytest.raises(ValueError):
        client.generate([{"role": "robot", "content": "x"}], max_tokens=4)
    with pytest.raises(ValueError):
        client.generate(MSGS, max_tokens=0)
    assert not server.requests


# ---------------------------------------------------------------------------------------
# Local transformers client on a tiny random-weight Llama with the real SmolLM2 tokenizer.

@pytest.fixture(scope="module")
def local_client(tiny_model):
    return LocalClient(tiny_model, batch_size=4, max_new_tokens=16)


SHORT = [{"role": "user", "content": "Hi."}]
LONG = [{"role": "user", "content": "Describe in one short sentence what this latent fires on: it is active "
                                    "on the tokens 'cat', 'dog', 'horse' and 'parrot' in stories about "
                                    "pets."}]


def test_local_left_padding_matches_unbatched(local_client):
    alone = local_client.generate(SHORT, max_tokens=6)
    batched = local_client.generate_many([LONG, SHORT, LONG], max_tokens=6)
    assert len(local_client.prompt_ids(LONG)) > len(local_client.prompt_ids(SHORT)) + 10
    assert alone.ok and alone.text
    assert batched[1].text == alone.text
    assert batched[0].text == batched[2].text == local_client.generate(LONG, max_tokens=6).text


def test_local_generation_from_a_shared_prefix_equals_generation_without(tiny_model):
    """More requests than one batch: the prompt tokens they all share run once, and every batch
    continues from a copy of their cache (``[prefix | pad | own]``). Texts and log-probabilities
    equal those of every row computed in full, in batches and one at a time."""
    system = {"role": "system", "content": "You explain latents. " * 8}
    convs = [[system, {"role": "user", "content": "Token " + "cat " * (i % 5 + 1)}] for i in range(7)]
    client = LocalClient(tiny_model, batch_size=3, max_new_tokens=8)
    shared, cache = client._shared_prefix([client.prompt_ids(m) for m in convs])
    assert shared >= 40 and cache is not None
    with_prefix = client.generate_many(convs, max_tokens=6, logprobs=2)
    client.min_shared_prefix = 10**9
    full = client.generate_many(convs, max_tokens=6, logprobs=2)
    alone = [client.generate(m, max_tokens=6, logprobs=2) for m in convs]
    for a, b, c in zip(with_prefix, full, alone):
        assert a.text == b.text == c.text
        assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs]
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_local_logprobs_valid(local_client):
    c = local_client.generate_many([SHORT, LONG], max_tokens=5, logprobs=3)
    for comp in c:
        assert comp.ok and comp.logprobs and len(comp.logprobs) <= 5
        for t in comp.logprobs:
            assert t.logprob <= 0 and math.isfinite(t.logprob)
            assert len(t.top) == 3
            assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
            assert t.top[0].token == t.token  # greedy: the chosen token is the most likely one
            assert t.top[0].logprob == pytest.approx(t.logprob)
        assert "".join(t.token for t in comp.logprobs) == comp.text
    assert local_client.generate(SHORT, max_tokens=5).logprobs is None


def test_local_cache_and_limits(tiny_model, tmp_path):
    cache = ResponseCache(tmp_path / "l.sqlite")
    client = LocalClient(tiny_model, batch_size=2, max_new_tokens=4, cache=cache)
    first = client.generate(SHORT, max_tokens=3)
    again = client.generate_many([SHORT, LONG], max_tokens=3)
    assert again[0].cached and again[0].text == first.text and not again[1].cached
    with pytest.raises(ValueError, match="max_new_tokens"):
        client.generate(SHORT, max_tokens=5)


def test_local_generation_equals_plain_transformers(local_client, tiny_model):
    """Greedy text equals a plain transformers `generate` token for token (the KV cache is used
    correctly: generating through the TransformerBridge-wrapped model broke every token after
    the first)."""
    from transformers import AutoModelForCausalLM

    messages = [{"role": "user", "content": "Count: one two three"}]
    ids = torch.tensor([local_client.prompt_ids(messages)])
    plain = AutoModelForCausalLM.from_pretrained(tiny_model.source, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=local_client.pad_id)
    new = out[0, ids.shape[1]:].tolist()
    n = next((t for t, tok in enumerate(new) if tok in local_client.stop_ids), len(new))
    expected = local_client.tokenizer.decode(new[:n], skip_special_tokens=True)
    assert local_client.generate(messages, max_tokens=12).text == expected


@pytest.mark.real_model
def test_local_client_answers_on_the_real_model(real_model):
    client = LocalClient(real_model, max_new_tokens=16)
    answer = client.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
    assert answer.ok and "Paris" in answer.text


def test_local_prefill_continues_the_assistant_message(local_client):
    """A conversation ending in an assistant message is continued inside that message: the prompt
    ends with the prefill (no end-of-turn token), where a plain one ends with the turn opening."""
    tok = local_client.tokenizer
    plain = tok.decode(local_client.prompt_ids(SHORT))
    prefilled = tok.decode(local_client.prompt_ids([*SHORT, {"role": "assistant", "content": "EXPLANATION:"}]))
    assert prefilled == plain + "EXPLANATION:"
    assert local_client.supports_prefill and local_client.generate(
        [*SHORT, {"role": "assistant", "content": "EXPLANATION:"}], max_tokens=3).ok


# -- teacher-forced log-probabilities ---------------------------------------------------------

FORCED_SHORT = [*SHORT, {"role": "assistant", "content": "ANSWER: yes"}]
FORCED_LONG = [*LONG, {"role": "assistant", "content": '"cat"\t7\n"dog"\tunknown\n'}]


def test_local_forced_logprobs_equal_one_plain_forward_pass(local_client, tiny_model):
    """Each answer token's log-probability and top alternatives equal a plain, unpadded forward
    pass of prompt + answer (left padding and explicit positions change nothing)."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model.source, dtype=torch.float32).eval()
    got = local_client.forced_logprobs([FORCED_LONG, FORCED_SHORT, FORCED_LONG], top_logprobs=4)
    assert got[0].to_dict() == got[2].to_dict()
    for conv, c in zip([FORCED_LONG, FORCED_SHORT], got[:2]):
        prompt = local_client.prompt_ids(conv[:-1])
        answer = local_client.tokenizer(conv[-1]["content"], add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp_TV = torch.log_softmax(plain(torch.tensor([prompt + answer])).logits[0].float(), -1)
        assert c.ok and c.text == conv[-1]["content"]
        assert "".join(t.token for t in c.logprobs) == c.text and len(c.logprobs) == len(answer)
        for t, (tok, lp) in enumerate(zip(answer, c.logprobs)):
            row = logp_TV[len(prompt) + t - 1]
            assert lp.logprob == pytest.approx(float(row[tok]), abs=1e-4)
            vals, ids = row.topk(4)
            assert [a.token for a in lp.top] == [local_client.tokenizer.decode([i]) for i in ids.tolist()]
            assert [a.logprob for a in lp.top] == pytest.approx(vals.tolist(), abs=1e-4)


def test_local_forced_logprobs_cache_budget_and_bad_requests(tiny_model, tmp_path):
    cache = ResponseCache(tmp_path / "f.sqlite")
    client = LocalClient(tiny_model, batch_size=4, cache=cache)
    client.forced_logit_budget = 8  # forces one row per forward pass
    first = client.forced_logprobs([FORCED_LONG, FORCED_SHORT], top_logprobs=2)
    again = client.forced_logprobs([FORCED_SHORT, FORCED_LONG], top_logprobs=2)
    assert all(c.cached for c in again) and again[1].logprobs == first[0].logprobs
    assert not client.generate(SHORT, max_tokens=2).cached  # a generation is another request
    with pytest.raises(ValueError, match="assistant"):
        client.forced_logprobs([SHORT], top_logprobs=2)
    # a conversation longer than the model's context fails alone, with the reason; the rest is read
    huge = [{"role": "user", "content": "cat " * (client.hf_model.config.max_position_embeddings + 10)},
            {"role": "assistant", "content": "ANSWER: yes"}]
    over, fine = client.forced_logprobs([huge, FORCED_SHORT], top_logprobs=2)
    assert over.status == "error" and over.text is None and "context" in over.error
    assert fine.ok and fine.logprobs == first[1].logprobs
    with pytest.raises(ValueError, match="top_logprobs"):
        client.forced_logprobs([FORCED_SHORT], top_logprobs=0)


@pytest.mark.parametrize("batch_size", [4, 2])
def test_local_forced_shared_prefix_equals_unshared(tiny_model, batch_size):
    """Rows sharing a long system prompt: computing it once per call (a copy of its cache repeated
    over each batch; batch_size 2 splits the call) gives the same log-probabilities as the full,
    padded forward pass."""
    system = {"role": "system", "content": "You judge texts. " * 12}
    convs = [[system, {"role": "user", "content": u}, {"role": "assistant", "content": a}]
             for u, a in [("Is this a cat?", "ANSWER: yes"), ("A much longer question about dogs and hills?", "no"),
                          ("Hm.", '"x"\t0\n"y"\t0\n')]]
    shared, plain = LocalClient(tiny_model, batch_size=batch_size), LocalClient(tiny_model, batch_size=4)
    plain.min_shared_prefix = 10**6
    assert _common_prefix_len([shared.prompt_ids(c[:-1]) for c in convs]) > 40  # the path is taken
    for a, b in zip(shared.forced_logprobs(convs, top_logprobs=3), plain.forced_logprobs(convs, top_logprobs=3)):
        assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs]
        assert [t.logprob for t in a.logprobs] == pytest.approx([t.logprob for t in b.logprobs], abs=1e-4)
        assert [[x.token for x in t.top] for t in a.logprobs] == [[x.token for x in t.top] for t in b.logprobs]
