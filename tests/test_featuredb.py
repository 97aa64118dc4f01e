"""features.db: constraints, idempotent writes, work lists, WAL readers, migrations."""

from __future__ import annotations

import sqlite3

import pytest

from autointerp import featuredb
from autointerp.examples import Example, LatentRecord
from autointerp.featuredb import SCHEMA_VERSION, FeatureDB, FeatureDBError


def _record(latent: int, dead: bool = False) -> LatentRecord:
    if dead:
        return LatentRecord(latent=latent, density=0.0, max_activation=0.0)
    ex = [Example(context_index=10 + i, start=2, tokens=[1, 2, 3], activations=[0.0, 1.5 + i, 0.25],
                  peak_position=1, kind="top", split="explain" if i % 2 else "score") for i in range(4)]
    ex.append(Example(context_index=99, start=0, tokens=[4, 5, 6], activations=[0.0] * 3, peak_position=0,
                      kind="random", split="score"))
    ex.append(Example(context_index=50, start=0, tokens=[7, 8, 9], activations=[0.1, 0.2, 0.0],
                      peak_position=1, kind="quantile", split="explain", quantile=2))
    return LatentRecord(latent=latent, density=0.1, max_activation=4.5, top=ex[:4], random=[ex[4]], quantiles=[ex[5]])


@pytest.fixture
def db(tmp_path):
    with FeatureDB(tmp_path / "features.db") as d:
        yield d


def test_features_examples_idempotent(db):
    ids = db.put_features("d", [_record(0), _record(1), _record(2, dead=True)])
    again = db.put_features("d", [_record(0), _record(1), _record(2, dead=True)])
    assert ids == again and len(db.features()) == 3
    assert [f["latent"] for f in db.features(include_dead=False)] == [0, 1]
    exs = db.examples(ids[0])
    assert len(exs) == 6  # replaced, not duplicated
    assert exs[0]["tokens"] == [1, 2, 3] and exs[0]["activations"] == [0.0, 1.5, 0.25] and exs[0]["peak"] == 1
    assert {e["context_index"] for e in db.examples(ids[0], split="explain")} == {11, 13, 50}
    assert [e["quantile"] for e in db.examples(ids[0], kind="quantile")] == [2]
    assert db.examples(ids[2]) == [] and db.feature_id("d", 2) == ids[2]


def test_failed_rows_hold_no_value(db):
    fid = db.put_features("d", [_record(0)])[0]
    with pytest.raises(ValueError, match="must not have text"):
        db.put_explanation(fid, "top", "m", "parse_error", text="could not be parsed")
    with pytest.raises(ValueError, match="status must be one of"):
        db.put_explanation(fid, "top", "m", "failed")
    with pytest.raises(ValueError, match="must have text"):
        db.put_explanation(fid, "top", "m", "ok")
    eid = db.put_explanation(fid, "top", "m", "ok", text="the letter x")
    with pytest.raises(ValueError, match="must not have a value"):
        db.put_score(fid, eid, "detection", "m", "timeout", value=0.0)
    with pytest.raises(ValueError, match="finite"):
        db.put_score(fid, eid, "detection", "m", "ok", value=float("nan"))
    # the database itself refuses them too (CHECK constraints), whatever writes to it
    raw = db.con
    bad = [
        ("INSERT INTO explanations (feature_id, explainer, model, text, status, created) "
         "VALUES (?, 'x', 'm', 'some text', 'parse_error', 'now')", (fid,)),
        ("INSERT INTO explanations (feature_id, explainer, model, text, status, created) "
         "VALUES (?, 'x', 'm', 'some text', 'weird', 'now')", (fid,)),
        ("INSERT INTO scores (feature_id, explanation_id, scorer, model, control, value, status, created) "
         "VALUES (?, ?, 's', 'm', 'none', 0.0, 'error', 'now')", (fid, eid)),
        ("INSERT INTO scores (feature_id, explanation_id, scorer, model, control, value, status, created) "
         "VALUES (?, ?, 's', 'm', 'none', NULL, 'ok', 'now')", (fid, eid)),
        ("INSERT INTO scores (feature_id, explanation_id, scorer, model, control, value, status, created) "
         "VALUES (?, NULL, 's', 'm', 'none', 0.5, 'ok', 'now')", (fid,)),  # no explanation, not a baseline
        ("INSERT INTO scores (feature_id, explanation_id, scorer, model, control, value, status, ci_low, ci_high, "
         "created) VALUES (?, ?, 's', 'm', 'none', 0.5, 'ok', 0.9, 0.1, 'now')", (fid, eid)),
        ("INSERT INTO examples (feature_id, kind, split, context_index, start, tokens, activations, peak) "
         "VALUES (?, 'top', 'train', 1, 0, '[]', '[]', 0)", (fid,)),
    ]
    for sql, params in bad:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute(sql, params)
    assert len(db.explanations()) == 1 and db.scores() == []


def test_todo_lists_shrink_and_failures_come_back(db):
    ids = db.put_features("d", [_record(i) for i in range(3)] + [_record(3, dead=True)])
    todo = lambda: [f["latent"] for f in db.explanations_todo("top", "m")]  # noqa: E731
    assert todo() == [0, 1, 2]  # the dead latent is never explained
    e0 = db.put_explanation(ids[0], "top", "m", "ok", text="x")
    db.put_explanation(ids[1], "top", "m", "rate_limited", error="429", raw_response="slow down")
    assert todo() == [1, 2]  # the failed one comes back
    assert [f["latent"] for f in db.explanations_todo("top", "other-model")] == [0, 1, 2]
    failed = db.explanations(ids[1])[0]
    assert failed["text"] is None and failed["status"] == "rate_limited" and failed["error"] == "429"
    # a failure never overwrites an ok row; re-putting the same ok row changes nothing
    assert db.put_explanation(ids[0], "top", "m", "timeout") == e0
    assert db.explanations(ids[0])[0]["text"] == "x"
    e1 = db.put_explanation(ids[1], "top", "m", "ok", text="y")
    assert todo() == [2] and len(db.explanations()) == 2

    stodo = lambda: [r["latent"] for r in db.scores_todo("detection", "s")]  # noqa: E731
    assert stodo() == [0, 1]
    db.put_score(ids[0], e0, "detection", "s", "ok", value=0.8, n=40, ci_low=0.7, ci_high=0.9,
                 details={"tp": 3})
    db.put_score(ids[1], e1, "detection", "s", "parse_error", error="no number")
    assert stodo() == [1]
    db.put_score(ids[0], e0, "detection", "s", "ok", value=0.8, n=40, ci_low=0.7, ci_high=0.9, details={"tp": 3})
    db.put_score(ids[0], e0, "detection", "s", "error", error="late failure")  # does not replace the ok one
    (s0,) = db.scores(ids[0])
    assert s0["value"] == 0.8 and s0["details"] == {"tp": 3} and s0["status"] == "ok"
    db.put_score(ids[1], e1, "detection", "s", "ok", value=0.6, n=40)
    assert stodo() == [] and len(db.scores()) == 2
    # controls are their own work; a baseline has no explanation and is idempotent too
    assert [r["latent"] for r in db.scores_todo("detection", "s", control="baseline")] == [0, 1]
    for _ in range(2):
        db.put_score(ids[0], None, "detection", "s", "ok", value=0.5, control="baseline")
    assert len(db.scores(ids[0])) == 2
    assert [r["latent"] for r in db.scores_todo("detection", "s", control="baseline")] == [1]
    # a random-explanation control belongs to its explanation: a second explanation of feature 0
    # is still to do under that control when the first one's is done
    db.put_score(ids[0], e0, "detection", "s", "ok", value=0.4, control="random_explanation")
    e0b = db.put_explanation(ids[0], "other", "m", "ok", text="z")
    rtodo = [(r["latent"], r["explanation_id"]) for r in db.scores_todo("detection", "s", "random_explanation")]
    assert (0, e0b) in rtodo and (0, e0) not in rtodo
    # a new ok text for an explanation invalidates the scores of the old text
    db.put_explanation(ids[0], "top", "m", "ok", text="x, revised")
    assert db.scores(explanation_id=e0) == []
    assert [r["latent"] for r in db.scores_todo("detection", "s", explainer="top")] == [0]


def test_transaction_is_atomic_and_readers_see_committed_state(db, tmp_path):
    ids = db.put_features("d", [_record(0), _record(1)])
    reader = FeatureDB(tmp_path / "features.db")
    assert db.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with db.transaction():
        db.put_explanation(ids[0], "top", "m", "ok", text="x")
        # WAL: a second connection reads (the last committed state) while the write is open
        assert reader.explanations() == [] and len(reader.features()) == 2
    assert len(reader.explanations()) == 1
    with pytest.raises(RuntimeError, match="boom"), db.transaction():
        db.put_explanation(ids[1], "top", "m", "ok", text="y")
        raise RuntimeError("boom")
    assert len(db.explanations()) == 1 and len(reader.explanations()) == 1  # rolled back
    reader.close()


def test_migrates_a_v1_database(tmp_path):
    path = tmp_path / "features.db"
    con = sqlite3.connect(path, isolation_level=None)  # a v1 store, as the first release wrote it
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    featuredb.MIGRATIONS[1](con)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO features (dictionary, latent, density, max_act, dead) VALUES ('d', 7, 0.2, 3.0, 0)")
    con.execute("INSERT INTO examples (feature_id, kind, split, context_index, start, tokens, activations, peak) "
                "VALUES (1, 'top', 'explain', 4, 0, '[1]', '[2.0]', 0)")
    con.close()
    with FeatureDB(path) as db:
        assert db.schema_version() == SCHEMA_VERSION
        assert db.features()[0]["latent"] == 7
        (e,) = db.examples(1)
        assert e["quantile"] is None and e["tokens"] == [1]  # the v2 column, old rows kept
        db.put_examples(1, [Example(5, 0, [1], [1.0], 0, "quantile", "score", quantile=1)])
        assert db.examples(1)[0]["quantile"] == 1
    with FeatureDB(path) as db:  # reopening a current db changes nothing
        assert db.schema_version() == SCHEMA_VERSION and len(db.examples(1)) == 1


def test_refuses_newer_or_foreign_databases(tmp_path):
    path = tmp_path / "features.db"
    FeatureDB(path).close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.close()
    with pytest.raises(FeatureDBError, match=rf"schema version {SCHEMA_VERSION + 1}, newer.*upgrade autointerp"):
        FeatureDB(path)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(FeatureDBError, match="not a feature store"):
        FeatureDB(other)
