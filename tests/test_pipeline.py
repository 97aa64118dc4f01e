"""``autointerp run`` on the tiny model: stage records, skipping, invalidation, refusal, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from autointerp.config import dump_config, load_config
from autointerp.pipeline import STAGE_NAMES, RunError, fingerprints, run, stage_status
from autointerp.runfolder import RunFolder
from helpers import AUTOINTERP, REPO, tiny_run_config, write_word_corpus

LAST = STAGE_NAMES[-1]


@pytest.fixture(scope="module")
def tiny_cfg(tiny_model_dir, tmp_path_factory):
    return load_config(tiny_run_config(tiny_model_dir, write_word_corpus(tmp_path_factory.mktemp("corpus"))))


def _records(root: Path) -> dict[str, dict]:
    return {s: json.loads(RunFolder(root).stage_record(s).read_text()) for s in STAGE_NAMES
            if RunFolder(root).stage_record(s).exists()}


def _db_state(root: Path) -> dict:
    """What a run's features.db holds, independent of row ids and timestamps."""
    con = sqlite3.connect(RunFolder(root).db)
    state = {
        "features": sorted(con.execute("SELECT dictionary, latent, density, max_act, dead FROM features")),
        "examples": con.execute("SELECT COUNT(*) FROM examples").fetchone()[0],
        "explanations": sorted(con.execute(
            "SELECT f.latent, e.explainer, e.model, e.status, e.text FROM explanations e "
            "JOIN features f ON f.id = e.feature_id")),
        "scores": sorted(con.execute(
            "SELECT f.latent, s.scorer, s.control, s.status, ROUND(s.value, 9) FROM scores s "
            "JOIN features f ON f.id = s.feature_id"), key=repr),
    }
    con.close()
    return state


def _weights(root: Path) -> dict:
    (folder,) = RunFolder(root).dictionary_dirs()
    return load_file(folder / "weights.safetensors")


@pytest.fixture(scope="module")
def finished(tiny_cfg, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run") / "r"
    figures = run(tiny_cfg, root, progress=False)
    assert list(figures) == list(STAGE_NAMES)
    return root


def test_a_run_writes_every_stage_and_its_outputs(finished, tiny_cfg):
    rf = RunFolder(finished)
    recs = _records(finished)
    assert list(recs) == list(STAGE_NAMES)
    fps = fingerprints(tiny_cfg)
    assert all(recs[s]["fingerprint"] == fps[s] for s in STAGE_NAMES)
    assert load_config(rf.config) == tiny_cfg
    assert recs["cache"]["figures"]["hookpoints"] == {"blocks.2.hook_out": recs["cache"]["figures"]["hookpoints"][
        "blocks.2.hook_out"]}  # "mid" of the 4-layer model
    (folder,) = rf.dictionary_dirs()
    assert "fvu" in json.loads((folder / "metrics.json").read_text())["evaluation"]
    state = _db_state(finished)
    assert len(state["features"]) == 64
    by_explainer = {}
    for latent, explainer, *_ in state["explanations"]:
        by_explainer[explainer] = by_explainer.get(explainer, 0) + 1
    assert by_explainer == {"token-enrichment": 12, "token-activation": 2}
    assert {c for _, scorer, c, *_ in state["scores"]} == {"none", "random_explanation", "baseline"}
    log = rf.log.read_text()
    assert all(f"stage {s}: finished in" in log for s in STAGE_NAMES)
    assert rf.report.exists() and not list(rf.stages.glob("*.started.json"))


def test_fields_added_later_leave_older_runs_finished(tiny_cfg):
    """A run folder made before ``train.dictionary`` and the endpoint's tokenizer, timeout, retries and
    deadline existed keeps its fingerprints: unset (or, for the bounds on time, whatever their
    value), the new fields are in no stage's hash (the recipe below is the one of that earlier format)."""
    import hashlib

    from autointerp.config import to_dict
    from autointerp.pipeline import RUN_FORMAT, STAGES

    data = to_dict(tiny_cfg)
    for key in ("dictionary", "dictionary_hookpoint"):
        del data["train"][key]
    for key in ("endpoint_tokenizer", "timeout_s", "retries", "deadline_s"):
        del data["explain"]["client"][key]
    old: dict[str, str] = {}
    for stage in STAGES:
        fields = [f for f in stage.fields if not f.startswith("train.dictionary")]
        payload = {"fields": {f: (data[f] if "." not in f else data[f.split(".")[0]][f.split(".")[1]]) for f in fields},
                   "upstream": {u: old[u] for u in stage.upstream}, "format": RUN_FORMAT}
        old[stage.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprints(tiny_cfg) == old
    changed = fingerprints(load_config(dump_config(tiny_cfg), {"train.dictionary": "x"}))
    assert changed["cache"] != old["cache"] and changed["train"] != old["train"]


def test_a_second_run_skips_every_stage(finished, tiny_cfg):
    before = (_records(finished), _db_state(finished))
    run(tiny_cfg, finished, progress=False)
    assert (_records(finished), _db_state(finished)) == before
    assert RunFolder(finished).log.read_text().count("done already") == len(STAGE_NAMES)


def test_a_changed_field_is_refused_then_redoes_only_its_dependants(finished, tiny_cfg, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    before_recs, before_db = _records(root), _db_state(root)
    changed = load_config(dump_config(tiny_cfg), {"explain.llm_features": 3})
    with pytest.raises(RunError, match=r"changed: explain.llm_features\); it would redo the finished stages "
                                       r"explain, score, report"):
        run(changed, root, progress=False)
    assert _records(root) == before_recs and load_config(RunFolder(root).config) == tiny_cfg  # nothing changed
    run(changed, root, update=True, progress=False)
    after = _records(root)
    for s in ("cache", "train", "evaluate", "examples"):
        assert after[s] == before_recs[s]
    for s in ("explain", "score"):
        assert after[s]["fingerprint"] != before_recs[s]["fingerprint"]
    db = _db_state(root)
    assert db["features"] == before_db["features"] and db["examples"] == before_db["examples"]
    assert sum(e[1] == "token-activation" for e in db["explanations"]) == 3
    assert stage_status(root) == {s: "done" for s in STAGE_NAMES}
    # a device change redoes nothing: it is in no fingerprint
    assert fingerprints(load_config(dump_config(changed), {"device": "cuda", "threads": 1})) == fingerprints(changed)


def test_from_stage_redoes_that_stage_and_later_ones(finished, tiny_cfg, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    before = _records(root)
    run(tiny_cfg, root, from_stage="score", progress=False)
    after = _records(root)
    assert all(after[s] == before[s] for s in STAGE_NAMES[:STAGE_NAMES.index("score")])
    log = RunFolder(root).log.read_text().split("clearing the output")
    assert len(log) == 3  # score and report cleared and redone
    assert _db_state(root) == _db_state(finished)


def test_foreign_and_future_folders_are_refused(tiny_cfg, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not an autointerp run folder"):
        run(tiny_cfg, foreign, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    future = tmp_path / "future"
    (future / "stages").mkdir(parents=True)
    (future / "config.yaml").write_text(dump_config(tiny_cfg))
    (future / "stages" / "run.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(RunError, match="format 99"):
        run(tiny_cfg, future, progress=False)
    with pytest.raises(RunError, match="unknown stage"):
        run(tiny_cfg, tmp_path / "new", from_stage="explian", progress=False)


def _start(config: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*AUTOINTERP, "run", str(config), "--out", str(root)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_9_in_every_stage_then_resume_loses_and_duplicates_nothing(finished, tiny_cfg, tmp_path):
    """Start the job, SIGKILL it as soon as stage S has started, start it again; S = each stage in turn.
    The final run folder must equal an uninterrupted run's."""
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_config(tiny_cfg))
    root = tmp_path / "killed"
    rf = RunFolder(root)
    killed_inside = []
    for stage in STAGE_NAMES:
        proc = _start(config, root)
        deadline = time.time() + 300
        while not rf.stage_record(f"{stage}.started").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        inside = not rf.stage_record(stage).exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()
        killed_inside.append(stage) if inside else None
    proc = _start(config, root)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    # the kills landed inside most stages (the fast ones may finish within the 50 ms)
    assert len(killed_inside) >= 4, killed_inside
    assert stage_status(root) == {s: "done" for s in STAGE_NAMES}
    ref, got = _weights(finished), _weights(root)
    assert ref.keys() == got.keys() and all((ref[k] == got[k]).all() for k in ref)
    assert _db_state(root) == _db_state(finished)
    manifest = json.loads((rf.activations / "blocks.2.hook_out" / "manifest.json").read_text())
    ref_manifest = json.loads((RunFolder(finished).activations / "blocks.2.hook_out" / "manifest.json").read_text())
    assert manifest["shards"] == ref_manifest["shards"]


def test_a_run_leaves_the_logger_level_as_it_was(tmp_path, tiny_model_dir, text_corpus):
    """run.log needs INFO records while the run lasts; afterwards the autointerp logger's level
    is restored (it once stayed at INFO and hid DEBUG records from every later caller)."""
    import logging

    from helpers import tiny_run_config

    from autointerp.config import load_config
    from autointerp.pipeline import run

    logger = logging.getLogger("autointerp")
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        run(load_config(tiny_run_config(tiny_model_dir, text_corpus), []), tmp_path / "r", until="cache",
            progress=False)
        assert logger.level == logging.WARNING
        assert "stage cache" in (tmp_path / "r" / "run.log").read_text()
    finally:
        logger.setLevel(before)


def test_an_explain_deadline_leaves_the_stage_unfinished_and_the_next_run_redoes_only_its_timeouts(
        finished, tiny_cfg, tmp_path):
    """A stalling endpoint cannot hang `autointerp run`: past ``explain.client.deadline_s`` the stage
    stops with a clear error, its requests that did not finish stored as ``timeout``; the next run
    resumes the stage and asks the endpoint for exactly those."""
    import dataclasses
    import shutil

    from fake_openai_server import FakeOpenAIServer, Reply

    from autointerp.featuredb import FeatureDB

    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    with FakeOpenAIServer(default=Reply("stall", stall_s=5.0), answer="EXPLANATION: letters") as server:
        client = dataclasses.replace(tiny_cfg.explain.client, endpoint=server.base_url, endpoint_model="fake",
                                     timeout_s=30.0, retries=2, deadline_s=1.0)
        cfg = dataclasses.replace(tiny_cfg, explain=dataclasses.replace(tiny_cfg.explain, client=client))
        t0 = time.monotonic()
        with pytest.raises(RunError, match="deadline of 1s passed"):
            run(cfg, root, update=True, progress=False)
        assert time.monotonic() - t0 < 60
        assert not RunFolder(root).stage_record("explain").exists()
        with FeatureDB(RunFolder(root).db) as db:
            timed_out = [r for r in db.explanations() if r["explainer"] == "token-activation"]
        assert timed_out and all(r["status"] == "timeout" for r in timed_out)
        server.default = Reply("good")
        asked = len(server.requests)
        run(cfg, root, progress=False)  # the same config: the unfinished stage resumes
        # the probe's requests (structured answers) and exactly one per timed-out row
        explain_asks = [r for r in server.requests[asked:] if "response_format" not in (r.body or {})]
        assert len(explain_asks) == len(timed_out)
    assert RunFolder(root).stage_record(LAST).exists()
    with FeatureDB(RunFolder(root).db) as db:
        rows = [r for r in db.explanations() if r["explainer"] == "token-activation"]
    assert len(rows) == len(timed_out) and all(r["status"] == "ok" and r["text"] == "letters" for r in rows)
