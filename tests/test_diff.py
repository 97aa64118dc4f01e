"""Model diffing on a tiny model pair with one planted change."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import make_tiny_model, run_cli, tiny_run_config, write_word_corpus

import dictionaries as dl
from autointerp.config import load_config
from autointerp.diff import TOP_JUMPS, DiffError, context_peaks, diff_run, format_diff, paired_stats, ranking
from autointerp.featuredb import FeatureDB
from autointerp.pipeline import run as run_pipeline
from autointerp.runfolder import RunFolder

PLANTED_WORD = " gamma"


def _plant(base_dir, tuned_dir, tokenizer_dir):
    """The fine-tuned model: the base model whose embedding of one word carries a strong extra
    direction ``v`` (the "new behaviour"), everything else unchanged. Returns (v, token id)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    (tid,) = tok(PLANTED_WORD, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(model.config.hidden_size, generator=g)
    v = v / v.norm()
    with torch.no_grad():
        model.get_input_embeddings().weight[tid] += 40 * v
    model.save_pretrained(tuned_dir, safe_serialization=True)
    tok.save_pretrained(tuned_dir)
    return tid


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_dir, tokenizer_dir):
    root = tmp_path_factory.mktemp("diff")
    tuned = root / "tuned"
    tid = _plant(tiny_model_dir, tuned, tokenizer_dir)
    corpus = write_word_corpus(root / "corpus")
    cfg = load_config(tiny_run_config(tuned, corpus), [])
    run_dir = root / "run"
    run_pipeline(cfg, run_dir, until="examples", progress=False)
    # the dictionary gets one latent (0) that reads the planted direction: it fires where the
    # tuned model's activation differs from the base model's along it
    ddir = next(p for p in RunFolder(run_dir).dictionaries.iterdir() if (p / "cfg.json").is_file())
    return {"root": root, "base": tiny_model_dir, "tuned": tuned, "run": run_dir, "ddir": ddir, "tid": tid,
            "corpus": corpus, "cfg": cfg}


def _planted_latent(pair) -> int:
    """Point latent 0 at the mean activation difference (tuned - base) on the planted word."""
    from autointerp.activations import iter_shards
    from autointerp.models import capture, load_model

    base = load_model(str(pair["base"]))
    prov = json.loads((pair["ddir"] / "autointerp.json").read_text())
    hook = prov["input_hookpoint"]
    shard = next(iter_shards(prov["caches"][hook]["folder"]))
    ctx, pos = shard["ctx"].long(), shard["ctx_pos"].long()
    at = shard["token_ids"].long() == pair["tid"]
    assert at.sum() > 5
    xb = capture(base, shard["contexts"].long(), [hook])[hook][ctx, pos]
    delta = (shard["activations"].float() - xb)[at].mean(0)
    d = dl.load(pair["ddir"])
    with torch.no_grad():
        u = delta / delta.norm()
        d.W_enc[:, 0] = u * 10
        d.b_enc[0] = -10 * 0.5 * float(delta.norm())  # fires beyond half the planted shift
        d.W_dec[0] = u / 5  # z ~ 5 |delta| at the planted word: decodes to ~delta
    dl.save(d, pair["ddir"])
    return 0


def test_ranking_statistics():
    # 0: a new feature (small but certain), 1: unchanged, 2: a large shift of a common feature
    # (|z| above 0's, |effect| below), 3: churn without a net change, 4: a switched-off feature
    # below the threshold, 5: not significant but with the largest |z| of the rest
    n_new = np.array([40, 0, 3000, 5, 0, 10])
    n_lost = np.array([0, 0, 1000, 5, 9, 0])
    fb = np.array([0, 10, 50000, 50, 9, 90])
    ft = np.array([40, 10, 52000, 50, 0, 100])
    z, effect = paired_stats(n_new, n_lost, fb, ft)
    stats = {"z": z, "effect": effect, "n_jump": np.zeros(6, dtype=int)}
    order = ranking(stats, z_min=5.0, rank_by="frequency")
    assert list(ranking(stats, z_min=5.0, rank_by="tail")) == list(order)  # no jumps: the same order
    assert z[0] == pytest.approx(40 / np.sqrt(41)) and z[2] == pytest.approx(2000 / np.sqrt(4001))
    assert effect[0] == 1.0 and effect[1] == 0.0 and effect[4] == -1.0
    assert effect[2] == pytest.approx(2000 / 52000)
    assert z[2] > z[0] >= 5  # both significant: |effect| orders them, not |z|
    assert list(order[:2]) == [0, 2]
    assert list(order[2:4]) == [5, 4]  # the rest by |z|: 10/sqrt(11) > 9/sqrt(10)
    assert z[1] == 0 and z[3] == 0
    # the tail ranking puts context-level jumps first, whatever the token z: 3 (churn, z 0) jumps in
    # 7 contexts, 1 (unchanged tokens) in 2
    stats["n_jump"] = np.array([0, 2, 0, 7, 0, 0])
    assert list(ranking(stats, z_min=5.0)[:4]) == [3, 1, 0, 2]
    with pytest.raises(DiffError, match="unknown ranking 'nope'"):
        ranking(stats, z_min=5.0, rank_by="nope")


def test_context_peaks():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.5], [0.0, 2.0], [0.25, 0.125]])
    ctx = torch.tensor([0, 0, 2, 2])
    peaks = context_peaks(z, ctx, 3)
    assert peaks.tolist() == [[3.0, 0.5], [0.0, 0.0], [0.25, 2.0]]


def test_planted_change_ranks_first_and_identical_models_show_nothing(pair):
    latent = _planted_latent(pair)
    res = diff_run(pair["run"], str(pair["base"]), progress=False)
    top = res.rows[0]
    assert top["latent"] == latent and top["rank"] == 1
    assert top["significant"] and top["effect"] > 0.9 and top["freq_base"] < top["freq_tuned"]
    assert top["n_new"] > 5 and top["n_lost"] == 0
    # the base model never fires it: every context with the planted word is a jump (up to TOP_JUMPS)
    assert 5 < top["n_jump"] <= TOP_JUMPS and top["max_jump"] > 0
    assert res.tokens > 1000
    assert 0 <= res.fvu_tuned < res.fvu_base  # the dictionary fits the model it was trained on better
    assert len(res.rows) == dl.load(pair["ddir"]).cfg.n_latents
    assert "rank" in format_diff(res)
    with FeatureDB(RunFolder(pair["run"]).db) as db:
        rows = db.diffs(base=str(pair["base"]))
    assert rows[0]["latent"] == latent and rows[0]["rank"] == 1 and len(rows) == len(res.rows)
    saved = json.loads((pair["run"] / "diff.json").read_text())
    assert saved["top"][0]["latent"] == latent and saved["base"] == str(pair["base"])

    # re-running the same diff replaces its rows, never duplicates them
    again = diff_run(pair["run"], str(pair["base"]), progress=False)
    assert [r["latent"] for r in again.rows] == [r["latent"] for r in res.rows]
    with FeatureDB(RunFolder(pair["run"]).db) as db:
        assert len(db.diffs(base=str(pair["base"]))) == len(res.rows)

    # the same model on both sides (recomputed with the cache's batch size: bit for bit the cached
    # activations): no latent changes, nothing is significant
    same = diff_run(pair["run"], str(pair["tuned"]), progress=False)
    assert same.n_significant == 0
    assert all(r["n_new"] == 0 and r["n_lost"] == 0 and r["n_jump"] == 0 and r["max_jump"] == 0
               for r in same.rows)
    with FeatureDB(RunFolder(pair["run"]).db) as db:  # another base model: its own rows
        assert len(db.diffs()) == 2 * len(res.rows)


def test_base_activations_from_a_base_run(pair):
    """A run of the base model on the same corpus gives the base activations: the same diff as
    recomputing them, without loading the base model; a run of other contexts is refused."""
    _planted_latent(pair)
    base_cfg = load_config(tiny_run_config(pair["base"], pair["corpus"]), [])
    base_run = pair["root"] / "base_run"
    if not base_run.exists():
        run_pipeline(base_cfg, base_run, until="train", progress=False)
    recomputed = diff_run(pair["run"], str(pair["base"]), progress=False)
    cached = diff_run(pair["run"], base_run=base_run, progress=False)
    assert cached.base == str(pair["base"])
    keys = ("latent", "n_new", "n_lost", "n_jump", "max_jump", "max_base", "significant")
    assert [[r[k] for k in keys] for r in cached.rows] == [[r[k] for k in keys] for r in recomputed.rows]
    assert json.loads((pair["run"] / "diff.json").read_text())["base_run"] == str(base_run)
    with pytest.raises(DiffError, match="not the model of the base run"):
        diff_run(pair["run"], str(pair["tuned"]), base_run=base_run, progress=False)
    other_corpus = write_word_corpus(pair["root"] / "corpus2", n_docs=5, words_per_doc=300)
    other_run = pair["root"] / "other_run"
    if not other_run.exists():
        run_pipeline(load_config(tiny_run_config(pair["base"], other_corpus), []), other_run, until="train",
                     progress=False)
    with pytest.raises(DiffError, match="differs from the fine-tuned run's"):
        diff_run(pair["run"], base_run=other_run, progress=False)
    with pytest.raises(DiffError, match="name the base model"):
        diff_run(pair["run"], progress=False)


def test_counterparts_from_a_base_dictionary(pair, tmp_path):
    _planted_latent(pair)
    other = tmp_path / "base_dict"
    shutil.copytree(pair["ddir"], other)
    d = dl.load(other)
    with torch.no_grad():  # the base dictionary has nothing along the planted direction
        u = torch.nn.functional.normalize(d.W_dec[0], dim=0)
        d.W_dec -= torch.outer(d.W_dec @ u, u)
        d.W_dec[0] = torch.randn_like(d.W_dec[0])
        d.W_dec[0] -= (d.W_dec[0] @ u) * u
    dl.save(d, other)
    res = diff_run(pair["run"], str(pair["base"]), base_dictionary=other, progress=False)
    cos = {r["latent"]: r["counterpart_cos"] for r in res.rows}
    assert cos[0] < 0.5
    assert np.median([c for j, c in cos.items() if j != 0]) > 0.9


def test_incompatible_models_are_refused(pair, tmp_path, tokenizer_dir):
    other = make_tiny_model(tmp_path / "deeper", tokenizer_dir, n_layers=6)
    with pytest.raises(DiffError, match="num_hidden_layers"):
        diff_run(pair["run"], str(other), progress=False)
    with pytest.raises(DiffError, match="no dictionary 'nope'"):
        diff_run(pair["run"], str(pair["base"]), dictionary="nope", progress=False)
    with pytest.raises(DiffError, match="no trained dictionary"):
        diff_run(tmp_path, str(pair["base"]), progress=False)


def test_diff_command(pair):
    _planted_latent(pair)
    proc = run_cli("diff", str(pair["run"]), "--base", str(pair["base"]), "--top", "3")
    assert "FVU on base activations" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("1 ")]
    assert lines and lines[0].split()[1] == "0"
    bad = run_cli("diff", str(pair["run"]), "--base", str(pair["root"] / "missing"), check=False)
    assert bad.returncode != 0 and "not found" in bad.stderr
