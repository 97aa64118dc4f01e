"""``autointerp`` commands explain, score: the LLM explainers and scorers."""

from __future__ import annotations

import argparse
from pathlib import Path

from autointerp.cli.registry import UserError, _threads, command


# ------------------------------------------------------------------------------ explain / score
def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dictionary", help="dictionary folder written by `autointerp train`")
    p.add_argument("--db", default=None, help="feature store (default: DICTIONARY/features.db)")
    p.add_argument("--model", default=None,
                   help="local model spec for the LLM client (default: the dictionary's model)")
    p.add_argument("--endpoint", default=None, help="base URL of an OpenAI-compatible API (instead of a local model)")
    p.add_argument("--endpoint-model", default=None, help="model name at --endpoint")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the endpoint's API key (default: send no key)")
    p.add_argument("--endpoint-tokenizer", default=None,
                   help="model spec whose tokenizer and chat template the endpoint's model uses: enables "
                        "teacher-forced scoring through the endpoint (/v1/completions with echo + logprobs, probed once)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per endpoint request (default 60)")
    p.add_argument("--retries", type=int, default=5, help="retries of a failed endpoint request (default 5)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for the whole command: requests it stops are stored as timeout, and running the "
                        "command again redoes only them")
    p.add_argument("--features", default=None, help="a count (50: the first 50 live features) or latents (0-9,15)")
    p.add_argument("--device", default="cpu", help="device of the local model and of the example pass")
    p.add_argument("--threads", type=int, default=None)


def _make_client(args: argparse.Namespace, concurrency: int = 1):
    """The LLM client the flags ask for: an endpoint, else a local model (the dictionary's by default)."""
    if args.deadline is not None and not args.deadline > 0:
        raise UserError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    if args.endpoint is None:
        if args.endpoint_model or args.api_key_env or args.endpoint_tokenizer:
            raise UserError("--endpoint-model, --api-key-env and --endpoint-tokenizer need --endpoint")
        from autointerp.dictionary_folder import model_spec
        from autointerp.llm import LocalClient

        return LocalClient(args.model or model_spec(args.dictionary), device=args.device, batch_size=max(1, concurrency))
    if args.model:
        raise UserError("give either --model (local) or --endpoint, not both")
    if not args.endpoint_model:
        raise UserError("--endpoint needs --endpoint-model")
    from autointerp.llm import OpenAICompatibleClient

    try:
        return OpenAICompatibleClient(args.endpoint, args.endpoint_model, api_key_env=args.api_key_env,
                                      concurrency=concurrency, timeout_s=args.request_timeout,
                                      max_retries=args.retries, tokenizer=args.endpoint_tokenizer)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _db_path(args: argparse.Namespace) -> Path:
    if not (Path(args.dictionary) / "autointerp.json").exists():
        raise UserError(f"{args.dictionary} is not a dictionary folder written by `autointerp train`")
    return Path(args.db) if args.db else Path(args.dictionary) / "features.db"


def _explain_args(p: argparse.ArgumentParser) -> None:
    from autointerp.explainers import explainer_names

    p.add_argument("--explainer", default="token-activation", choices=explainer_names(),
                   help="token-enrichment asks no language model")
    _client_args(p)
    p.add_argument("--concurrency", type=int, default=1,
                   help="features explained together: the batch size of a local model, or concurrent requests "
                        "to an endpoint")


@command("explain", _explain_args)
def cmd_explain(args: argparse.Namespace) -> int:
    """Collect held-out examples into the feature store and explain every live feature not yet explained."""
    from autointerp import interpret
    from autointerp.selection import parse_feature_selection

    _threads(args.threads)
    db = _db_path(args)
    try:
        sel = parse_feature_selection(args.features) if args.features else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    interpret.prepare_features(args.dictionary, db, features=sel, device=args.device)
    client = None if args.explainer == interpret.BASELINE_EXPLAINER else _make_client(args, args.concurrency)
    counts = interpret.explain(db, args.dictionary, args.explainer, client=client, features=sel,
                               concurrency=args.concurrency, deadline=args.deadline)
    late = " (the deadline passed: run the command again to redo the failed)" if counts.deadline_passed else ""
    print(f"explain {args.explainer}: {counts.done} done, {counts.failed} failed{late} -> {db}")
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    from autointerp.explainers import explainer_names
    from autointerp.scorers import SCORERS

    p.add_argument("--scorer", default="embedding", choices=sorted(SCORERS), help="embedding asks no language model")
    p.add_argument("--explainer", default=None, choices=explainer_names(),
                   help="score only this explainer's explanations (default: all)")
    _client_args(p)
    p.add_argument("--seed", type=int, default=0, help="picks the random-explanation control")


@command("score", _score_args)
def cmd_score(args: argparse.Namespace) -> int:
    """Score the stored explanations on held-out contexts, with random-explanation and baseline controls."""
    from autointerp import interpret
    from autointerp.selection import parse_feature_selection

    _threads(args.threads)
    db = _db_path(args)
    if not db.exists():
        raise UserError(f"{db} does not exist: run `autointerp explain` first")
    try:
        sel = parse_feature_selection(args.features) if args.features else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    client = None if args.scorer == "embedding" else _make_client(args)
    counts = interpret.score(db, args.dictionary, args.scorer, client=client,
                             explainer_name=args.explainer, features=sel, seed=args.seed, deadline=args.deadline)
    line = interpret.format_summary(interpret.summary(db), args.scorer)
    late = " (the deadline passed: run the command again to redo the failed)" if counts.deadline_passed else ""
    print(f"score {args.scorer}: {counts.done} done, {counts.failed} failed{late}; {line}")
    return 0
