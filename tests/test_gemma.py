"""The second model family, Gemma 3: what differs from Llama, each proven on a tiny random Gemma 3
(Gemma's 262,144-row vocabulary; the SmolLM2 tokenizer's ids, so that `make test` needs no Gemma
download), and the embedded Gemma 3 270M end to end (marked slow: `make test-slow` fetches it).

* scaled input embeddings (``sqrt(d) * E[t]``, inside the embedding module): the cached
  ``blocks.0.hook_in`` is the scaled embedding, and the trigger search's ``inputs_embeds`` path
  gives the model's own logits;
* sliding-window layers (every layer but the last attends to the last ``W`` tokens): cached
  activations equal the plain forward on contexts longer than the window, and the KV-cached
  answers of the behaviour diff equal ``generate``;
* final logit soft-capping (Gemma 2's ``c * tanh(z / c)``; Gemma 3 has none, set here to prove the
  path): the flag probes' log-probabilities equal the model's own;
* a 262k vocabulary: the behaviour diff's KL over it is 0 between equal models.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from autointerp.activations import CacheConfig, cache_activations, iter_shards
from autointerp.data import ContextConfig
from helpers import make_tiny_gemma, plain_hidden_states, run_cli

WINDOW = 4


@pytest.fixture(scope="module")
def gemma_tokenizer_dir(tokenizer_dir):
    return tokenizer_dir


@pytest.fixture(scope="module")
def tiny_gemma_dir(tmp_path_factory, gemma_tokenizer_dir):
    return make_tiny_gemma(tmp_path_factory.mktemp("gemma") / "model", gemma_tokenizer_dir, sliding_window=WINDOW,
                           softcap=5.0)


@pytest.fixture(scope="module")
def tiny_gemma(tiny_gemma_dir):
    from autointerp.models import load_model

    return load_model(str(tiny_gemma_dir))


def test_cached_activations_equal_the_plain_forward_beyond_the_window(tiny_gemma, tiny_gemma_dir, text_corpus,
                                                                       tmp_path, gemma_tokenizer_dir):
    hps = ["blocks.0.hook_in", "blocks.2.hook_out"]
    cfg = CacheConfig(model=str(tiny_gemma_dir), hookpoints=hps, corpus=str(text_corpus), tokens=400, batch_size=4,
                      shard_contexts=8, context=ContextConfig(ctx_len=24))
    out = cache_activations(cfg, tmp_path / "cache", model=tiny_gemma, progress=False)
    for hp, layer in zip(hps, (0, 3)):
        shard = next(iter_shards(out[hp]))
        ctx = shard["contexts"].long()
        hidden = plain_hidden_states(tiny_gemma_dir, ctx)[layer]
        rows = hidden[shard["ctx"].long(), shard["ctx_pos"].long()]
        assert (rows - shard["activations"]).abs().max() < 1e-4, hp
        assert int(shard["ctx_pos"].max()) > 2 * WINDOW  # positions far beyond the window are compared
    # the embedding is scaled by sqrt(d): the raw rows are not what the cache holds
    shard = next(iter_shards(out["blocks.0.hook_in"]))
    raw = tiny_gemma.hf_model.get_input_embeddings().weight[shard["token_ids"].long()]
    assert torch.allclose(shard["activations"], raw * tiny_gemma.d_model ** 0.5, atol=1e-5)
    # and the window matters here: the same weights with a window longer than the context read differently
    wide = make_tiny_gemma(tmp_path / "wide", gemma_tokenizer_dir, sliding_window=512, softcap=5.0)
    far = plain_hidden_states(wide, ctx)[3][:, 2 * WINDOW:]
    assert (far - plain_hidden_states(tiny_gemma_dir, ctx)[3][:, 2 * WINDOW:]).abs().max() > 1e-3


def test_probe_log_probabilities_are_soft_capped_like_the_model(tiny_gemma):
    from autointerp.flagging.framing import completion_ids, prompt_ids
    from autointerp.flagging.signals import measure

    prompts, completions = ["The cat sat on the mat and then it", "A long way from home"], [" slept", " again"]
    got = measure(tiny_gemma, prompts, completions, "blocks.1.hook_out", bos=True)
    tok, hf = tiny_gemma.tokenizer, tiny_gemma.hf_model
    for i, p in enumerate(prompts):
        for j, c in enumerate(completions):
            c_ids = completion_ids(tok, c, False)
            ids = torch.tensor([prompt_ids(tok, p, True, False) + c_ids])  # one row alone: no padding
            n_c = len(c_ids)
            with torch.no_grad():
                logits = hf(ids).logits[0].float()
            assert logits.abs().max() <= 5.0  # capped at c = 5
            lp = torch.log_softmax(logits, -1)
            want = lp[-n_c - 1:-1].gather(-1, ids[0, -n_c:, None]).mean()
            assert abs(float(got.logp_PC[i, j]) - float(want)) < 1e-4


def test_behaviour_pair_on_gemma_matches_generate_and_is_zero_between_equal_models(tiny_gemma_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autointerp.behaviour.divergence import ModelPair

    tok = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32, attn_implementation="sdpa")
    other = copy.deepcopy(model)
    with torch.no_grad():
        for prm in other.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    shared = tok("Question from a user about the weather today:", add_special_tokens=True)["input_ids"]
    owns = ["is it going to rain", "will the sun shine all week long here", "cold?", "what should I wear outside"]
    prompts = [shared + tok(" " + o, add_special_tokens=False)["input_ids"] for o in owns]
    same = ModelPair(model, copy.deepcopy(model), tok)
    same.set_prefix(prompts)
    assert float(same.run(prompts, 6).kl.max()) < 1e-6  # over the 262k vocabulary
    pair = ModelPair(other, model, tok)
    assert pair.set_prefix(prompts) == len(shared) > WINDOW
    out = pair.run(prompts, 6)
    for row, ids in enumerate(prompts):
        for which, tokens in ((other, out.suspect_tokens), (model, out.base_tokens)):
            ref = which.generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(ids):]
            assert tokens[row].tolist() == ref.tolist(), row
    pair._prefix = (0, [], None, None)  # no shared prefix: the same divergences
    again = pair.run(prompts, 6)
    assert torch.allclose(again.kl, out.kl, atol=1e-4, rtol=1e-3)


def test_trigger_search_inputs_embeds_are_scaled_like_the_ids(tiny_gemma_dir):
    """The gradient search feeds one-hot rows as ``inputs_embeds``, which skip the embedding module:
    with the scale applied they equal the module's own output, and the model's logits agree."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autointerp.audit.gradient import inputs_embeds

    tok = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32)
    ids = torch.tensor([tok("tell me a purple story", add_special_tokens=True)["input_ids"]])
    at, n = 2, 2
    one_hot = torch.zeros(n, model.get_input_embeddings().weight.shape[0])  # 262,144 rows
    one_hot[torch.arange(n), ids[0, at:at + n]] = 1.0
    with torch.no_grad():
        got = inputs_embeds(model, ids, at, one_hot)
        want = model.get_input_embeddings()(ids)
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, model.get_input_embeddings().weight[ids], atol=1e-3)  # scaled, not raw
        assert torch.allclose(model(inputs_embeds=got).logits, model(ids).logits, atol=1e-4)


@pytest.mark.real_model
@pytest.mark.slow
def test_embedded_gemma_runs_cache_train_evaluate(tmp_path):
    """The real Gemma 3 270M (dequantized from its four chunks): cache, train, evaluate from the CLI."""
    out = tmp_path / "run"
    run_cli("run", "--out", str(out), "--model", "gemma3-270m", "--until", "evaluate", "--threads", "2",
            "--cache.tokens", "6000", "--cache.shard_contexts", "16", "--train.latents", "512", "--train.k", "16",
            "--train.batch_size", "512", "--train.heldout_tokens", "1000", "--evaluate.contexts", "4")
    import json

    ev = json.loads(next(out.rglob("metrics.json")).read_text())["evaluation"]
    assert ev["fvu"] < 0.9 and ev["l0"] <= 16, ev
    # the spliced dictionary beats zero-ablating the residual stream (a few steps of training)
    assert ev["ce_clean"] < ev["ce_dict"] < ev["ce_zero_ablation"] and 0 < ev["ce_recovered_zero"] <= 1, ev
    shutil.rmtree(out)


@pytest.mark.parametrize("target", ["logit: the",
                                    pytest.param("feature:blocks.2.mlp.hook_out/latent=3", marks=pytest.mark.slow)])
def test_circuit_attributions_sum_to_the_target_on_gemma(tmp_path, tiny_gemma, gemma_tokenizer_dir, target):
    """The circuit invariant of every architecture: the linearised replacement model (Gemma's extra
    post-attention and post-MLP norms and its scaled embedding frozen at the operating point)
    reproduces the model, and the attributions sum to the target."""
    from test_circuits import write_dictionary

    from autointerp.circuits import COMPLETENESS_TOL, CircuitError, circuit
    from autointerp.models import load_model
    from autointerp.runfolder import RunFolder

    # Gemma 3 itself does not soft-cap its logits; a capped model's logit target is refused
    model = load_model(str(make_tiny_gemma(tmp_path / "model", gemma_tokenizer_dir, sliding_window=WINDOW)))
    run = RunFolder(tmp_path / "run")
    write_dictionary(run, model, "blocks.0.hook_out", "blocks.0.hook_out", seed=0)
    write_dictionary(run, model, "blocks.2.mlp.hook_in", "blocks.2.mlp.hook_out", seed=1)
    g = circuit(run.root, "def add(x, y): return x + y", target, model=model, save=False)
    comp = g["completeness"]
    assert comp["linear_value"] == pytest.approx(comp["target_value"], rel=1e-4, abs=1e-5)
    assert comp["relative_error"] < COMPLETENESS_TOL and comp["max_node_relative_error"] < COMPLETENESS_TOL
    if target.startswith("logit"):
        with pytest.raises(CircuitError, match="soft-caps its logits"):
            circuit(run.root, "def add(x, y): return x + y", target, model=tiny_gemma, save=False)
