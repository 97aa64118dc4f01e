"""The feature store ``features.db``: features, their examples, explanations and scores (SQLite).

Tables (``SCHEMA_VERSION`` 5)::

    meta          key -> value ('schema_version')
    features      (dictionary, latent) unique; density, max_act, dead
    examples      (feature, kind, context_index) unique; kind top/quantile/random, split
                  explain/score, quantile bin, window start, tokens and activations (JSON), peak
    explanations  (feature, explainer, model) unique; text, status, raw_response, error, created
    scores        (feature, explanation, scorer, model, control) unique; value, status, n,
                  ci_low, ci_high, control none/random_explanation/baseline, details (JSON)
    flags         (feature, watchlist, concept) unique; watchlist_hash (of the concept's definition),
                  per signal (similarity, auroc, causal) its value, z against the null of random
                  features, empirical p and status; causal details (JSON), combined score, flagged,
                  settings (JSON): see ``autointerp.flagging``
    diffs         (feature, base model) unique; rank, firing frequency, mean and max activation
                  on the base and the fine-tuned model, n_new/n_lost, z, effect, n_jump,
                  max_jump, significant, counterpart_cos, the ranking and thresholds used:
                  see ``autointerp.diff`` (n_jump, max_jump, jump_min, rank_by: version 5; NULL
                  in rows written before)

Nothing failed is stored as a value: every row that comes from a model call has a ``status`` in
``STATUSES``, and CHECK constraints make ``text`` (explanations) and ``value`` (scores) NULL
exactly when the status is not ``ok``. A failed row records the failure (``error``, the raw
response) and is work still to do: ``explanations_todo`` / ``scores_todo`` list it again, while
``ok`` rows are skipped. A failed re-put never overwrites an ``ok`` row. A flag's signal that was
not measured (no ok explanation, not a causal candidate) has a NULL status and NULL numbers; one
that failed has a failed status and NULL numbers.

Writes are idempotent (UNIQUE keys, ``INSERT ... ON CONFLICT DO UPDATE``) and transactional:
each ``put_*`` is atomic, and ``with db.transaction():`` groups several into one. The database
runs in WAL mode, so readers (other connections or processes) are never blocked by a writer.

Migrations: ``MIGRATIONS[v]`` upgrades a database from version ``v - 1`` to ``v`` (version 0 is
an empty file); opening an older database applies the missing ones in one transaction. A
database of a newer schema than this code knows is refused (``FeatureDBError``).
"""

from autointerp.featuredb.schema import (CONTROLS, KINDS, MIGRATIONS, SCHEMA_VERSION, SIGNALS, SPLITS, STATUSES,
                                         Control, FeatureDBError, Status)
from autointerp.featuredb.store import FeatureDB

__all__ = ["CONTROLS", "KINDS", "MIGRATIONS", "SCHEMA_VERSION", "SIGNALS", "SPLITS", "STATUSES", "Control",
           "FeatureDB", "FeatureDBError", "Status"]
