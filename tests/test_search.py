"""Search over a run's features: semantic (MiniLM), FTS5, incremental index, errors, fire-on-text."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch

from autointerp import search
from autointerp.cli import search as search_cli
from autointerp.examples import LatentRecord
from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder
from autointerp.search import SearchError, fire_on_text, fts_search, semantic_search
from helpers import small_dictionary

TEXTS = {0: "Python import statements", 1: "closing parentheses", 2: "the word 'return'",
         3: "numbers in a list of prices"}


def make_run(root, texts: dict[int, str] = TEXTS):
    """A run folder whose features.db holds one ok explanation per latent of ``texts`` (plus one
    failed explanation and a dead feature), each scored by ``embedding``."""
    run = RunFolder(root)
    with FeatureDB(run.db) as db:
        recs = [LatentRecord(latent=f, density=0.01 * (f + 1), max_activation=float(f)) for f in range(len(texts) + 2)]
        recs[-1].density = 0.0
        ids = db.put_features("d", recs)
        for latent, text in texts.items():
            eid = db.put_explanation(ids[latent], "top", "m", "ok", text=text)
            db.put_score(ids[latent], eid, "embedding", "mini", "ok", value=0.5 + 0.1 * latent)
        db.put_explanation(ids[len(texts)], "top", "m", "parse_error", error="no answer")
    return run


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_semantic_ranks_the_right_explanation_first(run):
    results = semantic_search(run.root, "module imports", n=3)
    assert [r.explanation for r in results][0] == "Python import statements"
    assert len(results) == 3 and [r.similarity for r in results] == sorted((r.similarity for r in results),
                                                                           reverse=True)
    best = results[0]
    assert (best.dictionary, best.latent, best.explainer, best.model) == ("d", 0, "top", "m")
    assert best.scores == {"embedding": pytest.approx(0.5)}
    assert semantic_search(run, "a closing bracket ')'", n=1)[0].explanation == "closing parentheses"
    assert len(semantic_search(run, "anything", n=50)) == len(TEXTS)  # failed explanations never returned


def test_fts_finds_exact_words_and_survives_fts_syntax(run):
    assert [r.explanation for r in fts_search(run, "parentheses")] == ["closing parentheses"]
    assert [r.explanation for r in fts_search(run, "RETURN")] == ["the word 'return'"]
    assert [r.explanation for r in fts_search(run, "import statement")] == ["Python import statements"]  # stemmed
    assert fts_search(run, "import parentheses") == []  # every word is required
    assert [r.explanation for r in fts_search(run, '"closing')] == ["closing parentheses"]
    for query in ('"unbalanced', "AND OR NOT", "col:foo*", "NEAR(a b)", "(", "'", "text:python", "^the -word"):
        assert isinstance(fts_search(run, query), list)
    assert [r.latent for r in fts_search(run, "text:python")] == []  # a column filter is not applied...
    assert [r.latent for r in fts_search(run, "python*")] == [0]  # ...and '*' is just punctuation


def test_index_is_incremental(run, monkeypatch):
    embedded: list[list[str]] = []
    real = search.embed_texts

    def counting(texts):
        embedded.append(list(texts))
        return real(texts)

    monkeypatch.setattr(search, "embed_texts", counting)
    semantic_search(run, "imports")
    assert sorted(embedded[0]) == sorted(TEXTS.values()) and embedded[1] == ["imports"]
    embedded.clear()
    semantic_search(run, "imports")
    assert embedded == [["imports"]]  # nothing re-embedded
    with FeatureDB(run.db) as db:
        fid = db.feature_id("d", len(TEXTS))  # its failed explanation now succeeds
        db.put_explanation(fid, "top", "m", "ok", text="opening curly braces")
        db.put_explanation(db.feature_id("d", 1), "top", "m", "ok", text="closing square brackets")
    embedded.clear()
    top = semantic_search(run, "curly brace")
    assert sorted(embedded[0]) == ["closing square brackets", "opening curly braces"]
    assert top[0].explanation == "opening curly braces"
    index = search.SemanticIndex.load(search.search_dir(run) / search.INDEX_FILE)
    assert sorted(index.explanation_id.tolist()) == list(range(1, len(TEXTS) + 2))
    assert index.embeddings.shape == (len(TEXTS) + 1, 384)
    assert torch.allclose(torch.from_numpy(index.embeddings).norm(dim=1), torch.ones(len(TEXTS) + 1), atol=1e-5)
    assert [r.explanation for r in fts_search(run, "brackets")] == ["closing square brackets"]
    assert fts_search(run, "parentheses") == []  # the old text left the FTS index


def test_errors(tmp_path):
    with pytest.raises(SearchError, match="no features.db"):
        semantic_search(tmp_path / "nothing", "x")
    assert not (tmp_path / "nothing" / "features.db").exists()  # never created by a search
    empty = make_run(tmp_path / "empty", texts={})
    for find in (semantic_search, fts_search):
        with pytest.raises(SearchError, match="run explain first"):
            find(empty.root, "x")
    run = make_run(tmp_path / "run")
    for find in (semantic_search, fts_search):
        with pytest.raises(ValueError, match="empty query"):
            find(run.root, "  \n")
    with pytest.raises(SearchError, match="empty text"):
        fire_on_text(run.root, " ")
    with pytest.raises(SearchError, match="no dictionary"):
        fire_on_text(run.root, "import os")


def test_cli_table(run, capsys):
    p = argparse.ArgumentParser()
    search_cli.configure_search_args(p)
    assert search_cli.run_search(p.parse_args([str(run.root), "module imports", "-n", "2"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "cosine" in lines[0] and "Python import statements" in lines[1]
    assert "embedding=0.50" in lines[1]
    assert search_cli.run_search(p.parse_args([str(run.root), "AND (", "--fts"])) == 0
    assert capsys.readouterr().out.strip() == "no match"


# ----------------------------------------------------------------------------- fire on text
HP = "blocks.1.hook_out"


@pytest.fixture(scope="module")
def dictionary_run(tiny_model, tmp_path_factory):
    """A run folder with one 32-latent dictionary of the tiny model at ``HP``."""
    root = tmp_path_factory.mktemp("fire")
    path, _ = small_dictionary(tiny_model, root / "train", HP, dead=0)
    shutil.copytree(path, root / "run" / "dictionaries" / HP)
    return make_run(root / "run")


def _direct_latents(tiny_model, dictionary_dir, ids: list[int]) -> torch.Tensor:
    """The dictionary's latents on one context ``[BOS] + ids``, computed without the search module."""
    import dictionaries as dl
    from autointerp.models import capture

    tok = tiny_model.tokenizer
    ctx = torch.tensor([[tok.bos_token_id, *ids]])
    x = capture(tiny_model, ctx, [HP])[HP][0]
    keep = ~torch.isin(ctx[0], torch.tensor(tok.all_special_ids)) & (torch.arange(ctx.shape[1]) >= 4)
    z = torch.zeros(ctx.shape[1], 32)
    with torch.inference_mode():
        z[keep] = dl.load(dictionary_dir).encode(x[keep])
    return z[1:]


def test_fire_on_text_matches_a_direct_encode(tiny_model, dictionary_run):
    text = "import os\nimport sys\n\ndef main():\n    return sys.argv"
    ids = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < 31  # one context of the cache's ctx_len (32, BOS included)
    expected_TF = _direct_latents(tiny_model, dictionary_run.dictionaries / HP, ids)
    found = fire_on_text(dictionary_run.root, text, n=5)
    assert len(found) == 5 and [f.max_activation for f in found] == sorted((f.max_activation for f in found),
                                                                           reverse=True)
    best_F = expected_TF.max(dim=0).values
    assert [f.latent for f in found] == best_F.argsort(descending=True)[:5].tolist()
    for f in found:
        assert f.dictionary == HP and len(f.activations) == len(ids) == len(f.tokens)
        assert torch.allclose(torch.tensor(f.activations), expected_TF[:, f.latent], atol=1e-5)
        assert f.max_activation == pytest.approx(float(best_F[f.latent]), abs=1e-5)
        assert f.activations[f.peak_position] == f.max_activation and f.activations[:3] == [0.0] * 3
        assert f.peak_token == tiny_model.tokenizer.decode([ids[f.peak_position]])
        assert f.feature_id is None and f.explanation is None  # the store lists dictionary "d" only


def test_fire_on_long_text_restarts_contexts(tiny_model, dictionary_run):
    text = " ".join(f"word{i}" for i in range(40))
    ids_T, keep_T, z_TF = search.encode_text(dictionary_run.dictionaries / HP, text)
    assert len(ids_T) > 31 and z_TF.shape == (len(ids_T), 32)
    # excluded: the first 4 positions of each 32-token context, BOS + 31 text tokens
    assert (~keep_T).nonzero().flatten().tolist() == [t for t in range(len(ids_T)) if t % 31 < 3]
    assert not z_TF[~keep_T].any()
    first = _direct_latents(tiny_model, dictionary_run.dictionaries / HP, ids_T[:31].tolist())
    assert torch.allclose(z_TF[:31], first, atol=1e-5)
