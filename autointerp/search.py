"""Search a run's features: by meaning, by words, and by what fires on a given text.

Three lookups over one run folder (:class:`~autointerp.runfolder.RunFolder`):

* **semantic**: every ``ok`` explanation is embedded with all-MiniLM-L6-v2 (L2-normalised, the
  ``embedding`` scorer's model and loader); a query ``q`` is embedded the same way and the answer
  is the ``n`` largest cosine similarities ``E @ q`` (one matmul and an ``argpartition``). The
  matrix is cached in ``RUN/search/explanations.safetensors``::

      embeddings      [N, D] float32   row i: the embedding of explanation explanation_id[i]
      explanation_id  [N] int64
      text_hash       [N] int64        first 8 bytes of blake2b(text): a re-put text is re-embedded

  Each search first refreshes the cache against ``features.db``: rows whose explanation is no
  longer ``ok`` (or whose text changed) are dropped, new ones embedded, nothing else recomputed.

* **fts**: SQLite FTS5 (``porter unicode61`` tokenizer, so "imports" finds "import") over the
  explanation texts, ``rowid`` = explanation id, in its own file ``RUN/search/fts.db``: the
  feature store's schema stays untouched and the job writing ``features.db`` is never blocked by
  an index write. The user's words are each quoted, so FTS syntax in a query (``AND``, ``col:``,
  ``*``, a stray ``"``) is searched for as plain words, all of which must occur; ranked by BM25.

* **fire on text**: the text is cut into contexts the way the dictionary's cache was (BOS
  prepended, ``ctx_len`` tokens), run through the dictionary's model up to its hook point,
  encoded by the dictionary exactly as :mod:`autointerp.examples` encodes cached activations
  (float32, ``dictionary.encode``; any training normalisation is folded into the weights), and
  the positions the cache excluded (special tokens, the first positions of a context:
  ``ExclusionRules``) are set to 0. Features are ranked by their maximum over the text.

``features.db`` is only read (it runs in WAL mode: a job may keep writing meanwhile).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder

INDEX_FILE = "explanations.safetensors"
FTS_FILE = "fts.db"


class SearchError(ValueError):
    """A search that cannot be answered: no feature store, nothing explained yet, an empty query."""


@dataclass
class SearchResult:
    """One explanation matching a query."""

    feature_id: int
    """the ``features.db`` row id of the feature."""
    dictionary: str
    latent: int
    explanation_id: int
    explanation: str
    explainer: str
    model: str
    """the explainer's model."""
    similarity: float
    """higher is better: cosine similarity (semantic) or minus the BM25 rank value (fts)."""
    scores: dict[str, float]
    """the explanation's ``ok`` scores (control ``none``) by scorer."""


@dataclass
class FiringFeature:
    """How one latent fires on a text."""

    dictionary: str
    latent: int
    feature_id: int | None
    """the ``features.db`` row id (None when the run's store does not list the latent)."""
    max_activation: float
    peak_position: int
    """index into ``tokens`` of the maximum."""
    tokens: list[str]
    """the text's tokens, decoded one by one (no BOS), ``[T]``."""
    activations: list[float]
    """the latent at each of ``tokens``, ``[T]``; 0 at excluded positions."""
    explanation: str | None
    """the feature's first ``ok`` explanation, if any."""

    @property
    def peak_token(self) -> str:
        return self.tokens[self.peak_position]


# ------------------------------------------------------------------------------- run and store
def search_dir(run: RunFolder) -> Path:
    """``RUN/search``: the indexes built here (derived data, safe to delete)."""
    return run.root / "search"


def as_run(run: str | Path | RunFolder) -> RunFolder:
    """``run`` as a ``RunFolder`` (a path is wrapped, a ``RunFolder`` passed through)."""
    return run if isinstance(run, RunFolder) else RunFolder(run)


def open_db(run: RunFolder) -> FeatureDB:
    """The run's feature store; ``SearchError`` when there is none (never creates one)."""
    if not run.db.is_file():
        raise SearchError(f"{run.root} has no features.db: not a run folder, or no features prepared yet "
                          "(run `autointerp run` or `autointerp explain` first)")
    return FeatureDB(run.db)


def ok_explanations(db: FeatureDB) -> dict[int, str]:
    """``{explanation id: text}`` of every ``ok`` explanation; ``SearchError`` when there are none."""
    texts = dict(db.con.execute("SELECT id, text FROM explanations WHERE status = 'ok' ORDER BY id").fetchall())
    if not texts:
        raise SearchError(f"{db.path} holds no ok explanation yet: run explain first")
    return texts


def _check_query(query: str) -> str:
    if not query or not query.strip():
        raise SearchError("empty query: give some words to search for")
    return query.strip()


def _results(db: FeatureDB, ids: Sequence[int], similarities: Sequence[float]) -> list[SearchResult]:
    """Results for explanation ``ids`` in the given order (ids gone from the store are skipped)."""
    marks = ", ".join("?" * len(ids))
    rows = {r["id"]: r for r in db.con.execute(
        "SELECT e.id, e.feature_id, e.explainer, e.model, e.text, f.dictionary, f.latent FROM explanations e "
        f"JOIN features f ON f.id = e.feature_id WHERE e.status = 'ok' AND e.id IN ({marks})", list(ids))}
    scores: dict[int, dict[str, float]] = {}
    for r in db.con.execute("SELECT explanation_id, scorer, value FROM scores WHERE control = 'none' "
                            f"AND status = 'ok' AND explanation_id IN ({marks}) ORDER BY id", list(ids)):
        scores.setdefault(r[0], {})[r[1]] = r[2]
    return [SearchResult(feature_id=rows[i]["feature_id"], dictionary=rows[i]["dictionary"],
                         latent=rows[i]["latent"], explanation_id=i, explanation=rows[i]["text"],
                         explainer=rows[i]["explainer"], model=rows[i]["model"], similarity=float(s),
                         scores=scores.get(i, {}))
            for i, s in zip(ids, similarities) if i in rows]


# ------------------------------------------------------------------------------------- semantic
def text_hash(text: str) -> int:
    """A 64-bit fingerprint of an explanation text (as a signed int64)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def embed_texts(texts: list[str]) -> Float[np.ndarray, "N D"]:
    """all-MiniLM-L6-v2 embeddings of ``texts``, L2-normalised, float32."""
    from autointerp.scorers.embedding import load_embedder

    return load_embedder().encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=len(texts) > 5000).astype(np.float32, copy=False)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread meanwhile: a one-line query gains nothing from more, and on
    a busy machine extra threads wait for each other (2 threads: ~400 ms instead of ~12 ms per query
    on 2 shared cores, see benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def embed_query(query: str) -> Float[np.ndarray, " D"]:
    """The unit embedding of one query (on one thread)."""
    with _one_thread():
        return embed_texts([query])[0]


@dataclass
class SemanticIndex:
    """Embedded explanations: ``embeddings [N, D]`` for ``explanation_id [N]`` with ``text_hash [N]``."""

    embeddings: Float[np.ndarray, "N D"]
    explanation_id: Int[np.ndarray, " N"]
    text_hash: Int[np.ndarray, " N"]

    @classmethod
    def load(cls, path: Path) -> SemanticIndex | None:
        """The index saved at ``path``, or None when there is none (or of another embedding model)."""
        from safetensors import safe_open

        from autointerp.interpret import EMBEDDING_MODEL

        if not path.is_file():
            return None
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("model") != EMBEDDING_MODEL:
                return None
            return cls(**{k: f.get_tensor(k) for k in ("embeddings", "explanation_id", "text_hash")})

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename): a reader never sees half an index."""
        from safetensors.numpy import save_file

        from autointerp.interpret import EMBEDDING_MODEL

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"embeddings": np.ascontiguousarray(self.embeddings), "explanation_id": self.explanation_id,
                   "text_hash": self.text_hash}, str(tmp), metadata={"model": EMBEDDING_MODEL})
        os.replace(tmp, path)

    def top(self, query_D: Float[np.ndarray, " D"], n: int) -> tuple[list[int], list[float]]:
        """Explanation ids of the ``n`` largest cosine similarities to ``query_D`` (unit vector), best first."""
        sims_N = self.embeddings @ query_D
        k = min(n, len(sims_N))
        if k <= 0:
            return [], []
        best = np.argpartition(-sims_N, k - 1)[:k]
        best = best[np.argsort(-sims_N[best], kind="stable")]
        return self.explanation_id[best].tolist(), sims_N[best].tolist()


def refresh_semantic_index(run: RunFolder, texts: dict[int, str]) -> SemanticIndex:
    """Bring ``RUN/search/explanations.safetensors`` in line with ``texts`` (``ok_explanations``):
    keep the rows whose id and text hash still match, embed only the rest; saved when changed."""
    path = search_dir(run) / INDEX_FILE
    ids = np.fromiter(texts, dtype=np.int64, count=len(texts))
    hashes = np.fromiter((text_hash(t) for t in texts.values()), dtype=np.int64, count=len(texts))
    old = SemanticIndex.load(path)
    if old is None:
        old = SemanticIndex(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    wanted = dict(zip(ids.tolist(), hashes.tolist()))
    keep = np.array([wanted.get(i) == h for i, h in zip(old.explanation_id.tolist(), old.text_hash.tolist())],
                    dtype=bool)
    have = set(old.explanation_id[keep].tolist())
    new = np.array([i not in have for i in ids.tolist()], dtype=bool)
    if not new.any() and keep.all():
        return old
    parts = [old.embeddings[keep]] if keep.any() else []
    if new.any():
        parts.append(embed_texts([texts[i] for i in ids[new].tolist()]))
    index = SemanticIndex(np.concatenate(parts), np.concatenate([old.explanation_id[keep], ids[new]]),
                          np.concatenate([old.text_hash[keep], hashes[new]]))
    index.save(path)
    return index


def semantic_search(run: str | Path | RunFolder, query: str, n: int = 10) -> list[SearchResult]:
    """The ``n`` explanations closest in meaning to ``query`` (cosine similarity), best first."""
    run, query = as_run(run), _check_query(query)
    with open_db(run) as db:
        index = refresh_semantic_index(run, ok_explanations(db))
        ids, sims = index.top(embed_query(query), n)
        return _results(db, ids, sims)


# ------------------------------------------------------------------------------------------ fts
def fts_query(query: str) -> str:
    """``query`` as an FTS5 expression of plain words: each whitespace-separated word quoted
    (``"`` doubled inside), all required. ``col:foo* AND`` -> ``"col:foo*" "AND"``."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in query.split())


def refresh_fts(run: RunFolder, texts: dict[int, str]) -> sqlite3.Connection:
    """``RUN/search/fts.db`` in line with ``texts``: stale rows deleted, new or changed ones added."""
    search_dir(run).mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(search_dir(run) / FTS_FILE, timeout=30.0)
    con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS explanations USING fts5(text, tokenize = 'porter unicode61')")
    have = dict(con.execute("SELECT rowid, text FROM explanations").fetchall())
    stale = [(i,) for i, t in have.items() if texts.get(i) != t]
    fresh = [(i, t) for i, t in texts.items() if have.get(i) != t]
    with con:  # one transaction
        con.executemany("DELETE FROM explanations WHERE rowid = ?", stale)
        con.executemany("INSERT INTO explanations (rowid, text) VALUES (?, ?)", fresh)
    return con


def fts_search(run: str | Path | RunFolder, query: str, n: int = 10) -> list[SearchResult]:
    """The ``n`` explanations containing every word of ``query`` (stemmed), best BM25 first."""
    run, query = as_run(run), _check_query(query)
    with open_db(run) as db:
        with closing(refresh_fts(run, ok_explanations(db))) as con:
            rows = con.execute("SELECT rowid, -bm25(explanations) FROM explanations WHERE explanations MATCH ? "
                               "ORDER BY rank LIMIT ?", (fts_query(query), n)).fetchall()
        return _results(db, [r[0] for r in rows], [r[1] for r in rows])


# -------------------------------------------------------------------------------- fire on text
@functools.lru_cache(maxsize=1)
def _load_model(spec: str, dtype: str, device: str):
    """A model kept loaded between calls (a load takes seconds)."""
    from autointerp.models import load_model

    return load_model(spec, device=device, dtype=dtype)


def _dictionary_model(dictionary_dir: str | Path, device: str):
    """``(provenance, loaded model)`` of a dictionary: the model its activations came from."""
    from autointerp.dictionary_folder import provenance

    prov = provenance(dictionary_dir)
    return prov, _load_model(prov["model"]["spec"], prov["model"].get("dtype", "float32"), device)


def _keep_mask(ids_L: Int[Tensor, " L"], rules, special_ids: list[int]) -> Bool[Tensor, " L"]:
    """The positions of one context the cache keeps under ``rules`` (``ExclusionRules``)."""
    keep_L = torch.ones(len(ids_L), dtype=torch.bool)
    if rules.special_tokens:
        keep_L &= ~torch.isin(ids_L, torch.tensor(special_ids, dtype=ids_L.dtype))
    keep_L[:rules.first_positions] = False
    return keep_L


def encode_text(dictionary_dir: str | Path, text: str, device: str = "cpu"
                ) -> tuple[Int[Tensor, " T"], Bool[Tensor, " T"], Float[Tensor, "T F"]]:
    """The dictionary's latents on ``text``: its token ids ``[T]`` (no BOS), which of them the
    cache would keep ``[T]``, and the latents ``[T, F]`` (0 at the positions not kept).

    The text is cut into contexts of ``ctx_len`` tokens (BOS first when the cache prepended
    one), so the exclusion of the first positions applies to each context as in the cache.
    """
    import dictionaries as dl
    from autointerp.data import ExclusionRules
    from autointerp.models import capture

    prov, model = _dictionary_model(dictionary_dir, device)
    ctx, hookpoint = prov["context"], prov["input_hookpoint"]
    tok, rules = model.tokenizer, ExclusionRules(**ctx["exclude"])
    ids_T = torch.tensor(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"],
                         dtype=torch.long)
    if len(ids_T) == 0:
        raise SearchError("the text has no tokens")
    head = [tok.bos_token_id] if ctx["prepend_bos"] else []
    dictionary = dl.load(dictionary_dir, device=device)
    keeps, latents = [], []
    for piece in ids_T.split(ctx["ctx_len"] - len(head)):
        ids_L = torch.cat([torch.tensor(head, dtype=torch.long), piece])
        keep_L = _keep_mask(ids_L, rules, tok.all_special_ids)
        x_Ld = capture(model, ids_L[None].to(device), [hookpoint])[hookpoint][0]
        with torch.inference_mode():
            z_LF = torch.zeros(len(ids_L), dictionary.cfg.n_latents, device=device)
            z_LF[keep_L.to(device)] = dictionary.encode(x_Ld[keep_L.to(device)].to(torch.float32))
        keeps.append(keep_L[len(head):])
        latents.append(z_LF[len(head):].cpu())
    return ids_T, torch.cat(keeps), torch.cat(latents)


def _store_rows(run: RunFolder, dictionary: str, latents: list[int]) -> dict[int, tuple[int, str | None]]:
    """``{latent: (feature id, first ok explanation or None)}`` for the latents the store lists."""
    if not run.db.is_file():
        return {}
    with FeatureDB(run.db) as db:
        marks = ", ".join("?" * len(latents))
        rows = db.con.execute(
            "SELECT f.latent, f.id, (SELECT e.text FROM explanations e WHERE e.feature_id = f.id AND "
            f"e.status = 'ok' ORDER BY e.id LIMIT 1) FROM features f WHERE f.dictionary = ? AND f.latent IN ({marks})",
            [dictionary, *latents]).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def fire_on_text(run: str | Path | RunFolder, text: str, n: int = 10, dictionary: str | None = None,
                 device: str = "cpu") -> list[FiringFeature]:
    """The ``n`` features with the largest activation on ``text`` over the run's dictionaries
    (or the one named ``dictionary``), largest first; latents that never fire are left out."""
    from autointerp.dictionary_folder import dictionary_name

    run = as_run(run)
    if not text or not text.strip():
        raise SearchError("empty text: give a text to run the model on")
    dirs = [d for d in run.dictionary_dirs() if dictionary is None or dictionary_name(d) == dictionary]
    if not dirs:
        raise SearchError(f"{run.root} has no dictionary" + (f" named {dictionary!r}" if dictionary else "")
                          + f" (looked in {run.dictionaries})")
    found: list[FiringFeature] = []
    for d in dirs:
        ids_T, _, z_TF = encode_text(d, text, device)
        tokenizer = _dictionary_model(d, device)[1].tokenizer
        tokens = [tokenizer.decode([i]) for i in ids_T.tolist()]
        peak_F, arg_F = z_TF.max(dim=0)
        top = [f for f in peak_F.argsort(descending=True)[:n].tolist() if peak_F[f] > 0]
        rows = _store_rows(run, dictionary_name(d), top)
        for f in top:
            feature_id, explanation = rows.get(f, (None, None))
            found.append(FiringFeature(dictionary=dictionary_name(d), latent=f, feature_id=feature_id,
                                       max_activation=float(peak_F[f]), peak_position=int(arg_F[f]), tokens=tokens,
                                       activations=z_TF[:, f].tolist(), explanation=explanation))
    return sorted(found, key=lambda r: -r.max_activation)[:n]
