"""The command line: help of every command, hookpoints listing, and the demo on the real model."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from autointerp.activations import iter_shards, read_manifest
from autointerp.cli import _COMMANDS, build_parser
from helpers import REPO, plain_hidden_states, run_cli


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_help_of_every_command(name):
    proc = run_cli(name, "--help")
    assert proc.stdout.startswith("usage: autointerp " + name)
    assert _COMMANDS[name][1].__doc__.strip().splitlines()[0] in " ".join(proc.stdout.split())


def test_unknown_command_fails():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["frobnicate"])


def test_hookpoints_lists_names_with_shapes(tiny_model_dir):
    out = run_cli("hookpoints", "--model", str(tiny_model_dir), "--filter", "blocks.2.").stdout
    assert "blocks.2.hook_out" in out and "[1, 4, 64]" in out
    assert "blocks.1." not in out


@pytest.mark.real_model
@pytest.mark.slow
def test_demo_runs_every_stage_on_the_real_model(tmp_path, real_model):
    """`make demo` with a small budget: every stage of `autointerp run` on SmolLM2-135M, from the
    cached activations (checked against plain transformers) to the report."""
    overrides = ("--cache.tokens 4000 --cache.shard_contexts 16 --train.heldout_tokens 1000 --train.latents 256 "
                 "--train.batch_size 256 --evaluate.contexts 4 --explain.features 20 --explain.llm_features 2 "
                 "--explain.concurrency 2")
    proc = subprocess.run(["make", "-s", "demo", f"DEMO_OUT={tmp_path}", f"DEMO_ARGS={overrides}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "features alive" in last and "FVU" in last and "CE recovered" in last and "embedding median" in last
    assert str(tmp_path / "report.html") in last and (tmp_path / "report.html").exists()
    folder = tmp_path / "activations" / "blocks.15.hook_out"
    m = read_manifest(folder)
    assert (m["tokens"], m["d"], m["model"]["spec"]) == (4000, 576, "smollm2-135m")
    shard = next(iter_shards(folder))
    ctx = shard["contexts"][:2].long()
    hidden = plain_hidden_states(real_model.source, ctx)[16]
    first = shard["ctx"] < 2
    expected = hidden[shard["ctx"][first].long(), shard["ctx_pos"][first].long()]
    assert (expected - shard["activations"][first]).abs().max() < 1e-4
    # attention sinks are gone: no kept token has a residual norm far above the rest
    norms = shard["activations"].norm(dim=-1)
    assert norms.max() < 5 * norms.median()
    evaluation = json.loads((tmp_path / "dictionaries" / "blocks.15.hook_out" / "metrics.json").read_text())["evaluation"]
    assert 0 < evaluation["fvu"] < 1 and evaluation["l0"] <= 32 and "ce_recovered_zero" in evaluation
    with sqlite3.connect(tmp_path / "features.db") as con:
        by = dict(con.execute("SELECT explainer, COUNT(*) FROM explanations GROUP BY explainer").fetchall())
        assert by == {"token-enrichment": 20, "token-activation": 2}  # the embedded model's: ok or a failure status
        controls = {c for (c,) in con.execute("SELECT DISTINCT control FROM scores WHERE status = 'ok'")}
        assert controls == {"none", "random_explanation", "baseline"}
        pages = len(list((tmp_path / "features").glob("*.html")))
        assert pages == con.execute("SELECT COUNT(DISTINCT feature_id) FROM explanations").fetchone()[0]


def test_search_and_report_refuse_a_folder_without_features(tmp_path):
    for args in (("search", str(tmp_path), "imports"), ("report", str(tmp_path))):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2 and "features.db" in proc.stderr
    assert not (tmp_path / "features.db").exists()
