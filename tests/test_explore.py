"""The notebook API: open_run, features, feature(i), top(by=...), search, metrics, figures."""

from __future__ import annotations

import json

import pytest

import autointerp.report
from autointerp.examples import Example, LatentRecord
from autointerp.explore import Feature, Run, open_run
from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder
from autointerp.search import SearchError

TEXTS = {0: "Python import statements", 1: "closing parentheses", 2: "the word 'return'"}
DENSITY = {0: 0.02, 1: 0.3, 2: 0.005, 3: 0.0}  # latent 3 is dead
EMBEDDING = {0: 0.9, 1: 0.4, 2: 0.7}


def _record(latent: int) -> LatentRecord:
    rec = LatentRecord(latent=latent, density=DENSITY[latent], max_activation=1.0 + latent)
    if not rec.dead:
        rec.top = [Example(context_index=latent, start=0, tokens=[5, 6, 7], activations=[0.0, 1.0 + latent, 0.5],
                           peak_position=1, kind="top", split="explain")]
    return rec


@pytest.fixture
def run(tmp_path) -> Run:
    folder = RunFolder(tmp_path / "run")
    with FeatureDB(folder.db) as db:
        ids = db.put_features("d", [_record(f) for f in DENSITY])
        for latent, text in TEXTS.items():
            eid = db.put_explanation(ids[latent], "top", "m", "ok", text=text)
            db.put_score(ids[latent], eid, "embedding", "mini", "ok", value=EMBEDDING[latent])
            db.put_score(ids[latent], eid, "embedding", "mini", "ok", value=0.5, control="random_explanation")
        db.put_explanation(ids[1], "other", "m", "timeout", error="slow")
    (folder.dictionaries / "d").mkdir(parents=True)
    (folder.dictionaries / "d" / "autointerp.json").write_text("{}")
    (folder.dictionaries / "d" / "metrics.json").write_text(json.dumps({"fvu": 0.25, "l0": 32}))
    return open_run(folder.root)


def test_open_run_needs_a_feature_store(tmp_path):
    with pytest.raises(SearchError, match="no features.db"):
        open_run(tmp_path)


def test_features_and_feature_fields(run):
    features = run.features
    assert len(features) == 4 and [f.latent for f in features] == [0, 1, 2, 3]
    assert "4 features (3 live)" in repr(features) and features[-1].dead
    f = run.feature(features[1].id)
    assert isinstance(f, Feature) and (f.dictionary, f.latent, f.density, f.max_act) == ("d", 1, 0.3, 2.0)
    assert f == run.feature(latent=1) == run.feature(latent=1, dictionary="d")
    assert [e["status"] for e in f.explanations] == ["ok", "timeout"] and f.explanation == "closing parentheses"
    assert sorted((s["control"], s["value"]) for s in f.scores) == [("none", 0.4), ("random_explanation", 0.5)]
    assert f.score("embedding") == 0.4 and f.score("detection") is None
    assert [e["tokens"] for e in f.examples] == [[5, 6, 7]]
    with pytest.raises(KeyError):
        run.feature(latent=9)
    with pytest.raises(TypeError):
        run.feature()


def test_top_orders_by_density_and_by_score(run):
    assert [f.latent for f in run.top(by="density")] == [1, 0, 2]  # the dead latent is left out
    assert [f.latent for f in run.top(by="density", n=2, ascending=True)] == [2, 0]
    assert [f.latent for f in run.top(by="embedding")] == [0, 2, 1]  # control rows are not the score
    assert [f.latent for f in run.top(by="max_act", n=1)] == [2]
    with pytest.raises(ValueError, match="scorers: embedding"):
        run.top(by="fuzzing")


def test_frame_search_metrics_and_histogram(run):
    frame = run.features_frame()
    assert list(frame["latent"]) == [0, 1, 2, 3] and list(frame["embedding"].iloc[:3]) == [0.9, 0.4, 0.7]
    assert frame["explanation"].iloc[1] == "closing parentheses" and frame["dead"].iloc[3]
    assert run.search("module imports", n=1)[0].latent == 0
    assert [r.latent for r in run.search("parentheses", mode="fts")] == [1]
    with pytest.raises(SearchError, match="mode"):
        run.search("x", mode="regex")
    assert run.metrics() == {"d": {"fvu": 0.25, "l0": 32}}
    fig = run.density_histogram()
    assert len(fig.data) == 1 and sorted(fig.data[0].x) == pytest.approx([-2.30103, -1.69897, -0.522879], abs=1e-5)


@pytest.mark.skipif(not hasattr(autointerp.report, "feature_fragment_html"),
                    reason="autointerp.report.feature_fragment_html not written yet")
def test_repr_html_is_the_report_fragment(run):
    f = run.feature(latent=0)
    assert f._repr_html_() == autointerp.report.feature_fragment_html(run.root, f.id)
    assert "Python import statements" in f._repr_html_()


def test_audit_views_flags_and_diff(run):
    assert run.flags() == [] and run.diff() == []
    with run.db() as db:
        rows = [{"latent": f, "rank": i + 1, "freq_base": 0.0, "freq_tuned": 0.1, "mean_base": 0.0, "mean_tuned": 0.2,
                 "max_base": 0.0, "max_tuned": 1.0, "n_new": 9, "n_lost": 0, "z": 3.0, "effect": 1.0,
                 "significant": False, "counterpart_cos": None} for i, f in enumerate(DENSITY)]
        db.put_diffs("d", "base-a", 5.0, rows)
    got = run.diff()
    assert [r["rank"] for r in got] == list(range(1, len(DENSITY) + 1)) and got[0]["latent"] == rows[0]["latent"]
    with run.db() as db:
        db.put_diffs("d", "base-b", 5.0, rows)
    with pytest.raises(ValueError, match="2 diffs"):
        run.diff()
    assert len(run.diff(base="base-b")) == len(DENSITY)
