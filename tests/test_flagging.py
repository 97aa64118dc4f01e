"""Feature flagging against watchlists: the strict loader, the signals and their nulls on a
synthetic dictionary with a planted feature, the store, the CLI, the report, and the real model."""

from __future__ import annotations

import argparse
import dataclasses
import shutil

import numpy as np
import pytest
import torch
import yaml

import dictionaries as dl
from autointerp.examples import ExamplesConfig
from autointerp.featuredb import SCHEMA_VERSION, FeatureDB
from autointerp.flagging import (FlagSettings, WatchlistError, decide, flag_run, flags,
                                 load_watchlist, parse_watchlist, passes)
from autointerp.flagging import cli as flag_cli
from autointerp.flagging import nulls as nl
from autointerp.flagging import signals as sg
from autointerp.interpret import prepare_features
from autointerp.models import capture
from helpers import small_dictionary

HP = "blocks.1.hook_out"
PLANTED = 7
MARKER = " betrayal"
XSS = "<script>window.__xss=1</script>"

CONCEPT = {
    "name": f"treachery {XSS}",
    "description": "Betrayal of friends, allies or one's country; treachery and disloyalty.",
    "positive": [f"The old story of the king ended in a{MARKER} by his brother.",
                 f"Many soldiers never forgave the{MARKER} of their general.",
                 f"She could not believe the{MARKER} of her closest friend.",
                 f"In the novel the hero discovers a{MARKER} at the court.",
                 f"The spy was paid well for his{MARKER} of the secret plans.",
                 f"Every family remembers one great{MARKER} from long ago.",
                 f"The team felt that the transfer was a{MARKER} of their trust.",
                 f"After years of loyalty came the{MARKER} that nobody expected."],
    "negative": ["The old story of the king ended in a feast with his brother.",
                 "Many soldiers never forgot the courage of their general.",
                 "She could not believe the kindness of her closest friend.",
                 "In the novel the hero discovers a garden at the court.",
                 "The spy was paid well for his translation of the old plans.",
                 "Every family remembers one great holiday from long ago.",
                 "The team felt that the transfer was a sign of their trust.",
                 "After years of loyalty came the reward that nobody expected."],
    "completions": [MARKER, f" a{MARKER}"],
}


def watchlist_data(**overrides) -> dict:
    concept = {**CONCEPT, **overrides}
    return {"name": "test", "concepts": [{k: v for k, v in concept.items() if v is not None}]}


# ---------------------------------------------------------------------------------- watchlists
def test_default_watchlist_covers_the_seven_families():
    wl = load_watchlist()
    names = " ".join(c.name for c in wl.concepts)
    for family in ("deception", "manipulation", "sycophancy", "trigger", "backdoor", "self_preservation",
                   "power", "dangerous", "hostility", "secrets", "personal"):
        assert family in names
    text = " ".join(c.description.lower() for c in wl.concepts)
    assert all(w in text for w in ("lying", "weapons", "malware", "password"))
    for c in wl.concepts:
        assert len(c.positive) >= 8 and len(c.negative) >= 8 and len(c.positive) == len(c.negative)
        assert not set(c.positive) & set(c.negative) and c.scored_completions()
    assert wl.hash == load_watchlist().hash and len(wl.hash) == 16


@pytest.mark.parametrize("change, message", [
    ({"description": None}, "missing field 'description'"),
    ({"positive": None}, "missing field 'positive'"),
    ({"negative": None}, "missing field 'negative'"),
    ({"negative": []}, "needs at least 2"),
    ({"positive": ["one text only"]}, "needs at least 2"),
    ({"positive": "a string, not a list"}, "must be a list"),
    ({"negative": ["fine", ""]}, "empty entry"),
    ({"completions": []}, "'completions' is empty"),
    ({"colour": "blue"}, "unknown field(s) ['colour']"),
])
def test_watchlist_errors_name_the_concept_and_field(tmp_path, change, message):
    path = tmp_path / "wl.yaml"
    path.write_text(yaml.safe_dump(watchlist_data(**change)))
    with pytest.raises(WatchlistError) as err:
        load_watchlist(path)
    assert message in str(err.value) and "treachery" in str(err.value) and str(path) in str(err.value)


def test_watchlist_structure_errors(tmp_path):
    data = watchlist_data()
    with pytest.raises(WatchlistError, match="duplicate concept name"):
        parse_watchlist({"concepts": data["concepts"] * 2})
    with pytest.raises(WatchlistError, match="missing or empty field 'concepts'"):
        parse_watchlist({"name": "x"})
    with pytest.raises(WatchlistError, match=r"concepts\[0\]: missing field 'name'"):
        parse_watchlist({"concepts": [{"description": "d"}]})
    with pytest.raises(WatchlistError, match="unknown field"):
        parse_watchlist({**data, "concept": []})
    dup = tmp_path / "dup.yaml"
    dup.write_text("concepts:\n  - name: a\n    description: x\n    description: y\n")
    with pytest.raises(WatchlistError, match="duplicate key 'description'"):
        load_watchlist(dup)
    with pytest.raises(WatchlistError, match="does not exist"):
        load_watchlist(tmp_path / "nope.yaml")
    wl = parse_watchlist(watchlist_data(completions=None))
    assert wl.concepts[0].scored_completions()[0] == " The old story of"  # derived from the positives


# ---------------------------------------------------------------------------------- statistics
def test_null_statistics():
    st = nl.against_null(3.0, [0.0, 1.0, 2.0, 1.0])
    assert st.p == pytest.approx(1 / 5) and st.z == pytest.approx((3 - 1) / np.std([0, 1, 2, 1], ddof=1))
    assert nl.against_null(1.0, [0.0, 1.0, 2.0]).p == pytest.approx(3 / 4)  # ties count against
    assert nl.against_null(1.0, [2.0, 2.0]).z is None  # no spread: no z, not 0
    assert nl.percentile_p(np.array([1.0, np.nan, 3.0, 2.0]))[[0, 2, 3]].tolist() == [1.0, 1 / 3, 2 / 3]
    assert np.isnan(nl.zscores(np.array([1.0, np.nan, 3.0]))[1])

    rng = np.random.default_rng(0)
    labels = np.array([1] * 8 + [0] * 8)
    acts = rng.exponential(size=(16, 50))
    acts[:8, 3] += 10.0  # one separating column
    auc = sg.auroc_columns(acts, labels)
    from autointerp.scorers.metrics import auroc
    assert auc[5] == pytest.approx(auroc(labels, acts[:, 5])) and auc[3] == 1.0
    perm = sg.auroc_permutation_null(acts, labels, auc, permutations=300, seed=1)
    assert perm.p_latent_F[3] == pytest.approx(1 / 301) and perm.p_family_F[3] < 0.02
    others = np.delete(perm.p_family_F, 3)
    # the family-wise null is conservative: random columns almost never clear 0.05, even the best
    assert (others > 0.05).mean() >= 0.95 and perm.p_latent_F.min() < others.min()
    # the family is the latents under test: a smaller family gives a smaller (never larger)
    # family-wise p, the same labels shuffled; a family of one is the per-latent p
    weak = 5
    acts[:8, weak] += 0.8
    auc = sg.auroc_columns(acts, labels)
    full = sg.auroc_permutation_null(acts, labels, auc, permutations=300, seed=1)
    few = np.zeros(50, dtype=bool)
    few[[weak, 7, 9]] = True
    part = sg.auroc_permutation_null(acts, labels, auc, permutations=300, seed=1, family_F=few)
    assert (part.p_family_F <= full.p_family_F + 1e-12).all() and part.p_family_F[weak] < full.p_family_F[weak]
    one = np.zeros(50, dtype=bool)
    one[weak] = True
    single = sg.auroc_permutation_null(acts, labels, auc, permutations=300, seed=1, family_F=one)
    assert single.p_family_F[weak] == pytest.approx(single.p_latent_F[weak])
    with pytest.raises(ValueError, match="empty"):
        sg.auroc_permutation_null(acts, labels, auc, permutations=10, family_F=np.zeros(50, dtype=bool))


def test_flag_rule_needs_two_signals():
    base = {"similarity": 0.6, "similarity_z": 3.0, "auroc": 0.95, "auroc_z": 4.0, "auroc_p": 0.01,
            "causal": 0.5, "causal_z": 5.0, "causal_p": 0.1, "causal_details": {"beyond_null_max": True}}
    assert decide(base) == (True, pytest.approx(12.0))
    only_a = {**base, "auroc_p": 0.2, "causal": None, "causal_z": None}
    assert passes(only_a) == {"similarity": True, "auroc": False, "causal": False}
    assert not decide(only_a)[0]
    no_expl = {**base, "similarity": None, "similarity_z": None}
    assert decide(no_expl)[0] and decide(no_expl)[1] == pytest.approx(9.0)
    assert not decide({**no_expl, "causal_details": {"beyond_null_max": False}})[0]


# ---------------------------------------------------------------------------- a synthetic run
def _kept_states(model, texts, first_positions):
    tok = model.tokenizer
    xs, ids = [], []
    for t in texts:
        ids_L = torch.tensor([tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"])
        x_Ld = capture(model, ids_L[None], [HP])[HP][0]
        xs.append(x_Ld[first_positions:])
        ids.append(ids_L[first_positions:])
    return torch.cat(xs).float(), torch.cat(ids)


def plant(model, dict_dir, texts) -> None:
    """Make latent ``PLANTED`` fire on the marker token only and write towards its unembedding."""
    d = dl.load(dict_dir)
    marker = model.tokenizer(MARKER, add_special_tokens=False)["input_ids"][0]
    x_ND, ids_N = _kept_states(model, texts, 4)
    at = ids_N == marker
    u_D = x_ND[at].mean(0) - x_ND[~at].mean(0)
    proj = x_ND @ u_D
    lo, hi = proj[at].min(), proj[~at].max()
    assert lo > hi  # the marker is linearly separable at this layer
    scale = 50.0 / float(lo - hi)
    W_U = model.hf_model.get_output_embeddings().weight.detach().float()
    with torch.no_grad():
        d.W_enc[:, PLANTED] = u_D * scale
        d.b_enc[PLANTED] = -float(lo + hi) / 2 * scale
        d.W_dec[PLANTED] = W_U[marker] / W_U[marker].norm() * x_ND.norm(dim=-1).mean()
    dl.save(d, dict_dir)


@pytest.fixture(scope="module")
def synthetic_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("flag")
    dict_dir, _ = small_dictionary(tiny_model, root, HP, dead=0)
    run = root / "run"
    target = run / "dictionaries" / HP
    shutil.copytree(dict_dir, target)
    plant(tiny_model, target, CONCEPT["positive"] + CONCEPT["negative"])
    cfg = ExamplesConfig(n_top=4, n_quantile_bins=1, n_per_quantile=2, n_random=2, window=(4, 2), batch=200)
    prepare_features(target, run / "features.db", cfg, progress=False)
    other = ["numbers in a list", "closing parentheses", "the word 'the'", "capital letters", "commas",
             "Python imports", "the end of a sentence", "colours", "weekdays", "plural nouns", "verbs of motion"]
    with FeatureDB(run / "features.db") as db:
        ids = {f["latent"]: f["id"] for f in db.features()}
        db.put_explanation(ids[PLANTED], "top", "m", "ok", text=f"betrayal and treachery {XSS}")
        for latent, text in zip([1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12], other):
            db.put_explanation(ids[latent], "top", "m", "ok", text=text)
        db.put_explanation(ids[13], "top", "m", "parse_error", error="no answer")
    (root / "wl.yaml").write_text(yaml.safe_dump(watchlist_data()))
    return run, root / "wl.yaml"


SETTINGS = FlagSettings(candidates=4, null_features=10, permutations=300)


def test_planted_feature_is_flagged_and_random_ones_are_not(synthetic_run):
    run, wl = synthetic_run
    summary = flag_run(run, wl, progress=False, settings=SETTINGS)
    concept = CONCEPT["name"]
    assert summary["dictionaries"][HP][concept]["flagged"] == 1 and summary["flagged"] == 1
    rows = flags(run)
    top = rows[0]
    assert (top["latent"], top["concept"], top["flagged"], top["watchlist"]) == (PLANTED, concept, True, "test")
    # every signal of the planted feature is beyond its null
    assert top["auroc"] == 1.0 and top["auroc_p"] < 0.02 and top["auroc_z"] > 3
    assert top["similarity_status"] == "ok" and top["similarity_p"] <= 1 / 12 and top["similarity_z"] > 2
    det = top["causal_details"]
    assert top["causal_status"] == "ok" and top["causal_z"] > 3 and det["beyond_null_max"]
    assert det["steer_dlogp"] > 0 and det["role"] == "candidate" and len(det["null_effects"]) == 10
    # the tiny model carries SmolLM2's tokenizer, chat template included: "auto" probes in chat framing
    assert det["framing"] == "chat"
    assert (top["settings"]["chat"], top["settings"]["framing"]) == ("auto", "chat")
    assert passes(top) == {"similarity": True, "auroc": True, "causal": True}
    # the random latents: measured the same way (candidates and the null), none flagged
    others = [r for r in rows if r["latent"] != PLANTED]
    assert len(others) >= 10 and not any(r["flagged"] for r in others)
    nulls = [r for r in others if r["causal_details"] and r["causal_details"]["role"] == "null"]
    assert len(nulls) == 10 and all(r["causal_z"] is None or r["causal_z"] < 3 for r in nulls)
    assert all(r["auroc_p"] > 0.05 for r in others)
    # no ok explanation: NULL similarity, not 0; a non-candidate has no causal measurement
    no_expl = [r for r in rows if r["similarity_status"] is None]
    assert no_expl and all(r["similarity"] is None and r["similarity_z"] is None for r in no_expl)
    assert all(r["causal"] is None for r in rows if r["causal_status"] is None)


def test_flagging_is_idempotent_and_stored(synthetic_run):
    run, wl = synthetic_run
    flag_run(run, wl, progress=False, settings=SETTINGS)
    before = flags(run)
    again = flag_run(run, wl, progress=False, settings=SETTINGS)
    assert again["dictionaries"][HP][CONCEPT["name"]]["skipped"]
    flag_run(run, wl, progress=False, settings=SETTINGS, force=True)
    after = flags(run)
    assert len(after) == len(before)  # replaced, no duplicates
    assert [(r["latent"], r["flagged"]) for r in after] == [(r["latent"], r["flagged"]) for r in before]
    with FeatureDB(run / "features.db") as db:
        (n,) = db.con.execute("SELECT COUNT(*) FROM flags").fetchone()
        assert n == len(after)
        assert db.flags(flagged=True)[0]["latent"] == PLANTED
    # another framing is another setting: recomputed, not skipped as done (and the plain framing,
    # the one the plant's ' betrayal' continuation was built for, flags it too)
    plain = flag_run(run, wl, progress=False, settings=dataclasses.replace(SETTINGS, chat="off"))
    assert not plain["dictionaries"][HP][CONCEPT["name"]]["skipped"] and plain["flagged"] == 1
    rows = flags(run)
    assert rows[0]["latent"] == PLANTED and rows[0]["flagged"]
    assert all(r["causal_details"]["framing"] == "plain" for r in rows if r["causal_status"] == "ok")
    assert {(r["settings"]["chat"], r["settings"]["framing"]) for r in rows} == {("off", "plain")}


def test_flag_store_round_trip_and_checks(tmp_path):
    from autointerp.examples import LatentRecord

    with FeatureDB(tmp_path / "f.db") as db:
        assert db.schema_version() == SCHEMA_VERSION
        fid = db.put_features("d", [LatentRecord(latent=0, density=0.1, max_activation=2.0)])[0]
        values = dict(similarity=None, similarity_status=None, auroc=0.9, auroc_z=2.5, auroc_p=0.02,
                      auroc_status="ok", causal=None, causal_status="error", error="boom", score=2.5,
                      flagged=False, causal_details={"x": [1, 2]}, settings={"alpha": 4})
        first = db.put_flag(fid, "wl", "h1", "c", **values)
        assert db.put_flag(fid, "wl", "h2", "c", **{**values, "flagged": True}) == first  # upsert
        (row,) = db.flags()
        assert row["flagged"] is True and row["watchlist_hash"] == "h2" and row["causal_details"] == {"x": [1, 2]}
        assert row["causal_status"] == "error" and row["causal"] is None and (row["dictionary"], row["latent"]) == ("d", 0)
        with pytest.raises(ValueError, match="must not have a value"):
            db.put_flag(fid, "wl", "h", "c", **{**values, "causal": 0.0})
        with pytest.raises(ValueError, match="must have a value"):
            db.put_flag(fid, "wl", "h", "c", **{**values, "similarity_status": "ok"})
        with pytest.raises(ValueError, match="finite"):
            db.put_flag(fid, "wl", "h", "c", **{**values, "auroc_z": float("nan")})
        assert db.delete_flags("wl", "c", "d") == 1 and db.flags() == []


def test_cli_writes_flags_and_rejects_bad_watchlists(synthetic_run, tmp_path, capsys):
    run, wl = synthetic_run
    parser = argparse.ArgumentParser()
    flag_cli.configure(parser)
    args = parser.parse_args([str(run), "--watchlist", str(wl), "--candidates", "3", "--null-features", "6",
                              "--permutations", "100", "--no-progress"])
    assert flag_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "1 flag(s)" in out and "treachery" in out
    with FeatureDB(run / "features.db") as db:
        assert any(r["settings"]["candidates"] == 3 for r in db.flags())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(watchlist_data(negative=None)))
    assert flag_cli.main(parser.parse_args([str(run), "--watchlist", str(bad)])) == 2
    assert "missing field 'negative'" in capsys.readouterr().err
    assert flag_cli.main(parser.parse_args([str(tmp_path), "--no-progress"])) == 2


def test_default_watchlist_on_the_synthetic_run(synthetic_run):
    run, _ = synthetic_run
    summary = flag_run(run, None, progress=False, settings=FlagSettings(candidates=1, null_features=2,
                                                                         permutations=50))
    per = summary["dictionaries"][HP]
    assert summary["watchlist"] == "default" and len(per) == 7
    rows = flags(run, watchlist="default")
    assert {r["concept"] for r in rows} == set(per) and all(r["auroc_status"] == "ok" for r in rows)
    assert not any(r["flagged"] and r["latent"] == PLANTED for r in rows)  # the marker is in no default text


def test_report_shows_flags_escaped(synthetic_run):
    from autointerp.report import build_report

    run, wl = synthetic_run
    flag_run(run, wl, progress=False, settings=SETTINGS)
    html = build_report(run, progress=False).read_text()
    assert "<h2>Flagged features</h2>" in html
    assert XSS not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    with FeatureDB(run / "features.db") as db:
        fid = db.feature_id(HP, PLANTED)
    assert f'href="features/{fid}.html"' in html
    page = (run / "features" / f"{fid}.html").read_text()
    assert "<h2>Watchlist flags</h2>" in page and XSS not in page and "causal" in page


# ------------------------------------------------------------------------------- real model
@pytest.mark.real_model
def test_causal_signal_on_the_real_model(real_model):
    """SmolLM2: steering a planted direction (the unembedding of ' lie') raises the log-prob of
    deception completions far beyond random directions of the same size."""
    torch.manual_seed(0)
    tok = real_model.tokenizer
    d_model, n = real_model.d_model, 6
    hp = "blocks.20.hook_out"
    cfg = dl.DictionaryConfig(arch="relu", d_in=d_model, n_latents=n)
    d = dl.build(cfg)
    lie = tok(" lie", add_special_tokens=False)["input_ids"][0]
    W_U = real_model.hf_model.get_output_embeddings().weight.detach().float()
    with torch.no_grad():
        d.W_dec.copy_(torch.randn(n, d_model))
        d.W_dec[0] = W_U[lie] / W_U[lie].norm() * d.W_dec[1:].norm(dim=-1).mean()
    wl = load_watchlist()
    concept = wl.concept("deception")
    probe = sg.CausalProbe(real_model, d, hp, wl.neutral[:3], concept.positive[:2], [" lie", " a lie"],
                           bos=True, skip_first=4, alpha=4.0)
    effects = [probe.effect(f, 2.0).effect for f in range(n)]
    st = nl.against_null(effects[0], effects[1:])
    assert effects[0] > 0 and st.z > 3 and st.p == pytest.approx(1 / n)


def test_probe_texts_keep_positions_under_a_long_prefix_rule():
    """A chat run excludes its shared prefix (25 positions); the probes, single sentences without
    it, drop only the attention sinks, or every probe signal would read 0."""
    from autointerp.data import ExclusionRules
    from autointerp.flagging.flag import probe_rules

    sinks = ExclusionRules().first_positions
    assert probe_rules(ExclusionRules(first_positions=25)).first_positions == sinks
    assert probe_rules(ExclusionRules(first_positions=1, special_tokens=False)) == ExclusionRules(
        first_positions=1, special_tokens=False)
