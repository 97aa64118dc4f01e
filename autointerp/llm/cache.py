"""An on-disk cache of successful completions (SQLite, one file).

key = sha256(json({"model", "messages", "params"}))   (canonical JSON: sorted keys)

Only ``ok`` completions are stored: a failure cached would turn a transient outage into a
permanent answer. Nothing but the key and the completion is written (no credentials, no
base URL). Safe to share between threads: one connection guarded by a lock; SQLite's own
locking (with a busy timeout) covers several processes sharing the file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from autointerp.llm.base import Completion, Message


def cache_key(model: str, messages: list[Message], params: dict) -> str:
    """sha256 hex of the canonical JSON of (model, messages, parameters)."""
    blob = json.dumps({"model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """``get``/``put`` completions by (model, messages, parameters)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: the lock, not thread affinity, serialises access.
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def get(self, model: str, messages: list[Message], params: dict) -> Completion | None:
        """The stored completion (marked ``cached=True``, ``latency_s=0``), or None."""
        key = cache_key(model, messages, params)
        with self._lock:
            row = self._conn.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        return Completion.from_dict({**d, "cached": True, "latency_s": 0.0})

    def put(self, model: str, messages: list[Message], params: dict, completion: Completion) -> bool:
        """Store ``completion`` if it is ok; returns whether it was stored."""
        if not completion.ok:
            return False
        d = completion.to_dict()
        d.pop("cached")
        d.pop("latency_s")
        key = cache_key(model, messages, params)
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO completions (key, value) VALUES (?, ?)",
                               (key, json.dumps(d, ensure_ascii=False)))
        return True

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
