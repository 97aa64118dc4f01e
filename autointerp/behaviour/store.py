"""The per-prompt table of a behaviour diff, in SQLite (``RUN/behaviour/prompts.sqlite``).

One row per prompt, written batch by batch, each batch in one transaction: a killed job leaves
whole batches only, and a rerun computes exactly the prompts that have no row (``INSERT`` on the
primary key: a row is never written twice). The settings the rows depend on (both models'
checksums, the prompts' hash, the answer length, the dictionary) are stored once; rows made with
other settings are refused unless the table is cleared (``force``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    prompt INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    kl_first REAL NOT NULL, kl_mean REAL NOT NULL, kl_max REAL NOT NULL, n_answer INTEGER NOT NULL,
    kl_tokens TEXT NOT NULL,
    suspect_ids TEXT NOT NULL, base_ids TEXT,
    suspect_answer TEXT NOT NULL, base_answer TEXT,
    acts_prompt BLOB, acts_answer BLOB
);
"""
COLUMNS = ("prompt", "text", "kl_first", "kl_mean", "kl_max", "n_answer", "kl_tokens", "suspect_ids", "base_ids",
           "suspect_answer", "base_answer")


class SettingsMismatch(ValueError):
    """The table holds rows computed with other settings."""


class BehaviourStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "BehaviourStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def settings(self) -> dict | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        return None if row is None else json.loads(row[0])

    def claim(self, settings: dict, force: bool = False) -> None:
        """Bind the table to ``settings``: a fresh table takes them; one made with other settings
        raises :class:`SettingsMismatch` naming the fields, or is cleared when ``force``."""
        have = self.settings()
        if have == settings:
            return
        if have is not None:
            if not force:
                changed = sorted(k for k in set(have) | set(settings) if have.get(k) != settings.get(k))
                raise SettingsMismatch(f"{self.path} holds a behaviour diff made with other settings "
                                       f"({', '.join(changed)} changed): pass force to recompute it")
            with self.conn:
                self.conn.execute("DELETE FROM prompts")
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (json.dumps(settings),))

    def done(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT prompt FROM prompts")}

    def put_batch(self, rows: list[dict]) -> None:
        """Insert one batch's rows in one transaction (a duplicate prompt is an error, not a
        second row)."""
        with self.conn:
            self.conn.executemany(
                f"INSERT INTO prompts ({', '.join(COLUMNS)}, acts_prompt, acts_answer) "
                f"VALUES ({', '.join('?' * (len(COLUMNS) + 2))})",
                [(*[json.dumps(r[c]) if c in ("kl_tokens", "suspect_ids", "base_ids") else r[c] for c in COLUMNS],
                  _blob(r.get("acts_prompt")), _blob(r.get("acts_answer"))) for r in rows])

    def rows(self) -> list[dict]:
        """Every row, by prompt index (without the activation blobs)."""
        cur = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM prompts ORDER BY prompt")
        out = []
        for values in cur:
            r = dict(zip(COLUMNS, values))
            for c in ("kl_tokens", "suspect_ids", "base_ids"):
                r[c] = json.loads(r[c]) if r[c] is not None else None
            out.append(r)
        return out

    def activations(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(prompt_max [P, F], answer_max [P, F])`` in prompt order, or None when the rows were
        made without a dictionary."""
        cur = self.conn.execute("SELECT acts_prompt, acts_answer FROM prompts ORDER BY prompt")
        pairs = [(a, b) for a, b in cur]
        if not pairs or pairs[0][0] is None:
            return None
        to = lambda b: np.frombuffer(b, dtype=np.float32)  # noqa: E731
        return np.stack([to(a) for a, _ in pairs]), np.stack([to(b) for _, b in pairs])


def _blob(x) -> bytes | None:
    return None if x is None else np.asarray(x, dtype=np.float32).tobytes()
