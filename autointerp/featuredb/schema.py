"""The tables of ``features.db`` (module docstring of :mod:`autointerp.featuredb`), their allowed
values, and the migrations that build and upgrade them (``MIGRATIONS[v]``: version ``v - 1`` to ``v``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Literal

SCHEMA_VERSION = 5
STATUSES = ("ok", "parse_error", "timeout", "rate_limited", "refused", "error")
CONTROLS = ("none", "random_explanation", "baseline")
KINDS = ("top", "quantile", "random")
SPLITS = ("explain", "score")

Status = Literal["ok", "parse_error", "timeout", "rate_limited", "refused", "error"]
Control = Literal["none", "random_explanation", "baseline"]


class FeatureDBError(RuntimeError):
    """A database this code cannot use (newer schema, not a feature store)."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _v1(con: sqlite3.Connection) -> None:
    """The first schema."""
    # statement by statement: ``executescript`` would COMMIT the migration's open transaction
    ddl = f"""
        CREATE TABLE features (
            id INTEGER PRIMARY KEY,
            dictionary TEXT NOT NULL,
            latent INTEGER NOT NULL CHECK (latent >= 0),
            density REAL NOT NULL CHECK (density >= 0 AND density <= 1),
            max_act REAL NOT NULL,
            dead INTEGER NOT NULL CHECK (dead IN (0, 1)),
            UNIQUE (dictionary, latent)
        );
        CREATE TABLE examples (
            id INTEGER PRIMARY KEY,
            feature_id INTEGER NOT NULL REFERENCES features(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK ({_in('kind', KINDS)}),
            split TEXT NOT NULL CHECK ({_in('split', SPLITS)}),
            context_index INTEGER NOT NULL,
            start INTEGER NOT NULL,
            tokens TEXT NOT NULL,
            activations TEXT NOT NULL,
            peak INTEGER NOT NULL,
            UNIQUE (feature_id, kind, context_index)
        );
        CREATE TABLE explanations (
            id INTEGER PRIMARY KEY,
            feature_id INTEGER NOT NULL REFERENCES features(id) ON DELETE CASCADE,
            explainer TEXT NOT NULL,
            model TEXT NOT NULL,
            text TEXT,
            status TEXT NOT NULL CHECK ({_in('status', STATUSES)}),
            raw_response TEXT,
            error TEXT,
            created TEXT NOT NULL,
            CHECK ((status = 'ok') = (text IS NOT NULL)),
            UNIQUE (feature_id, explainer, model)
        );
        CREATE TABLE scores (
            id INTEGER PRIMARY KEY,
            feature_id INTEGER NOT NULL REFERENCES features(id) ON DELETE CASCADE,
            explanation_id INTEGER REFERENCES explanations(id) ON DELETE CASCADE,
            scorer TEXT NOT NULL,
            model TEXT NOT NULL,
            control TEXT NOT NULL CHECK ({_in('control', CONTROLS)}),
            value REAL,
            status TEXT NOT NULL CHECK ({_in('status', STATUSES)}),
            n INTEGER CHECK (n IS NULL OR n >= 0),
            ci_low REAL,
            ci_high REAL,
            details TEXT,
            error TEXT,
            created TEXT NOT NULL,
            CHECK ((status = 'ok') = (value IS NOT NULL)),
            CHECK (status = 'ok' OR (ci_low IS NULL AND ci_high IS NULL)),
            CHECK (ci_low IS NULL OR ci_high IS NULL OR ci_low <= ci_high),
            CHECK ((control = 'baseline') = (explanation_id IS NULL))
        );
        -- NULLs are distinct in a UNIQUE constraint: key baseline rows (no explanation) on -1
        CREATE UNIQUE INDEX scores_key ON scores (feature_id, IFNULL(explanation_id, -1), scorer, model, control);
        CREATE INDEX explanations_feature ON explanations (feature_id);
    """
    for statement in ddl.split(";"):
        if statement.strip():
            con.execute(statement)


def _v2(con: sqlite3.Connection) -> None:
    """Examples record their quantile bin."""
    con.execute("ALTER TABLE examples ADD COLUMN quantile INTEGER CHECK (quantile IS NULL OR quantile >= 0)")


SIGNALS = ("similarity", "auroc", "causal")
"""The flag signals; each has ``<signal>``, ``<signal>_z``, ``<signal>_p`` and ``<signal>_status`` columns."""


def _v3(con: sqlite3.Connection) -> None:
    """Feature flags against watchlist concepts (``autointerp flag``)."""
    columns, checks = [], []
    for sig in SIGNALS:
        columns += [f"{sig} REAL", f"{sig}_z REAL", f"{sig}_p REAL CHECK ({sig}_p IS NULL OR ({sig}_p >= 0 "
                    f"AND {sig}_p <= 1))", f"{sig}_status TEXT CHECK ({sig}_status IS NULL OR "
                    f"{_in(sig + '_status', STATUSES)})"]
        # a value exactly when the signal was measured and ok; never a number for a failure
        checks.append(f"CHECK (({sig} IS NOT NULL) = IFNULL({sig}_status = 'ok', 0))")
        checks.append(f"CHECK ({sig} IS NOT NULL OR ({sig}_z IS NULL AND {sig}_p IS NULL))")
    con.execute(f"""
        CREATE TABLE flags (
            id INTEGER PRIMARY KEY,
            feature_id INTEGER NOT NULL REFERENCES features(id) ON DELETE CASCADE,
            watchlist TEXT NOT NULL,
            watchlist_hash TEXT NOT NULL,
            concept TEXT NOT NULL,
            {", ".join(columns)},
            causal_details TEXT,
            score REAL NOT NULL,
            flagged INTEGER NOT NULL CHECK (flagged IN (0, 1)),
            settings TEXT,
            error TEXT,
            created TEXT NOT NULL,
            {", ".join(checks)},
            UNIQUE (feature_id, watchlist, concept)
        )""")
    con.execute("CREATE INDEX flags_concept ON flags (watchlist, concept)")


def _v4(con: sqlite3.Connection) -> None:
    """Model-diff statistics (``autointerp diff``): one row per feature and base model."""
    con.execute("""
        CREATE TABLE diffs (
            id INTEGER PRIMARY KEY,
            feature_id INTEGER NOT NULL REFERENCES features(id) ON DELETE CASCADE,
            base TEXT NOT NULL,
            rank INTEGER NOT NULL CHECK (rank >= 1),
            freq_base REAL NOT NULL, freq_tuned REAL NOT NULL,
            mean_base REAL NOT NULL, mean_tuned REAL NOT NULL,
            max_base REAL NOT NULL, max_tuned REAL NOT NULL,
            n_new INTEGER NOT NULL CHECK (n_new >= 0), n_lost INTEGER NOT NULL CHECK (n_lost >= 0),
            z REAL NOT NULL, effect REAL NOT NULL CHECK (effect >= -1 AND effect <= 1),
            significant INTEGER NOT NULL CHECK (significant IN (0, 1)),
            z_min REAL NOT NULL,
            counterpart_cos REAL,
            created TEXT NOT NULL,
            UNIQUE (feature_id, base)
        )""")


def _v5(con: sqlite3.Connection) -> None:
    """The diff's context-level tail statistic and the ranking used (NULL in older rows)."""
    con.execute("ALTER TABLE diffs ADD COLUMN n_jump INTEGER CHECK (n_jump IS NULL OR n_jump >= 0)")
    con.execute("ALTER TABLE diffs ADD COLUMN max_jump REAL")
    con.execute("ALTER TABLE diffs ADD COLUMN jump_min INTEGER")
    con.execute("ALTER TABLE diffs ADD COLUMN rank_by TEXT")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
