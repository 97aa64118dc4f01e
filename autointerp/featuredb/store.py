"""``FeatureDB``: one ``features.db`` opened (created or migrated), its transactions, and the reads
and idempotent writes of features, examples, explanations, scores, flags and diffs."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autointerp.featuredb.schema import (CONTROLS, MIGRATIONS, SCHEMA_VERSION, SIGNALS, STATUSES, Control,
                                         FeatureDBError, Status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


class FeatureDB:
    """One ``features.db``; ``FeatureDB(path)`` creates or migrates it. Not thread-safe: one
    object per thread or process (SQLite handles several processes)."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; ``transaction()`` issues BEGIN/COMMIT
        self.con = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.con.row_factory = sqlite3.Row
        self._depth = 0
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA foreign_keys=ON")
        try:
            self._migrate()
        except BaseException:
            self.con.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[FeatureDB]:
        """All writes inside commit together or not at all; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock later
        self._depth = 1
        try:
            yield self
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")
        finally:
            self._depth = 0

    def schema_version(self) -> int:
        tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables:
                raise FeatureDBError(f"{self.path} is an SQLite database but not a feature store "
                                     f"(tables {sorted(tables)}, no meta table)")
            return 0
        row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise FeatureDBError(f"{self.path}: meta table has no schema_version")
        return int(row[0])

    def _migrate(self) -> None:
        with self.transaction():
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise FeatureDBError(
                    f"{self.path} has schema version {version}, newer than this autointerp reads "
                    f"({SCHEMA_VERSION}): upgrade autointerp to open it")
            if version == 0:
                self.con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](self.con)
            if version < SCHEMA_VERSION:
                self.con.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    # -- features and examples -----------------------------------------------------------
    def put_features(self, dictionary: str, records: Iterable[Any], examples: bool = True) -> dict[int, int]:
        """Upsert one row per record (``LatentRecord``-like: ``latent``, ``density``,
        ``max_activation``, ``dead``, ``examples``); with ``examples``, replace each feature's
        examples by the record's. Returns ``{latent: feature_id}``."""
        ids = {}
        with self.transaction():
            for rec in records:
                latent = int(_field(rec, "latent"))
                row = self.con.execute(
                    "INSERT INTO features (dictionary, latent, density, max_act, dead) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (dictionary, latent) DO UPDATE SET density = excluded.density, "
                    "max_act = excluded.max_act, dead = excluded.dead RETURNING id",
                    (dictionary, latent, float(_field(rec, "density")), float(_field(rec, "max_activation")),
                     int(bool(_field(rec, "dead"))))).fetchone()
                ids[latent] = row[0]
                if examples:
                    self.put_examples(row[0], _field(rec, "examples"))
        return ids

    def put_examples(self, feature_id: int, examples: Iterable[Any]) -> None:
        """Replace the examples of ``feature_id`` (``Example``-like objects or dicts)."""
        with self.transaction():
            self.con.execute("DELETE FROM examples WHERE feature_id = ?", (feature_id,))
            self.con.executemany(
                "INSERT INTO examples (feature_id, kind, split, quantile, context_index, start, tokens, activations, "
                "peak) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(feature_id, _field(e, "kind"), _field(e, "split"), _field(e, "quantile"),
                  int(_field(e, "context_index")), int(_field(e, "start")), json.dumps(list(_field(e, "tokens"))),
                  json.dumps([float(a) for a in _field(e, "activations")]), int(_field(e, "peak_position")))
                 for e in examples])

    def feature_id(self, dictionary: str, latent: int) -> int:
        row = self.con.execute("SELECT id FROM features WHERE dictionary = ? AND latent = ?",
                               (dictionary, latent)).fetchone()
        if row is None:
            raise KeyError(f"no feature ({dictionary!r}, {latent}) in {self.path}")
        return row[0]

    # -- model outputs -------------------------------------------------------------------
    def put_explanation(self, feature_id: int, explainer: str, model: str, status: Status, text: str | None = None,
                        raw_response: str | None = None, error: str | None = None) -> int:
        """Record one explainer call; returns the explanation id. An ``ok`` one needs ``text``, a
        failed one must have none. A failed call never overwrites an ``ok`` row; a changed
        ``ok`` text drops the scores of the old text."""
        _check_status(status)
        if (status == "ok") != (text is not None):
            raise ValueError(f"an explanation with status {status!r} must {'' if status == 'ok' else 'not '}"
                             f"have text (got {text!r})")
        with self.transaction():
            old = self.con.execute("SELECT id, text FROM explanations WHERE feature_id = ? AND explainer = ? "
                                   "AND model = ?", (feature_id, explainer, model)).fetchone()
            self.con.execute(
                "INSERT INTO explanations (feature_id, explainer, model, text, status, raw_response, error, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (feature_id, explainer, model) DO UPDATE SET "
                "text = excluded.text, status = excluded.status, raw_response = excluded.raw_response, "
                "error = excluded.error, created = excluded.created "
                "WHERE explanations.status != 'ok' OR excluded.status = 'ok'",
                (feature_id, explainer, model, text, status, raw_response, error, _now()))
            if old is not None and status == "ok" and old["text"] is not None and old["text"] != text:
                self.con.execute("DELETE FROM scores WHERE explanation_id = ?", (old["id"],))
            return self.con.execute("SELECT id FROM explanations WHERE feature_id = ? AND explainer = ? AND model = ?",
                                    (feature_id, explainer, model)).fetchone()[0]

    def put_score(self, feature_id: int, explanation_id: int | None, scorer: str, model: str, status: Status,
                  value: float | None = None, n: int | None = None, ci_low: float | None = None,
                  ci_high: float | None = None, control: Control = "none", details: dict | None = None,
                  error: str | None = None) -> int:
        """Record one scorer run; returns the score id. ``explanation_id`` is None exactly for
        ``control="baseline"``. An ``ok`` score needs a finite ``value``, a failed one has none."""
        _check_status(status)
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        if (status == "ok") != (value is not None):
            raise ValueError(f"a score with status {status!r} must {'' if status == 'ok' else 'not '}"
                             f"have a value (got {value!r})")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"score value must be finite, got {value}: record a failed status instead")
        with self.transaction():
            self.con.execute(
                "INSERT INTO scores (feature_id, explanation_id, scorer, model, control, value, status, n, ci_low, "
                "ci_high, details, error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (feature_id, IFNULL(explanation_id, -1), scorer, model, control) DO UPDATE SET "
                "value = excluded.value, status = excluded.status, n = excluded.n, ci_low = excluded.ci_low, "
                "ci_high = excluded.ci_high, details = excluded.details, error = excluded.error, "
                "created = excluded.created WHERE scores.status != 'ok' OR excluded.status = 'ok'",
                (feature_id, explanation_id, scorer, model, control, value, status, n, ci_low, ci_high,
                 json.dumps(details) if details is not None else None, error, _now()))
            return self.con.execute(
                "SELECT id FROM scores WHERE feature_id = ? AND IFNULL(explanation_id, -1) = IFNULL(?, -1) "
                "AND scorer = ? AND model = ? AND control = ?",
                (feature_id, explanation_id, scorer, model, control)).fetchone()[0]

    # -- work lists ----------------------------------------------------------------------
    def explanations_todo(self, explainer: str, model: str, dictionary: str | None = None) -> list[dict]:
        """Live features with no ``ok`` explanation by ``(explainer, model)``: never tried or failed."""
        return self._dicts(
            "SELECT f.* FROM features f WHERE f.dead = 0 AND (? IS NULL OR f.dictionary = ?) AND NOT EXISTS "
            "(SELECT 1 FROM explanations e WHERE e.feature_id = f.id AND e.explainer = ? AND e.model = ? "
            "AND e.status = 'ok') ORDER BY f.dictionary, f.latent", (dictionary, dictionary, explainer, model))

    def scores_todo(self, scorer: str, model: str, control: Control = "none", explainer: str | None = None,
                    explainer_model: str | None = None) -> list[dict]:
        """``ok`` explanations (optionally of one explainer / explainer model) with no ``ok`` score by
        ``(scorer, model)`` under ``control``: rows ``{feature_id, dictionary, latent,
        explanation_id, explainer, explainer_model, text}``. For ``random_explanation`` and
        ``baseline`` the caller picks the control's explanation (or none); the key is this one's
        feature."""
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
        own = "1" if control == "baseline" else "s.explanation_id = e.id"
        return self._dicts(
            "SELECT f.id AS feature_id, f.dictionary, f.latent, e.id AS explanation_id, e.explainer, "
            "e.model AS explainer_model, e.text FROM explanations e JOIN features f ON f.id = e.feature_id "
            "WHERE e.status = 'ok' AND (? IS NULL OR e.explainer = ?) AND (? IS NULL OR e.model = ?) "
            f"AND NOT EXISTS (SELECT 1 FROM scores s WHERE s.feature_id = f.id AND {own} AND s.scorer = ? "
            "AND s.model = ? AND s.control = ? AND s.status = 'ok') ORDER BY f.dictionary, f.latent, e.id",
            (explainer, explainer, explainer_model, explainer_model, scorer, model, control))

    # -- readers -------------------------------------------------------------------------
    def _dicts(self, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(r) for r in self.con.execute(sql, params)]

    def features(self, dictionary: str | None = None, include_dead: bool = True) -> list[dict]:
        rows = self._dicts("SELECT * FROM features WHERE (? IS NULL OR dictionary = ?) ORDER BY dictionary, latent",
                           (dictionary, dictionary))
        return [r for r in rows if include_dead or not r["dead"]]

    def examples(self, feature_id: int, split: str | None = None, kind: str | None = None) -> list[dict]:
        """The feature's examples, tokens and activations decoded, in insertion order."""
        rows = self._dicts("SELECT * FROM examples WHERE feature_id = ? AND (? IS NULL OR split = ?) "
                           "AND (? IS NULL OR kind = ?) ORDER BY id", (feature_id, split, split, kind, kind))
        for r in rows:
            r["tokens"], r["activations"] = json.loads(r["tokens"]), json.loads(r["activations"])
        return rows

    def explanations(self, feature_id: int | None = None, status: str | None = None) -> list[dict]:
        return self._dicts("SELECT * FROM explanations WHERE (? IS NULL OR feature_id = ?) "
                           "AND (? IS NULL OR status = ?) ORDER BY id", (feature_id, feature_id, status, status))

    def scores(self, feature_id: int | None = None, explanation_id: int | None = None,
               status: str | None = None) -> list[dict]:
        rows = self._dicts("SELECT * FROM scores WHERE (? IS NULL OR feature_id = ?) "
                           "AND (? IS NULL OR explanation_id = ?) AND (? IS NULL OR status = ?) ORDER BY id",
                           (feature_id, feature_id, explanation_id, explanation_id, status, status))
        for r in rows:
            r["details"] = json.loads(r["details"]) if r["details"] is not None else None
        return rows

    # -- flags ---------------------------------------------------------------------------
    _FLAG_COLUMNS = (*(f"{s}{x}" for s in SIGNALS for x in ("", "_z", "_p", "_status")), "causal_details",
                     "score", "flagged", "settings", "error")

    def put_flag(self, feature_id: int, watchlist: str, watchlist_hash: str, concept: str, **values: Any) -> int:
        """Insert or replace the flag of ``(feature_id, watchlist, concept)``; returns its id.

        ``values``: per signal in ``SIGNALS`` ``<signal>``, ``<signal>_z``, ``<signal>_p``,
        ``<signal>_status`` (all None when not measured; a failed status has no numbers),
        ``causal_details`` and ``settings`` (dicts, stored as JSON), ``score`` (required),
        ``flagged`` (bool, required), ``error``."""
        unknown = set(values) - set(self._FLAG_COLUMNS)
        if unknown:
            raise ValueError(f"unknown flag field(s) {sorted(unknown)}")
        for sig in SIGNALS:
            status = values.get(f"{sig}_status")
            if status is not None:
                _check_status(status)
            for x in ("", "_z", "_p"):
                v = values.get(f"{sig}{x}")
                if v is not None and not math.isfinite(v):
                    raise ValueError(f"{sig}{x} must be finite, got {v}: record a failed status instead")
            if (values.get(sig) is not None) != (status == "ok"):
                raise ValueError(f"signal {sig!r} with status {status!r} must {'' if status == 'ok' else 'not '}"
                                 f"have a value (got {values.get(sig)!r})")
        if not math.isfinite(values["score"]):
            raise ValueError(f"flag score must be finite, got {values['score']}")
        row = {c: values.get(c) for c in self._FLAG_COLUMNS}
        row["flagged"] = int(bool(values["flagged"]))
        for c in ("causal_details", "settings"):
            row[c] = json.dumps(row[c]) if row[c] is not None else None
        cols = ["feature_id", "watchlist", "watchlist_hash", "concept", *self._FLAG_COLUMNS, "created"]
        params = [feature_id, watchlist, watchlist_hash, concept, *row.values(), _now()]
        update = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        with self.transaction():
            return self.con.execute(
                f"INSERT INTO flags ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT (feature_id, watchlist, concept) DO UPDATE SET {update} RETURNING id",
                params).fetchone()[0]

    def delete_flags(self, watchlist: str, concept: str | None = None, dictionary: str | None = None) -> int:
        """Remove the flags of ``watchlist`` (one ``concept``, one ``dictionary``'s features); returns
        how many rows went."""
        with self.transaction():
            return self.con.execute(
                "DELETE FROM flags WHERE watchlist = ? AND (? IS NULL OR concept = ?) AND (? IS NULL OR "
                "feature_id IN (SELECT id FROM features WHERE dictionary = ?))",
                (watchlist, concept, concept, dictionary, dictionary)).rowcount

    def flags(self, feature_id: int | None = None, watchlist: str | None = None, concept: str | None = None,
              flagged: bool | None = None) -> list[dict]:
        """Flag rows (with the feature's ``dictionary`` and ``latent``), JSON decoded, best score first."""
        rows = self._dicts(
            "SELECT g.*, f.dictionary, f.latent FROM flags g JOIN features f ON f.id = g.feature_id "
            "WHERE (? IS NULL OR g.feature_id = ?) AND (? IS NULL OR g.watchlist = ?) AND (? IS NULL OR "
            "g.concept = ?) AND (? IS NULL OR g.flagged = ?) ORDER BY g.score DESC, g.id",
            (feature_id, feature_id, watchlist, watchlist, concept, concept,
             None if flagged is None else int(flagged), None if flagged is None else int(flagged)))
        for r in rows:
            r["flagged"] = bool(r["flagged"])
            for c in ("causal_details", "settings"):
                r[c] = json.loads(r[c]) if r[c] is not None else None
        return rows

    # -- model diffs -------------------------------------------------------------------------
    _DIFF_COLUMNS = ("rank", "freq_base", "freq_tuned", "mean_base", "mean_tuned", "max_base", "max_tuned",
                     "n_new", "n_lost", "z", "effect", "significant", "counterpart_cos")
    _DIFF_OPTIONAL = ("n_jump", "max_jump")

    def put_diffs(self, dictionary: str, base: str, z_min: float, rows: Iterable[Mapping],
                  jump_min: int | None = None, rank_by: str | None = None) -> None:
        """Replace the diff of ``dictionary``'s features against the model ``base`` (one
        transaction: a killed write leaves the previous diff whole). ``rows`` carry ``latent`` and
        the ``diffs`` columns (``n_jump``/``max_jump`` optional); every latent must already have
        its feature row."""
        ids = {f["latent"]: f["id"] for f in self.features(dictionary)}
        rows = list(rows)
        missing = [r["latent"] for r in rows if r["latent"] not in ids]
        if missing:
            raise FeatureDBError(f"{len(missing)} diffed latents of {dictionary!r} have no feature row "
                                 f"(first: {missing[0]}): run the examples stage first")
        cols = self._DIFF_COLUMNS + self._DIFF_OPTIONAL
        sql = (f"INSERT INTO diffs (feature_id, base, z_min, jump_min, rank_by, created, {', '.join(cols)}) "
               f"VALUES (?, ?, ?, ?, ?, ?, {', '.join('?' for _ in cols)})")
        now = _now()
        with self.transaction():
            self.con.execute("DELETE FROM diffs WHERE base = ? AND feature_id IN "
                             "(SELECT id FROM features WHERE dictionary = ?)", (base, dictionary))
            self.con.executemany(sql, [(ids[r["latent"]], base, z_min, jump_min, rank_by, now,
                                        *(r.get(c) for c in cols)) for r in rows])

    def diffs(self, base: str | None = None, dictionary: str | None = None) -> list[dict]:
        """Stored diff rows (with ``dictionary`` and ``latent``), by base model then rank."""
        where, params = [], []
        if base is not None:
            where.append("d.base = ?")
            params.append(base)
        if dictionary is not None:
            where.append("f.dictionary = ?")
            params.append(dictionary)
        sql = ("SELECT d.*, f.dictionary, f.latent FROM diffs d JOIN features f ON f.id = d.feature_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.base, f.dictionary, d.rank")
        rows = self._dicts(sql, tuple(params))
        for r in rows:
            r["significant"] = bool(r["significant"])
        return rows
