"""Attribution graphs: completeness of the attributions, pruning, the ablation check, JSON, the
figure fragment's escaping, bad input, the CLI, and one graph on the real embedded model."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import dictionaries as dl
from autointerp.circuits import (COMPLETENESS_TOL, CircuitError, circuit, circuit_figure, circuit_fragment_html,
                                 load_circuit)
from autointerp.circuits import cli as circuit_cli
from autointerp.data import ContextConfig, ExclusionRules
from autointerp.examples import LatentRecord
from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder

SAE = "blocks.0.hook_out"
TRANSCODER = "blocks.2.mlp.hook_out"
HOSTILE = "<script>alert(1)</script>"
PROMPT = "def add(x, y): return x + y"


def write_dictionary(run: RunFolder, model, inp: str, out: str, n_latents: int = 32, k: int = 4, seed: int = 0,
                     ctx_len: int = 32, plant=None) -> dl.Dictionary:
    """A random TopK dictionary (random biases too, so the bias terms are tested) with the
    provenance ``autointerp train`` writes, at ``RUN/dictionaries/<out>``."""
    torch.manual_seed(seed)
    d = dl.build(dl.DictionaryConfig(arch="topk", d_in=model.d_model, n_latents=n_latents, k=k))
    with torch.no_grad():
        d.b_enc.normal_(0, 0.1)
        d.b_dec.normal_(0, 0.1)
        if plant is not None:
            plant(d)
    folder = run.dictionaries / out
    dl.save(d, folder)
    prov = {"input_hookpoint": inp, "target_hookpoint": out, "model": {"spec": str(model.source), "dtype": "float32"},
            "context": ContextConfig(ctx_len=ctx_len, exclude=ExclusionRules(first_positions=1)).to_dict()}
    (folder / "autointerp.json").write_text(json.dumps(prov))
    return d


@pytest.fixture
def run(tmp_path, tiny_model) -> RunFolder:
    """Two dictionaries: an SAE on the residual stream after block 0 and a transcoder of block 2's
    MLP; features.db lists two latents of the transcoder, one with a hostile explanation."""
    run = RunFolder(tmp_path / "run")
    write_dictionary(run, tiny_model, SAE, SAE, seed=0)
    write_dictionary(run, tiny_model, "blocks.2.mlp.hook_in", TRANSCODER, seed=1)
    with FeatureDB(run.db) as db:
        ids = db.put_features(TRANSCODER, [LatentRecord(latent=f, density=0.1, max_activation=1.0) for f in (3, 5)])
        db.put_explanation(ids[3], "top", "m", "ok", text=HOSTILE)
    return run


def _logit_target(model, prompt: str, token_id: int) -> float:
    """The mean-centred logit of the plain transformers model (no hooks, no dictionaries)."""
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model.hf_model(torch.tensor([[model.tokenizer.bos_token_id, *ids]])).logits[0, -1]
    return float(logits[token_id] - logits.mean())


@pytest.mark.parametrize("target", ["logit: x", f"feature:{TRANSCODER}/latent=3", f"feature:{SAE}/latent=7"])
def test_attributions_sum_to_the_target(run, tiny_model, target):
    g = circuit(run.root, PROMPT, target, model=tiny_model, save=False)
    comp = g["completeness"]
    # target = bias + sum of direct attributions, for the target and for every feature node
    assert comp["relative_error"] < COMPLETENESS_TOL and comp["max_node_relative_error"] < COMPLETENESS_TOL
    assert comp["bias"] + comp["attribution_sum"] == pytest.approx(comp["target_value"], rel=1e-3, abs=1e-5)
    assert comp["bias"] != 0.0  # the random biases reach the target
    # the linearised replacement model reproduces the real model at the operating point
    assert comp["linear_value"] == pytest.approx(comp["target_value"], rel=1e-4, abs=1e-5)
    if target.startswith("logit"):
        assert comp["target_value"] == pytest.approx(_logit_target(tiny_model, PROMPT, g["target"]["token_id"]),
                                                     rel=1e-4, abs=1e-5)
        assert {d["name"] for d in g["dictionaries"]} == {SAE, TRANSCODER}
    if target.endswith(f"{SAE}/latent=7"):  # nothing upstream of the first dictionary but the inputs,
        # so the causal check ablates input tokens (it used to record "nothing to ablate", k = 0)
        assert {n["kind"] for n in g["nodes"]} <= {"input", "target"}
        assert g["ablation"]["nodes"] == "input"
    kinds = {n["kind"] for n in g["nodes"]}
    assert "input" in kinds and "target" in kinds
    # the first position (attention sink) is never encoded: only an error node there
    assert not [n for n in g["nodes"] if n["kind"] == "feature" and n["position"] == 0]


@pytest.mark.parametrize("share", [0.5, 0.8, 1.0])
def test_pruning_keeps_the_stated_share(run, tiny_model, share):
    g = circuit(run.root, PROMPT, "logit: x", model=tiny_model, save=False, node_share=share)
    pr = g["pruning"]
    kept = sum(n["influence"] for n in g["nodes"] if n["kind"] in ("feature", "error"))
    assert kept / pr["influence_total"] >= share - 1e-9
    assert pr["kept_share"] == pytest.approx(kept / pr["influence_total"])
    ids = {n["id"] for n in g["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in g["edges"])
    assert sum(n["kind"] == "input" for n in g["nodes"]) == len(g["tokens"])  # inputs always kept
    if share < 1.0:
        assert pr["nodes_kept"] < pr["nodes_total"]


def test_smaller_share_keeps_fewer_nodes(run, tiny_model):
    sizes = [circuit(run.root, PROMPT, "logit: x", model=tiny_model, save=False, node_share=s,
                     ablate_k=0)["pruning"]["nodes_kept"] for s in (0.3, 0.9)]
    assert sizes[0] < sizes[1]


def test_ablation_check_on_a_planted_feature(tmp_path, tiny_model):
    """Latent 0 of the SAE fires at every position with a decoder row 50x the others: it carries
    the circuit, so ablating the top nodes moves the target far more than random nodes do."""
    def plant(d):
        d.b_enc[0] = 100.0
        d.W_dec.mul_(0.02)
        d.W_dec[0] = torch.randn(d.cfg.d_out) * 3.0

    run = RunFolder(tmp_path / "run")
    write_dictionary(run, tiny_model, "blocks.1.hook_out", "blocks.1.hook_out", plant=plant)
    g = circuit(run.root, PROMPT, "logit: x", model=tiny_model, ablate_k=3, ablate_draws=6)
    abl = g["ablation"]
    assert abl["k"] == 3 and len(abl["delta_random"]) == 6
    assert abl["baseline"] == pytest.approx(abl["clean_target"], rel=1e-4, abs=1e-5)  # splice is exact
    assert any(node.endswith("/0") for node in abl["top_nodes"])
    assert abl["passed"] and abl["abs_delta_top"] > 2 * abl["mean_abs_delta_random"]
    assert abl["ratio"] == pytest.approx(abl["abs_delta_top"] / abl["mean_abs_delta_random"])


def test_ablation_numbers_are_recorded(run, tiny_model):
    abl = circuit(run.root, PROMPT, "logit: x", model=tiny_model, save=False, ablate_k=4, ablate_draws=3)["ablation"]
    assert abl["k"] == 4 and len(abl["top_nodes"]) == 4 and len(abl["delta_random"]) == 3
    assert abl["passed"] == (abl["abs_delta_top"] > abl["mean_abs_delta_random"])
    # with feature nodes upstream the features are ablated; the input check is recorded beside
    assert abl["nodes"] == "feature" and all(n.startswith("feature/") for n in abl["top_nodes"])
    inp = abl["inputs"]
    assert inp["nodes"] == "input" and 1 <= inp["k"] <= 4 and len(inp["delta_random"]) == 3
    assert inp["passed"] == (inp["abs_delta_top"] > inp["mean_abs_delta_random"])
    # random sets are drawn outside the top set, k nodes each, from the rest of the candidates
    for rec in (abl, inp):
        assert len(rec["random_nodes"]) == len(rec["delta_random"])
        assert rec["random_pool"] == rec["candidates"] - rec["k"] >= rec["k"]
        for chosen in rec["random_nodes"]:
            assert len(set(chosen)) == rec["k"] and not set(chosen) & set(rec["top_nodes"])


def _finite(abl: dict) -> bool:
    nums = [abl["baseline"], abl["clean_target"], abl["delta_top"], abl["abs_delta_top"],
            abl["mean_abs_delta_random"], *abl["delta_random"]]
    return all(math.isfinite(x) for x in nums) and (abl["ratio"] is None or math.isfinite(abl["ratio"]))


def test_input_ablation_without_upstream_features(tmp_path, tiny_model):
    """A single dictionary: its feature's only upstream nodes are the input tokens (and no error
    node), so the check ablates input tokens (mean-token ablation) instead of recording nothing."""
    run = RunFolder(tmp_path / "run")
    write_dictionary(run, tiny_model, "blocks.2.hook_out", "blocks.2.hook_out")
    g = circuit(run.root, PROMPT, "feature:blocks.2.hook_out/latent=7", position=-1, model=tiny_model, save=False,
                ablate_k=3, ablate_draws=4)
    abl, t = g["ablation"], g["target"]["position"]
    assert not [n for n in g["nodes"] if n["kind"] == "feature"]
    assert abl["nodes"] == "input" and abl["k"] >= 1 and len(abl["delta_random"]) == 4
    assert isinstance(abl["passed"], bool) and _finite(abl)
    assert abl["baseline"] == pytest.approx(abl["clean_target"], abs=1e-5)
    # never BOS (excluded by the cache), never a token after the target's position
    positions = [int(n.split("/")[1]) for n in abl["top_nodes"]]
    assert all(1 <= p <= t for p in positions) and abl["candidates"] == t
    json.dumps(g, allow_nan=False)


def test_input_ablation_on_a_planted_token(tmp_path, tiny_model):
    """Latent 0 of an SAE after block 0 reads the embedding direction of one token (50x): that
    token drives the target, so ablating the top input moves it far more than random inputs."""
    tok = tiny_model.tokenizer
    ids = [tok.bos_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"]]
    t = max(p for p in range(1, len(ids)) if ids.count(ids[p]) == 1)  # the last token seen once
    e = tiny_model.hf_model.get_input_embeddings().weight.detach()[ids[t]].to(torch.float32)

    def plant(d):
        d.W_enc[:, 0] = 50.0 * e / e.norm()

    run = RunFolder(tmp_path / "run")
    write_dictionary(run, tiny_model, SAE, SAE, plant=plant)
    g = circuit(run.root, PROMPT, f"feature:{SAE}/latent=0", position=t, model=tiny_model, save=False,
                ablate_k=2, ablate_draws=8)
    abl = g["ablation"]
    assert abl["nodes"] == "input" and abl["k"] == 2 and _finite(abl)
    assert abl["baseline"] == pytest.approx(abl["clean_target"], abs=1e-5)  # ablating nothing: the clean target
    assert abl["top_nodes"][0] == f"input/{t}"
    assert abl["passed"] is True and abl["abs_delta_top"] > 1.5 * abl["mean_abs_delta_random"]


def test_json_round_trip_and_labels(run, tiny_model, tmp_path):
    fid = FeatureDB(run.db).feature_id(TRANSCODER, 3)
    g = circuit(run.root, PROMPT, f"feature:{TRANSCODER}/{fid}", model=tiny_model)
    assert g["path"].startswith(str(run.root / "circuits")) and g["path"].endswith(".json")
    assert load_circuit(g["path"]) == json.loads(json.dumps(g))
    assert g["target"]["latent"] == 3 and g["target"]["feature_id"] == fid
    assert g["tokens"][0] == tiny_model.tokenizer.bos_token and "".join(g["tokens"][1:]) == PROMPT
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": []}')
    with pytest.raises(CircuitError, match="not a circuit"):
        load_circuit(bad)


def test_fragment_escapes_hostile_text(run, tiny_model):
    g = circuit(run.root, f"x = '{HOSTILE}'", "logit: x", model=tiny_model, save=False, node_share=1.0)
    for n in g["nodes"]:
        if n["kind"] == "feature":
            n["explanation"] = HOSTILE
    g["target"]["label"] = HOSTILE
    html = circuit_fragment_html(g, plotly_src="../assets/plotly.min.js")
    assert "<script>alert" not in html and "</script>alert" not in html
    # the only script elements: plotly's (local), the JSON data block and the drawing script
    assert html.count("<script") == 3 and 'src="../assets/plotly.min.js"' in html and "cdn" not in html.lower()
    assert "&lt;script&gt;" in html or "\\u003cscript" in html
    import plotly.graph_objects as go

    fig = go.Figure(circuit_figure(g))  # a valid plotly figure (plotly validates every property)
    assert {t.name for t in fig.data if t.mode == "markers"} == {"input", "error", "feature", "target"}


@pytest.mark.parametrize("target, message", [
    ("feature:nope/3", "unknown dictionary 'nope'"),
    (f"feature:{TRANSCODER}/latent=32", "latent 32 out of range"),
    (f"feature:{TRANSCODER}/999", "no feature 999"),
    (f"feature:{SAE}/1", "no feature 1 of dictionary"),
    ("logit: hello world again", "unknown token"),
    ("logit:", "without a token"),
    ("neuron:3", "bad target"),
])
def test_bad_targets(run, tiny_model, target, message):
    with pytest.raises(CircuitError, match=message):
        circuit(run.root, PROMPT, target, model=tiny_model, save=False)


def test_bad_prompts(run, tiny_model, tmp_path):
    with pytest.raises(CircuitError, match="longer than the dictionaries' context length of 32"):
        circuit(run.root, " ".join(["word"] * 40), "logit: x", model=tiny_model)
    with pytest.raises(CircuitError, match="empty prompt"):
        circuit(run.root, "  ", "logit: x", model=tiny_model)
    with pytest.raises(CircuitError, match="has no dictionary"):
        circuit(tmp_path / "empty", PROMPT, "logit: x", model=tiny_model)


def test_cli(run, tiny_model, capsys, monkeypatch):
    import autointerp.search as search

    monkeypatch.setattr(search, "_load_model", lambda spec, dtype, device: tiny_model)
    p = argparse.ArgumentParser()
    circuit_cli.configure(p)
    assert circuit_cli.main(p.parse_args([str(run.root), "--prompt", PROMPT, "--target", "logit: x"])) == 0
    out = capsys.readouterr().out
    assert "completeness" in out and "ablation check" in out and "written to" in out
    assert circuit_cli.main(p.parse_args([str(run.root), "--prompt", PROMPT, "--target", "feature:x/1"])) == 2
    assert "unknown dictionary 'x'" in capsys.readouterr().err


@pytest.mark.real_model
def test_real_model_circuit(tmp_path, real_model):
    run = RunFolder(tmp_path / "run")
    write_dictionary(run, real_model, "blocks.3.hook_out", "blocks.3.hook_out", n_latents=1024, k=8, ctx_len=128)
    g = circuit(run.root, "The capital of France is", "logit: Paris", model=real_model, ablate_draws=4)
    comp = g["completeness"]
    assert comp["relative_error"] < COMPLETENESS_TOL and comp["max_node_relative_error"] < COMPLETENESS_TOL
    assert comp["target_value"] == pytest.approx(_logit_target(real_model, "The capital of France is",
                                                               g["target"]["token_id"]), rel=1e-3, abs=1e-3)
    assert g["ablation"]["k"] == 5 and load_circuit(g["path"])["prompt"] == "The capital of France is"


def test_markup_prompts_keep_chat_special_tokens(tokenizer_dir):
    from transformers import AutoTokenizer

    from autointerp.circuits.targets import tokenize_prompt

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    context = {"prepend_bos": True, "ctx_len": 64}
    text = "<|im_start|>user\nhello<|im_end|>"
    start = tok.convert_tokens_to_ids("<|im_start|>")
    plain = tokenize_prompt(tok, text, context).tolist()
    markup = tokenize_prompt(tok, text, context, markup=True).tolist()
    assert plain[0] == start and start not in plain[1:]  # only the BOS: the text's markup was split
    assert markup[:2] == [start, start] and len(markup) < len(plain)
