"""``autointerp search``: its arguments and its result tables (the lookups: :mod:`autointerp.search`)."""

from __future__ import annotations

import argparse

from autointerp.search import (FiringFeature, SearchError, SearchResult, fire_on_text, fts_search,
                               semantic_search)


def configure_search_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``autointerp search RUN "query" [--text "..."] [--fts] [-n 10]``."""
    p.add_argument("run", help="run folder (holding features.db and dictionaries/)")
    p.add_argument("query", nargs="?", default=None, help="words to search the explanations for")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fts", action="store_true", help="plain-text search (all words, stemmed) instead of "
                      "semantic search")
    mode.add_argument("--text", default=None, help="run the model on this text and list the features that fire")
    p.add_argument("-n", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--dictionary", default=None, help="with --text: only this dictionary (folder name)")
    p.add_argument("--device", default="cpu", help="with --text: device of the model")


def _clip(text: str | None, width: int) -> str:
    text = " ".join((text or "-").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def format_results(results: list[SearchResult], label: str) -> str:
    """A table: rank, similarity, dictionary, latent, feature id, explainer, scores, explanation."""
    lines = [f"{'#':>3} {label:>7}  {'dictionary':<22} {'latent':>7} {'id':>6}  {'explainer':<16} "
             f"{'scores':<24} explanation"]
    for rank, r in enumerate(results, 1):
        scores = " ".join(f"{k}={v:.2f}" for k, v in sorted(r.scores.items()))
        lines.append(f"{rank:>3} {r.similarity:>7.3f}  {_clip(r.dictionary, 22):<22} {r.latent:>7} "
                     f"{r.feature_id:>6}  {_clip(r.explainer, 16):<16} {_clip(scores, 24):<24} "
                     f"{_clip(r.explanation, 80)}")
    return "\n".join(lines)


def format_firing(features: list[FiringFeature]) -> str:
    """A table: rank, max activation, peak token, dictionary, latent, feature id, explanation."""
    lines = [f"{'#':>3} {'max':>8}  {'peak token':<16} {'dictionary':<22} {'latent':>7} {'id':>6}  explanation"]
    for rank, f in enumerate(features, 1):
        fid = "-" if f.feature_id is None else str(f.feature_id)
        lines.append(f"{rank:>3} {f.max_activation:>8.3f}  {_clip(repr(f.peak_token), 16):<16} "
                     f"{_clip(f.dictionary, 22):<22} {f.latent:>7} {fid:>6}  {_clip(f.explanation, 80)}")
    return "\n".join(lines)


def run_search(args: argparse.Namespace) -> int:
    """``autointerp search``: print the table of results; ``SearchError`` for unusable input."""
    if args.n <= 0:
        raise SearchError(f"-n must be positive, got {args.n}")
    if args.text is not None:
        found = fire_on_text(args.run, args.text, args.n, args.dictionary, args.device)
        print(format_firing(found) if found else "no feature fires on this text")
        return 0
    search = fts_search if args.fts else semantic_search
    results = search(args.run, args.query or "", args.n)
    print(format_results(results, "bm25" if args.fts else "cosine") if results else "no match")
    return 0
