"""The explain/score pipeline on a tiny dictionary: features.db rows, failure re-runs, controls, the CLI."""

from __future__ import annotations

import shutil

import pytest

from autointerp.activations import CacheConfig, cache_activations
from autointerp.examples import ExamplesConfig
from autointerp.dictionary_folder import dictionary_name
from autointerp.featuredb import FeatureDB
from autointerp.interpret import explain, prepare_features, score, summary
from autointerp.llm import OpenAICompatibleClient
from autointerp.selection import FeatureSelection, parse_feature_selection
from autointerp.training import TrainJob, train_from_cache
from fake_openai_server import FakeOpenAIServer, Reply
from helpers import run_cli, small_dictionary

HP = "blocks.1.hook_out"
DEAD = 0
CFG = ExamplesConfig(n_top=6, n_quantile_bins=2, n_per_quantile=2, n_random=6, window=(4, 2), batch=200)


@pytest.fixture(scope="module")
def dictionary_dir(tiny_model, tmp_path_factory):
    """A 32-latent TopK dictionary over a tiny cache, latent 0 killed."""
    return small_dictionary(tiny_model, tmp_path_factory.mktemp("interp"), HP, DEAD)[0]


@pytest.fixture(scope="module")
def prepared(dictionary_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "features.db"
    assert prepare_features(dictionary_dir, db, CFG, progress=False) == 32
    return db


@pytest.fixture
def db_copy(prepared, tmp_path):
    path = tmp_path / "features.db"
    shutil.copy(prepared, path)
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_parse_feature_selection():
    assert parse_feature_selection("0-3,15,20") == FeatureSelection(latents=(0, 1, 2, 3, 15, 20))
    assert parse_feature_selection("50") == FeatureSelection(count=50)
    assert parse_feature_selection("7,") == FeatureSelection(latents=(7,))
    assert parse_feature_selection("3").select([0, 2, 5, 9, 11]) == [0, 2, 5]
    assert parse_feature_selection("2-9").select([0, 2, 5, 11]) == [2, 5]
    for bad in ("a", "5-2", ",", "1-x"):
        with pytest.raises(ValueError):
            parse_feature_selection(bad)


def test_prepare_is_idempotent_and_records_dead(dictionary_dir, prepared):
    assert prepare_features(dictionary_dir, prepared, CFG, progress=False) == 0  # all stored: no pass
    with FeatureDB(prepared) as db:
        feats = db.features(dictionary_name(dictionary_dir))
        assert [f["latent"] for f in feats] == list(range(32))
        dead = [f for f in feats if f["dead"]]
        assert DEAD in {f["latent"] for f in dead}
        assert all(db.examples(f["id"]) == [] for f in dead)
        live = next(f for f in feats if not f["dead"])
        assert {e["split"] for e in db.examples(live["id"])} == {"explain", "score"}


def test_enrichment_then_embedding_with_controls(dictionary_dir, db_copy, tok):
    counts = explain(db_copy, dictionary_dir, "token-enrichment", tokenizer=tok, features="5", progress=False)
    assert counts.done + counts.failed == 5 and counts.done >= 4
    # a second run finds nothing to do
    assert explain(db_copy, dictionary_dir, "token-enrichment", tokenizer=tok, features="5", progress=False).done == 0
    scored = score(db_copy, dictionary_dir, "embedding", tokenizer=tok, explainer_name="token-enrichment",
                   progress=False)
    assert scored.done + scored.failed == counts.done
    with FeatureDB(db_copy) as db:
        dead_ids = {f["id"] for f in db.features() if f["dead"]}
        expl = db.explanations()
        assert not {e["feature_id"] for e in expl} & dead_ids  # dead features never explained
        ok = [e for e in expl if e["status"] == "ok"]
        for e in ok:
            rows = {s["control"]: s for s in db.scores(e["feature_id"])}
            assert set(rows) == {"none", "random_explanation", "baseline"}
            main = rows["none"]
            assert main["explanation_id"] == e["id"] and rows["baseline"]["explanation_id"] is None
            if main["status"] == "ok":
                assert 0 <= main["value"] <= 1 and main["n"] > 0 and main["ci_low"] <= main["ci_high"]
                assert main["details"]["method"] == "cosine-auroc"
            rnd = rows["random_explanation"]  # same contexts: fails exactly when the score split does
            assert rnd["status"] == main["status"] and rnd["details"]["control_explanation_id"] != e["id"]
        assert len(db.scores()) == 3 * len(ok)
    # nothing left to do; a re-run changes nothing
    assert score(db_copy, dictionary_dir, "embedding", tokenizer=tok, progress=False).done == 0
    s = summary(db_copy)["embedding"]
    assert s["none"]["n"] == s["random_explanation"]["n"] >= 1 and s["baseline"]["n"] >= 1
    assert s["none"]["n"] + s["none"]["failed"] == len(ok)
    assert 0 <= s["none"]["median"] <= 1
    # a control that failed (say the process died mid-way through an earlier version) is redone
    with FeatureDB(db_copy) as db:
        row = next(r for r in db.scores(status="ok") if r["control"] == "baseline")
        db.con.execute("UPDATE scores SET status = 'error', value = NULL, ci_low = NULL, ci_high = NULL, "
                       "error = 'simulated' WHERE id = ?", (row["id"],))
        db.con.commit()
    score(db_copy, dictionary_dir, "embedding", tokenizer=tok, progress=False)
    with FeatureDB(db_copy) as db:
        again = next(r for r in db.scores(row["feature_id"]) if r["control"] == "baseline")
        assert again["status"] == "ok" and again["value"] == row["value"]


def test_llm_failures_are_stored_and_redone(dictionary_dir, db_copy, tok, monkeypatch):
    monkeypatch.setenv("FAKE_INTERP_KEY", "k")
    with FakeOpenAIServer(answer="EXPLANATION: the letter e") as server:
        server.push("garbage", "429", "429", Reply("good", text="no marker here"))
        client = OpenAICompatibleClient(server.base_url, "fake-model", api_key_env="FAKE_INTERP_KEY",
                                        max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02,
                                        structured=False)  # no probe: the queued replies are the answers
        first = explain(db_copy, dictionary_dir, "highlight", client=client, tokenizer=tok, features="6",
                        progress=False)
    assert (first.done, first.failed) == (3, 3)
    with FeatureDB(db_copy) as db:
        rows = db.explanations()
        failed = {r["feature_id"]: r for r in rows if r["status"] != "ok"}
        assert sorted(r["status"] for r in failed.values()) == ["parse_error", "parse_error", "rate_limited"]
        assert all(r["text"] is None and r["error"] for r in failed.values())
        assert any(r["raw_response"] == "no marker here" for r in failed.values())
        ok_before = {r["feature_id"]: (r["id"], r["created"]) for r in rows if r["status"] == "ok"}
    with FakeOpenAIServer(answer="EXPLANATION: the letter e") as good:
        client = OpenAICompatibleClient(good.base_url, "fake-model", api_key_env="FAKE_INTERP_KEY", max_retries=0,
                                        structured=False)
        again = explain(db_copy, dictionary_dir, "highlight", client=client, tokenizer=tok, features="6",
                        progress=False)
        assert len(good.requests) == 3  # exactly the failed ones
    assert (again.done, again.failed) == (3, 0)
    with FeatureDB(db_copy) as db:
        rows = db.explanations()
        assert len(rows) == 6 and all(r["status"] == "ok" and r["text"] == "the letter e" for r in rows)
        assert {r["feature_id"] for r in rows} == set(failed) | set(ok_before)
        assert all((r["id"], r["created"]) == ok_before[r["feature_id"]] for r in rows if r["feature_id"] in ok_before)


def test_cli_explain_and_score(dictionary_dir, tmp_path):
    db = tmp_path / "cli.db"
    proc = run_cli("explain", str(dictionary_dir), "--db", str(db), "--explainer", "token-enrichment",
                   "--features", "1-3")
    assert "explain token-enrichment:" in proc.stdout and "done" in proc.stdout
    proc = run_cli("score", str(dictionary_dir), "--db", str(db), "--scorer", "embedding",
                   "--explainer", "token-enrichment", "--features", "1-3")
    assert "score embedding:" in proc.stdout and "vs random_explanation" in proc.stdout
    with FeatureDB(db) as fdb:
        latent_of = {f["id"]: f["latent"] for f in fdb.features()}
        explained = {e["feature_id"] for e in fdb.explanations(status="ok")}
        assert explained and {latent_of[i] for i in explained} <= {1, 2, 3}
        for fid in explained:  # every scored feature has its score and both controls
            assert sorted(s["control"] for s in fdb.scores(fid)) == ["baseline", "none", "random_explanation"]
    bad = run_cli("score", str(tmp_path), "--db", str(db), check=False)
    assert bad.returncode == 2 and "not a dictionary folder" in bad.stderr


@pytest.mark.real_model
@pytest.mark.slow
def test_explain_then_score_on_the_real_model(real_model, tmp_path):
    """The whole path on SmolLM2: cache, train, examples, the baseline and the local LLM explainer
    (the embedded model itself), embedding scores with both controls."""
    from autointerp.llm import LocalClient

    cfg = CacheConfig(hookpoints=["blocks.15.hook_out"], tokens=12_000, shard_contexts=32)
    folder = cache_activations(cfg, tmp_path / "acts", model=real_model, progress=False)["blocks.15.hook_out"]
    train_from_cache(TrainJob(activations=[str(folder)], out=str(tmp_path / "d"), latents=[256], k=[16],
                              batch_size=512, epochs=3, heldout_tokens=4000), progress=False)
    d, db = tmp_path / "d" / "blocks.15.hook_out", tmp_path / "features.db"
    prepare_features(d, db, progress=False)
    base = explain(db, d, "token-enrichment", tokenizer=real_model.tokenizer, features="4", progress=False)
    assert (base.done, base.failed) == (4, 0)
    client = LocalClient(real_model, batch_size=4, max_new_tokens=200)
    llm = explain(db, d, "token-activation", client=client, tokenizer=real_model.tokenizer, features="2",
                  progress=False)
    assert llm.done + llm.failed == 2
    with FeatureDB(db) as store:
        rows = [e for e in store.explanations() if e["explainer"] == "token-activation"]
        assert len(rows) == 2
        for e in rows:  # the small model often ignores the answer format: kept raw, never a value
            assert (e["status"] == "ok") == (e["text"] is not None)
            assert e["status"] == "ok" or e["raw_response"] or e["error"]
    scored = score(db, d, "embedding", tokenizer=real_model.tokenizer, explainer_name="token-enrichment",
                   features="4", progress=False)
    assert scored.done + scored.failed == 4
    with FeatureDB(db) as store:
        controls = {s["control"] for s in store.scores()}
    assert controls == {"none", "random_explanation", "baseline"}
    # the LLM scorers on the embedded model read teacher-forced answers: a value for every item,
    # whether or not the small model would have followed the answer format
    for name, method in (("simulation", "forced-logprob-expectation"), ("detection", "forced-logprobs")):
        llm_scored = score(db, d, name, client=client, tokenizer=real_model.tokenizer,
                           explainer_name="token-enrichment", features="2", progress=False)
        assert (llm_scored.done, llm_scored.failed) == (2, 0)
        with FeatureDB(db) as store:
            rows = [s for s in store.scores() if s["scorer"] == name]
        assert {r["control"] for r in rows} == {"none", "random_explanation", "baseline"} and len(rows) == 6
        for r in rows:  # ok, in range, and read as documented
            assert r["status"] == "ok" and r["details"]["n_failed"] == 0 and r["details"]["method"] == method
            assert (-1 <= r["value"] <= 1) if name == "simulation" else (0 <= r["value"] <= 1)


def test_a_deadline_stores_what_it_stopped_as_timeout_and_a_rerun_redoes_only_that(dictionary_dir, db_copy, tok,
                                                                                 monkeypatch):
    """A stalling server cannot hang the job: past the deadline nothing more is asked, the rows
    left are stored as ``timeout``, and the next call redoes exactly them."""
    import time

    monkeypatch.setenv("FAKE_INTERP_KEY", "k")
    with FakeOpenAIServer(default=Reply("stall", stall_s=4.0), answer="EXPLANATION: the letter e") as server:
        server.push(Reply("good"), Reply("good"))  # the first two answer at once
        client = OpenAICompatibleClient(server.base_url, "fake-model", api_key_env="FAKE_INTERP_KEY",
                                        timeout_s=30, max_retries=3, concurrency=1, structured=False)
        t0 = time.monotonic()
        first = explain(db_copy, dictionary_dir, "highlight", client=client, tokenizer=tok, features="6",
                        progress=False, deadline=1.5)
        wall = time.monotonic() - t0
        asked = len(server.requests)
    assert wall < 1.5 + 1.0, wall  # the stalled request was cut at the deadline, nothing after it started
    assert first.deadline_passed and (first.done, first.failed) == (2, 4)
    assert asked == 3  # two answered, one stalled until the deadline; the other three never sent
    assert client.deadline is None  # the deadline belonged to that call only
    with FeatureDB(db_copy) as db:
        failed = [r for r in db.explanations() if r["status"] != "ok"]
        assert len(failed) == 4 and all(r["status"] == "timeout" and "deadline" in r["error"] for r in failed)
    with FakeOpenAIServer(answer="EXPLANATION: the letter e") as good:
        client = OpenAICompatibleClient(good.base_url, "fake-model", api_key_env="FAKE_INTERP_KEY",
                                        structured=False)
        again = explain(db_copy, dictionary_dir, "highlight", client=client, tokenizer=tok, features="6",
                        progress=False, deadline=60)
        assert len(good.requests) == 4
    assert (again.done, again.failed, again.deadline_passed) == (4, 0, False)
    with FeatureDB(db_copy) as db:
        rows = db.explanations()
        assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
