"""The ``--behaviour`` flags of ``autointerp diff`` and what they run."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("behaviour diff (--behaviour)")
    g.add_argument("--behaviour", action="store_true",
                   help="compare what the models DO: the suspect answers every corpus prompt, both models read "
                        "the answer, prompts are ranked by KL(suspect || base), and the run's features that "
                        "fire on the outlying prompts are checked causally")
    g.add_argument("--corpus", default=None, help="prompts to answer (default: the run's corpus)")
    g.add_argument("--tokens", type=int, default=8, help="answer tokens per prompt")
    g.add_argument("--batch-size", type=int, default=64,
                   help="prompts per batch (64: the faster of 32 and 64 measured on 2 CPU cores)")
    g.add_argument("--max-prompts", type=int, default=None, help="the first N prompts of the corpus only")
    g.add_argument("--features", type=int, default=10, help="explaining features to list")
    g.add_argument("--causal", type=int, default=3, help="explaining features given the causal check (0: none)")
    g.add_argument("--null", type=int, default=8, help="random live features of the causal check's null")
    g.add_argument("--force", action="store_true", help="recompute a behaviour table made with other settings")


def run(args: argparse.Namespace) -> str:
    """Run the behaviour diff for parsed ``args``; returns the summary to print."""
    from autointerp.behaviour import BehaviourError, behaviour_diff, format_behaviour

    if args.base is None:
        raise BehaviourError("--behaviour needs --base MODEL (the base model runs: its answers are compared)")
    result = behaviour_diff(args.run, args.base, corpus=args.corpus, dictionary=args.dictionary,
                            n_tokens=args.tokens, batch_size=args.batch_size, max_prompts=args.max_prompts,
                            n_features=args.features, causal=args.causal, null=args.null, device=args.device,
                            force=args.force)
    return format_behaviour(result, args.top)
