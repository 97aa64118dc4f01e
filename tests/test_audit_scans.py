"""The trigger search's scans and growth on the audit tests' tiny pair (the suspect planted on one
token, ``tests/test_audit.py``'s ``pair`` fixture): the weight scan's maths, the reading scan with a
cached prefix and with a shortlist, and growth with its stop rules."""

from __future__ import annotations

import numpy as np
import torch

from test_audit import pair  # noqa: F401  (the tiny base / planted suspect / restyled models)


def _pairs(pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autointerp.behaviour.divergence import ModelPair

    load = lambda name: AutoModelForCausalLM.from_pretrained(pair["root"] / name, dtype=torch.float32)  # noqa: E731
    tok = AutoTokenizer.from_pretrained(pair["root"] / "base")
    return ModelPair(load("suspect"), load("base"), tok), ModelPair(load("base"), load("base"), tok)


def test_weight_scan_is_the_first_mlp_s_input_change_read_on_each_token(pair):
    """Exact maths on a hand-made change (a rank-one update of the base's first gate projection),
    less its part along the mean input direction; a change along that direction alone (what any
    fine-tune gives every token) scans 0, as does the base against itself."""
    from autointerp.audit.scans import candidate_vocab, weight_scan

    _, same = _pairs(pair)
    vocab = candidate_vocab(same.tokenizer)
    assert np.nanmax(weight_scan(same)) == 0.0
    special = np.setdiff1d(np.arange(len(same.tokenizer)), vocab)
    assert np.isnan(weight_scan(same)[special]).all()
    layer = same.suspect.model.layers[0]
    E = same.base.get_input_embeddings().weight.detach()
    with torch.no_grad():
        x = layer.post_attention_layernorm(E).numpy().astype(np.float64)  # [V, d] every token as the MLP reads it
        Wg, Wu = layer.mlp.gate_proj.weight.numpy().astype(np.float64), layer.mlp.up_proj.weight.numpy().astype(np.float64)
        m = x[vocab].mean(0) / np.linalg.norm(x[vocab].mean(0))
        u = np.random.default_rng(0).normal(size=Wg.shape[0])
        layer.mlp.gate_proj.weight += torch.tensor(np.outer(u, m) * 0.05, dtype=torch.float32)
    assert np.nanmax(weight_scan(same)) < 1e-5  # the shared change only: removed
    with torch.no_grad():
        layer.mlp.gate_proj.weight += torch.tensor(np.outer(u, x[pair["tid"]]) * 0.01, dtype=torch.float32)
    xt = x[pair["tid"]]
    expected = (np.abs(0.01 * (x @ xt - (xt @ m) * (x @ m))) * np.linalg.norm(u)
                / np.sqrt(((x @ Wg.T) ** 2).sum(1) + ((x @ Wu.T) ** 2).sum(1)))
    got = weight_scan(same)
    np.testing.assert_allclose(got[vocab], expected[vocab], rtol=2e-3, atol=1e-6)
    # (on the tiny plant the planted token is not first: a random 2-layer model trained at a learning
    # rate of 3e-3 moves every weight by about as much as its initial scale, so the change is noise
    # on every token; on the 135M plants of benchmarks/planted it is first, RESULTS.md)


def test_reading_scan_with_a_cached_prefix_equals_the_whole_forward(pair):
    """The scan runs only ``[t] + after`` on a cached ``carrier + before``: the same figures as
    running every whole sequence (centred by the vocabulary's median, relative to the base's norm)."""
    from autointerp.audit.scans import candidate_vocab, reading_scan, scan_carrier

    planted, _ = _pairs(pair)
    tok = planted.tokenizer
    before, after = tok(" alpha", add_special_tokens=False)["input_ids"], tok(" beta", add_special_tokens=False)["input_ids"]
    got = reading_scan(planted, 0, before=before, after=after, batch_size=8192, progress=False)
    vocab = candidate_vocab(tok)
    ids = torch.tensor([[*scan_carrier(tok), *before, int(t), *after] for t in vocab])
    with torch.no_grad():  # the decoder alone (no logits over the vocabulary for 49k rows)
        hs = [torch.cat([m.model(input_ids=b, output_hidden_states=True).hidden_states[1][:, -1].double()
                         for b in ids.split(4096)]) for m in (planted.suspect, planted.base)]
    delta = hs[0] - hs[1]
    want = ((delta - delta.median(0).values).norm(dim=-1) / hs[1].norm(dim=-1)).numpy()
    np.testing.assert_allclose(got[vocab], want, rtol=1e-3, atol=1e-6)
    assert np.isnan(np.delete(got, vocab)).all()


def test_reading_scan_of_a_shortlist_reads_only_its_tokens_centred_by_its_reference(pair):
    """A shortlist's scan equals the whole scan's rows re-centred by the reference draw's median:
    NaN off the shortlist, and exactly the whole scan when the reference is the whole vocabulary."""
    from autointerp.audit.scans import Scan, Shortlist, candidate_vocab, reading_scan

    planted, _ = _pairs(pair)
    tok = planted.tokenizer
    vocab = candidate_vocab(tok)
    after = tok(" beta", add_special_tokens=False)["input_ids"]
    whole = reading_scan(planted, 0, after=after, batch_size=8192, progress=False)
    everything = Shortlist(ids=vocab, reference=vocab)
    np.testing.assert_allclose(reading_scan(planted, 0, after=after, tokens=everything, batch_size=8192,
                                            progress=False)[vocab], whole[vocab], rtol=1e-5)
    rng = np.random.default_rng(1)
    scores = [rng.random(len(tok)), np.where(np.isin(np.arange(len(tok)), vocab), rng.random(len(tok)), np.nan)]
    short = Shortlist.build(scores, 50, tok, reference=300, seed=2)
    assert set(Scan(0, scores[0], scores[0], scores[1]).top(50, "weight_score")) <= set(short.ids.tolist())
    assert set(np.argsort(-scores[0])[:50].tolist()) & set(vocab.tolist()) <= set(short.ids.tolist())
    assert len(short.reference) == 300 and np.isin(short.reference, short.ids).all()
    assert 300 <= len(short.ids) <= 400 and np.isin(short.ids, vocab).all()
    assert len(short.plus(np.array([vocab[0], vocab[1]])).ids) >= len(short.ids)
    got = reading_scan(planted, 0, after=after, tokens=short, batch_size=8192, progress=False)
    assert np.isnan(np.delete(got, short.ids)).all() and np.isfinite(got[short.ids]).all()


def test_grow_extends_the_anchor_only_while_the_divergence_grows(pair):
    from autointerp.audit.scans import user_ids
    from autointerp.audit.triggers import grow

    planted, same = _pairs(pair)
    tok = planted.tokenizer
    users = [user_ids(tok, t) for t in ("alpha beta delta import", "return class def", "print self value index")]
    alpha = tok(" alpha", add_special_tokens=False)["input_ids"][0]
    # nothing diverges: one step, both sides screened (top each), no gain, the anchor alone stays
    # (each string screened at both places: appended to the message and opening it)
    g = grow(same, alpha, users, layer=0, max_len=3, top=3, progress=False)
    assert g["ids"] == [alpha] and g["steps"] == 1 and g["screen_kl"] < 1e-6
    assert len(g["screened"]) == 2 * (1 + 2 * 3)
    assert {len(c["ids"]) for c in g["screened"][2:]} == {2}
    assert [c["place"] for c in g["screened"]] == ["end", "start"] * (1 + 2 * 3)
    # the planted token grows only while the answer diverges more, and keeps its place in the sequence
    g = grow(planted, pair["tid"], users, layer=0, max_len=3, top=3, progress=False)
    alone = g["path"][0]["screen_kl"]
    assert g["path"][0]["screen_kl"] == max(c["screen_kl"] for c in g["screened"][:2])
    assert pair["tid"] in g["ids"] and g["screen_kl"] >= alone > 0.1
    assert g["screen_kl"] == max(c["screen_kl"] for c in g["screened"] if len(c["ids"]) <= len(g["ids"]))
    # every kept step raised the divergence by more than min_gain; the path ends at the result
    path = [p["screen_kl"] for p in g["path"]]
    assert g["path"][0]["ids"] == [pair["tid"]] and g["path"][-1]["ids"] == g["ids"] and path[-1] == g["screen_kl"]
    assert all(b > a * 1.1 for a, b in zip(path, path[1:]))
    # the step's null: every step is recorded beside the best of as many random extensions; with the
    # null a step is kept only above them, without it on the gain alone (here any gain: min_gain -1)
    free = grow(planted, pair["tid"], users, layer=0, max_len=3, top=3, min_gain=-1, null=False, progress=False)
    held = grow(planted, pair["tid"], users, layer=0, max_len=3, top=3, min_gain=-1, progress=False)
    assert len(free["ids"]) == 3 and all(t["kept"] for t in free["trials"])
    assert all(t["kept"] == (t["best"] > t["random_max"]) for t in held["trials"])
    assert [t["kept"] for t in held["trials"]] == [True] * (len(held["path"]) - 1) + [False] * (len(held["ids"]) < 3)
    assert all(t["random_max"] >= 0 and t["length"] >= 2 for t in free["trials"] + held["trials"])
    # with a shortlist, every neighbour screened is a shortlisted token or a byte fragment
    from autointerp.audit.pieces import Characters
    from autointerp.audit.scans import Shortlist, candidate_vocab

    vocab = candidate_vocab(tok)
    ids = np.sort(np.random.default_rng(0).choice(vocab, 200, replace=False))
    short = Shortlist(ids=ids, reference=ids[:100])
    g = grow(planted, pair["tid"], users, layer=0, max_len=3, top=3, tokens=short, progress=False)
    readable = set(short.ids.tolist()) | set(Characters(tok, vocab).fragments.tolist()) | {pair["tid"]}
    assert g["steps"] >= 1 and all(set(c["ids"]) <= readable for c in g["screened"])
    # a gain no step reaches: the anchor alone, after one screened step
    g = grow(planted, pair["tid"], users, layer=0, max_len=3, top=3, min_gain=1e6, progress=False)
    assert g["ids"] == [pair["tid"]] and g["steps"] == 1 and len(g["path"]) == 1
