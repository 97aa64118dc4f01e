"""The notebook API: open a run folder and look at its features.

::

    run = open_run("runs/demo")
    run.features[:5]                       # Feature objects (features.db order: dictionary, latent)
    run.features_frame()                   # the same as a pandas DataFrame (pandas optional)
    f = run.feature(12)                    # by features.db id; run.feature(latent=7, dictionary=...)
    f.explanations, f.scores, f.examples   # rows of features.db
    f                                      # in Jupyter: the feature's report fragment
    run.search("closing brackets")         # semantic search over explanations (or mode="fts")
    run.top(by="embedding", n=10)          # best-scored features; by="density": most frequent
    run.activations("import os")           # which features fire on a text
    run.metrics(), run.density_histogram()

``features.db`` is only read, in WAL mode: a job may keep writing it meanwhile; each access
reads the current rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from autointerp import search
from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder
from autointerp.search import FiringFeature, SearchError, SearchResult


@dataclass(frozen=True)
class Feature:
    """One row of ``features``, with its explanations, scores and examples read on access."""

    run: Run
    id: int
    """the ``features.db`` row id."""
    dictionary: str
    latent: int
    density: float
    """fraction of held-out tokens where the latent is > 0."""
    max_act: float
    dead: bool

    @property
    def explanations(self) -> list[dict]:
        """Every explanation row (ok or failed), oldest first."""
        with self.run.db() as db:
            return db.explanations(self.id)

    @property
    def explanation(self) -> str | None:
        """The first ``ok`` explanation's text, if any."""
        return next((e["text"] for e in self.explanations if e["status"] == "ok"), None)

    @property
    def scores(self) -> list[dict]:
        """Every score row, controls included (``control`` none / random_explanation / baseline)."""
        with self.run.db() as db:
            return db.scores(self.id)

    @property
    def examples(self) -> list[dict]:
        """Top, quantile and random examples, tokens and activations decoded."""
        with self.run.db() as db:
            return db.examples(self.id)

    def score(self, scorer: str) -> float | None:
        """The best ``ok`` score by ``scorer`` of any of its explanations (control ``none``)."""
        values = [s["value"] for s in self.scores
                  if s["scorer"] == scorer and s["control"] == "none" and s["status"] == "ok"]
        return max(values, default=None)

    def histogram(self):
        """The report's activation histogram of this feature (a plotly Figure)."""
        from autointerp.report import feature_histogram

        return feature_histogram(self.run.root, self.id)

    def _repr_html_(self) -> str:
        from autointerp.report import feature_fragment_html

        return feature_fragment_html(self.run.root, self.id)

    def __repr__(self) -> str:
        return (f"Feature(id={self.id}, dictionary={self.dictionary!r}, latent={self.latent}, "
                f"density={self.density:.3g}{', dead' if self.dead else ''})")


class Features(Sequence[Feature]):
    """The run's features at the time it was read, in ``features.db`` order (dictionary, latent)."""

    def __init__(self, items: list[Feature]) -> None:
        self._items = items

    @overload
    def __getitem__(self, i: int) -> Feature: ...
    @overload
    def __getitem__(self, i: slice) -> list[Feature]: ...

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Feature]:
        return iter(self._items)

    def __repr__(self) -> str:
        live = sum(not f.dead for f in self._items)
        return f"<{len(self)} features ({live} live) in {len({f.dictionary for f in self._items})} dictionaries>"


class Run:
    """One run folder, read-only. ``open_run(path)`` makes one."""

    def __init__(self, root: str | Path) -> None:
        self.folder = RunFolder(root)
        search.open_db(self.folder).close()  # SearchError now when there is no features.db

    @property
    def root(self) -> Path:
        return self.folder.root

    def db(self) -> FeatureDB:
        """A fresh connection to the run's ``features.db`` (use as a context manager)."""
        return search.open_db(self.folder)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # -- features ------------------------------------------------------------------------
    def _feature(self, row: dict) -> Feature:
        return Feature(self, row["id"], row["dictionary"], row["latent"], row["density"], row["max_act"],
                       bool(row["dead"]))

    @property
    def features(self) -> Features:
        """Every feature (dead ones included), read now."""
        with self.db() as db:
            return Features([self._feature(r) for r in db.features()])

    def dictionaries(self) -> list[str]:
        """The dictionary names the feature store lists."""
        with self.db() as db:
            return [r[0] for r in db.con.execute("SELECT DISTINCT dictionary FROM features ORDER BY dictionary")]

    def feature(self, id: int | None = None, *, latent: int | None = None, dictionary: str | None = None) -> Feature:
        """The feature with ``features.db`` id ``id``, or ``latent`` of ``dictionary`` (which may be
        left out when the run has one dictionary). ``KeyError`` when there is no such feature."""
        if (id is None) == (latent is None):
            raise TypeError("give a feature id, or latent= (and dictionary=), not both")
        with self.db() as db:
            if id is None:
                dictionary = dictionary if dictionary is not None else self._only_dictionary()
                id = db.feature_id(dictionary, latent)
            row = db.con.execute("SELECT * FROM features WHERE id = ?", (id,)).fetchone()
        if row is None:
            raise KeyError(f"no feature with id {id} in {self.folder.db}")
        return self._feature(dict(row))

    def _only_dictionary(self) -> str:
        names = self.dictionaries()
        if len(names) != 1:
            raise ValueError(f"the run has {len(names)} dictionaries ({', '.join(names)}): name one with dictionary=")
        return names[0]

    def features_frame(self):
        """The features as a pandas DataFrame: id, dictionary, latent, density, max_act, dead,
        explanation (first ok one) and one column per scorer (best ok score, control none)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("features_frame() needs pandas (pip install pandas); run.features works without")\
                from exc
        with self.db() as db:
            frame = pd.read_sql_query(
                "SELECT f.id, f.dictionary, f.latent, f.density, f.max_act, f.dead, (SELECT e.text FROM "
                "explanations e WHERE e.feature_id = f.id AND e.status = 'ok' ORDER BY e.id LIMIT 1) AS explanation "
                "FROM features f ORDER BY f.dictionary, f.latent", db.con)
            scores = pd.read_sql_query(
                "SELECT feature_id AS id, scorer, MAX(value) AS value FROM scores WHERE control = 'none' "
                "AND status = 'ok' GROUP BY feature_id, scorer", db.con)
        frame["dead"] = frame["dead"].astype(bool)
        if len(scores):
            frame = frame.merge(scores.pivot(index="id", columns="scorer", values="value"), how="left",
                                left_on="id", right_index=True)
        return frame.set_index("id")

    def top(self, by: str = "density", n: int = 10, ascending: bool = False) -> list[Feature]:
        """The ``n`` features with the largest (``ascending``: smallest) ``by``: ``"density"``,
        ``"max_act"``, or a scorer name (its best ``ok`` score, control ``none``; features
        without one are left out). Dead features are left out."""
        order = "ASC" if ascending else "DESC"
        with self.db() as db:
            if by in ("density", "max_act"):
                rows = db.con.execute(f"SELECT * FROM features WHERE dead = 0 ORDER BY {by} {order}, id LIMIT ?",
                                      (n,)).fetchall()
            else:
                rows = db.con.execute(
                    "SELECT f.*, MAX(s.value) AS v FROM features f JOIN scores s ON s.feature_id = f.id WHERE "
                    "f.dead = 0 AND s.scorer = ? AND s.control = 'none' AND s.status = 'ok' GROUP BY f.id "
                    f"ORDER BY v {order}, f.id LIMIT ?", (by, n)).fetchall()
                if not rows and not db.con.execute("SELECT 1 FROM scores WHERE scorer = ? LIMIT 1", (by,)).fetchone():
                    known = [r[0] for r in db.con.execute("SELECT DISTINCT scorer FROM scores ORDER BY scorer")]
                    raise ValueError(f"by={by!r}: not 'density', 'max_act' nor a scorer of this run "
                                     f"(scorers: {', '.join(known) or 'none yet'})")
        return [self._feature(dict(r)) for r in rows]

    # -- search --------------------------------------------------------------------------
    def search(self, query: str, n: int = 10, mode: Literal["semantic", "fts"] = "semantic") -> list[SearchResult]:
        """Explanations matching ``query``: by meaning (``semantic``) or by words (``fts``)."""
        finders = {"semantic": search.semantic_search, "fts": search.fts_search}
        if mode not in finders:
            raise SearchError(f"mode must be 'semantic' or 'fts', got {mode!r}")
        return finders[mode](self.folder, query, n)

    def activations(self, text: str, n: int = 10, dictionary: str | None = None,
                    device: str = "cpu") -> list[FiringFeature]:
        """The ``n`` features firing most on ``text`` (the dictionaries' model is run on it)."""
        return search.fire_on_text(self.folder, text, n, dictionary, device)

    # -- auditing ------------------------------------------------------------------------
    def flags(self, flagged_only: bool = False) -> list[dict]:
        """The rows ``autointerp flag`` wrote (every signal with its null statistics): flagged rows
        first, each group by combined score; ``flagged_only`` keeps the flagged ones."""
        from autointerp.flagging import flags

        return flags(self.root, flagged_only=flagged_only)

    def circuit(self, prompt: str, target: str, **kwargs):
        """The attribution graph of ``prompt`` to ``target`` (``feature:<dictionary>/<id>``,
        ``feature:<dictionary>/latent=<n>`` or ``logit:<token>``); keyword arguments go to
        :func:`autointerp.circuits.circuit` (the one write of this otherwise read-only view: the
        graph is saved under ``RUN/circuits/`` unless ``save=False``)."""
        from autointerp.circuits import circuit

        return circuit(self.root, prompt, target, **kwargs)

    def behaviour(self):
        """The behaviour diff's per-prompt table (``autointerp diff RUN --behaviour``) as a pandas
        DataFrame, most divergent prompt first; ``autointerp.behaviour.load_behaviour(run)`` gives
        the shape, the outlying prompts and the explaining features too."""
        from autointerp.behaviour import load_behaviour

        return load_behaviour(self.root).frame()

    def diff(self, base: str | None = None, dictionary: str | None = None) -> list[dict]:
        """The model-diff ranking ``autointerp diff`` stored, rank 1 first (empty when not diffed).
        ``base`` and ``dictionary`` may be left out when the run was diffed against one base model
        with one dictionary; ``ValueError`` otherwise."""
        with self.db() as db:
            rows = db.diffs(base=base, dictionary=dictionary)
        keys = {(r["base"], r["dictionary"]) for r in rows}
        if len(keys) > 1:
            raise ValueError(f"the run holds {len(keys)} diffs ({', '.join(f'{b} / {d}' for b, d in sorted(keys))}): "
                             f"name base= and dictionary=")
        return rows

    # -- dictionaries --------------------------------------------------------------------
    def metrics(self) -> dict[str, dict]:
        """Each dictionary's ``metrics.json`` by dictionary name (dictionaries without one left out)."""
        return {d.name: json.loads((d / "metrics.json").read_text())
                for d in self.folder.dictionary_dirs() if (d / "metrics.json").is_file()}

    def density_histogram(self, bins: int = 50):
        """A plotly Figure: the live features' log10 firing density, one trace per dictionary."""
        import plotly.graph_objects as go

        fig = go.Figure()
        by_dictionary: dict[str, list[float]] = {}
        for f in self.features:
            if not f.dead:
                by_dictionary.setdefault(f.dictionary, []).append(math.log10(f.density))
        for name, values in by_dictionary.items():
            fig.add_trace(go.Histogram(x=values, name=name, nbinsx=bins, opacity=0.75))
        fig.update_layout(barmode="overlay", xaxis_title="log10 density (fraction of held-out tokens)",
                          yaxis_title="features", title=f"Feature density: {self.root.name}")
        return fig


def open_run(path: str | Path) -> Run:
    """Open the run folder at ``path`` (``SearchError`` when it has no ``features.db``)."""
    return Run(path)
