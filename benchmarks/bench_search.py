"""Benchmark: semantic and FTS5 search over 100,000 explanations (``autointerp.search``).

A synthetic run folder holds ``--n`` features with one ``ok`` explanation each, generated
combinatorially from word lists ("closing brackets in Python function calls", ...). Measured:

* index build: MiniLM embeds the explanations in chunks of ``--sample`` for at most ``--budget``
  seconds (throughput and the estimated time for all of them are reported); the rows left are
  filled with random unit vectors (``random_rows`` in the output) so that query times are still
  measured on an index of ``--n`` rows; the FTS5 index is always built in full;
* a no-op refresh (index up to date: features.db read, texts hashed, index loaded);
* 20 semantic and 20 FTS queries: end to end (``semantic_search`` / ``fts_search``: open the
  store, refresh check, query, result rows) and the query alone (embed on one thread + matmul + argpartition;
  the FTS5 ``MATCH``). Median and max.

    python benchmarks/bench_search.py [--n 100000] [--sample 2000] [--budget 480] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import torch

from autointerp import search
from autointerp.examples import LatentRecord
from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder

SUBJECTS = ["closing brackets", "opening parentheses", "import statements", "the keyword return", "string literals",
            "variable names", "numbers", "comments", "indentation", "function definitions", "class names",
            "boolean operators", "dictionary keys", "list indices", "exception handling", "decorators",
            "docstrings", "file paths", "URLs", "dates", "plural nouns", "past-tense verbs", "first names",
            "country names", "units of measure", "hexadecimal digits", "emoji", "quotation marks", "commas",
            "full stops", "newlines", "whitespace", "capital letters", "abbreviations", "negations",
            "questions", "legal terms", "medical terms", "chemical elements", "musical notes"]
PLACES = ["in Python code", "in English prose", "in JSON files", "in Markdown", "in SQL queries", "in HTML",
          "in shell scripts", "in test files", "in configuration files", "in log messages", "in error messages",
          "in chat transcripts", "in scientific papers", "in news articles", "in recipes", "in legal contracts",
          "in source comments", "in C headers", "in YAML", "in spreadsheets", "in poems", "in tables", "in emails",
          "in function calls", "in loops"]
DETAILS = ["at the start of a line", "after an equals sign", "inside brackets", "before a colon",
           "at the end of a sentence", "following a number", "in upper case", "in nested blocks",
           "near a keyword", "in short tokens", "", "especially the second token", "and their continuations",
           "mostly in long documents", "when repeated", "after whitespace", "before punctuation",
           "in the middle of words", "in titles", "in lists", "with a leading space", "without spaces",
           "in early positions", "in late positions", "in quoted text", "across line breaks", "in identifiers",
           "in headers", "in footnotes", "in arguments", "in return values", "in assignments",
           "in comparisons", "in imports", "in type hints", "in format strings", "in f-strings",
           "in regular expressions", "in file names", "in version numbers", "in prices", "in times",
           "in percentages", "in coordinates", "in keys", "in values", "in labels", "in captions",
           "in signatures", "in greetings", "in sign-offs", "in citations", "in tags", "in attributes",
           "in selectors", "in paths", "in hashes", "in IDs", "in counters", "in flags", "in options",
           "in defaults", "in constants", "in globals", "in locals", "in parameters", "in fields",
           "in columns", "in rows", "in cells", "in queries", "in filters", "in sorts", "in joins",
           "in groups", "in windows", "in frames", "in slices", "in batches", "in shards", "in layers",
           "in heads", "in blocks", "in modules", "in packages", "in scopes", "in closures", "in lambdas",
           "in generators", "in iterators", "in coroutines", "in threads", "in locks", "in queues", "in pipes",
           "in sockets", "in streams", "in buffers", "in caches", "in registers"]
QUERIES = ["module imports", "closing brackets", "numbers in prices", "error messages in logs", "URLs in HTML",
           "the word return", "dates in news articles", "capital letters at the start", "Python decorators",
           "comments in shell scripts", "quotation marks", "country names in emails", "chemical elements",
           "whitespace and indentation", "hexadecimal digits in hashes", "SQL joins", "legal terms in contracts",
           "first names in chat", "units of measure in recipes", "exception handling in loops"]


def synthetic_texts(n: int) -> list[str]:
    """``n`` distinct explanations: subject x place x detail (40 x 25 x 100 = 100,000 at most)."""
    combos = itertools.islice(itertools.product(DETAILS, PLACES, SUBJECTS), n)
    texts = [" ".join(w for w in (s, p, d) if w) for d, p, s in combos]
    if len(texts) < n:
        raise ValueError(f"the word lists give {len(texts)} explanations, fewer than --n {n}")
    return texts


def make_store(run: RunFolder, texts: list[str]) -> dict[int, str]:
    """One live feature and one ok explanation per text; returns ``{explanation id: text}``."""
    with FeatureDB(run.db) as db, db.transaction():
        ids = db.put_features("d", [LatentRecord(latent=i, density=0.01, max_activation=1.0)
                                    for i in range(len(texts))], examples=False)
        for i, text in enumerate(texts):
            db.put_explanation(ids[i], "top", "m", "ok", text=text)
        return search.ok_explanations(db)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def build_index(run: RunFolder, texts: dict[int, str], sample: int, budget: float) -> dict:
    """Embed the first ``sample`` texts to measure throughput, then more in chunks of ``sample``
    while the ``budget`` seconds last; fill the rest with random unit vectors. Saves the index
    (complete: a refresh finds nothing to embed); returns the figures."""
    ids = list(texts)
    start = time.perf_counter()
    seconds, first = timed(search.embed_texts, [texts[i] for i in ids[:sample]])
    parts = [first]
    done = sample
    while done < len(ids) and time.perf_counter() - start < budget:
        parts.append(search.embed_texts([texts[i] for i in ids[done:done + sample]]))
        done += len(parts[-1])
    embed_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rest = rng.standard_normal((len(ids) - done, first.shape[1])).astype(np.float32)
    parts.append(rest / np.linalg.norm(rest, axis=1, keepdims=True))
    search.SemanticIndex(np.concatenate(parts), np.array(ids, dtype=np.int64),
                         np.array([search.text_hash(texts[i]) for i in ids], dtype=np.int64)
                         ).save(search.search_dir(run) / search.INDEX_FILE)
    return {"embed_sample": sample, "embed_sample_per_s": sample / seconds, "embedded_rows": done,
            "embed_s": embed_s, "embed_per_s": done / embed_s, "full_embed_estimate_s": len(ids) * embed_s / done,
            "random_rows": len(ids) - done}


def stats(seconds: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(seconds), "max_ms": 1000 * max(seconds)}


def bench_queries(run: RunFolder) -> dict:
    """End-to-end and query-only times of the 20 semantic and 20 FTS queries."""
    search.embed_texts(["warm-up"])  # loads MiniLM once (reported separately)
    index = search.SemanticIndex.load(search.search_dir(run) / search.INDEX_FILE)
    fts = search.search_dir(run) / search.FTS_FILE
    out: dict[str, list[float]] = {k: [] for k in ("semantic", "semantic_query", "fts", "fts_query")}
    with closing(sqlite3.connect(fts)) as con:
        for q in QUERIES:
            out["semantic"].append(timed(search.semantic_search, run, q, 10)[0])
            out["semantic_query"].append(timed(lambda: index.top(search.embed_query(q), 10))[0])
            out["fts"].append(timed(search.fts_search, run, q, 10)[0])
            out["fts_query"].append(timed(lambda: con.execute(
                "SELECT rowid FROM explanations WHERE explanations MATCH ? ORDER BY rank LIMIT 10",
                (search.fts_query(q),)).fetchall())[0])
    return {k: stats(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--budget", type=float, default=480.0, help="seconds of embedding before the rest is random")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(tmp)
        store_s, texts = timed(make_store, run, synthetic_texts(args.n))
        load_s, _ = timed(search.embed_texts, ["load"])
        figures = build_index(run, texts, args.sample, args.budget)
        fts_s, con = timed(search.refresh_fts, run, texts)
        con.close()
        refresh_s, _ = timed(search.refresh_semantic_index, run, texts)
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} "
                       f"threads, torch {torch.__version__}, python {sys.version.split()[0]}",
            "n": args.n, "store_setup_s": store_s, "minilm_load_s": load_s, **figures,
            "fts_build_s": fts_s, "semantic_refresh_noop_s": refresh_s,
            "index_mb": (search.search_dir(run) / search.INDEX_FILE).stat().st_size / 2**20,
            "fts_mb": (search.search_dir(run) / search.FTS_FILE).stat().st_size / 2**20,
            **bench_queries(run)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
