"""``autointerp flag RUN [--watchlist FILE]``: flag the run's features and print the flagged ones."""

from __future__ import annotations

import argparse

from autointerp.flagging.flag import FlagError, FlagSettings, flag_run, flags
from autointerp.flagging.watchlist import WatchlistError


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``autointerp flag``."""
    p.add_argument("run", help="run folder (holding features.db and dictionaries/)")
    p.add_argument("--watchlist", default=None, help="watchlist YAML (default: the shipped one: deception, "
                   "manipulation, backdoors, power-seeking, dangerous capabilities, hostility, secrets)")
    p.add_argument("--candidates", type=int, default=8, help="latents per concept that get the causal signal "
                   "(default 8)")
    p.add_argument("--null-features", type=int, default=8, help="random live latents of the causal null (default 8)")
    p.add_argument("--alpha", type=float, default=1.0, help="steering amount in units of the feature's max "
                   "activation (default 1)")
    p.add_argument("--permutations", type=int, default=500, help="label shufflings of the AUROC null (default 500)")
    p.add_argument("--chat", default="auto", choices=["auto", "on", "off"],
                   help="causal probes as chat turns (the prompt a user message, the completion the start of "
                        "the assistant's answer); auto: when the model's tokenizer has a chat template")
    p.add_argument("--features", default=None, help="only these latents, comma-separated (default: all)")
    p.add_argument("--force", action="store_true", help="recompute concepts already flagged with these settings")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def format_flags(rows: list[dict]) -> str:
    def num(x, digits=2):
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [f"{'score':>6}  {'concept':<34} {'dictionary':<22} {'latent':>6} {'id':>6}  "
             f"{'sim z':>6} {'AUROC':>6} {'p':>6} {'causal z':>8}"]
    for r in rows:
        lines.append(f"{r['score']:>6.2f}  {r['concept'][:34]:<34} {r['dictionary'][:22]:<22} {r['latent']:>6} "
                     f"{r['feature_id']:>6}  {num(r['similarity_z']):>6} {num(r['auroc']):>6} "
                     f"{num(r['auroc_p'], 3):>6} {num(r['causal_z']):>8}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the flagging, print the flagged features; 2 for unusable input (the message on stderr)."""
    import sys

    try:
        features = None if args.features is None else [int(f) for f in args.features.split(",") if f.strip()]
        settings = FlagSettings(candidates=args.candidates, null_features=args.null_features, alpha=args.alpha,
                                permutations=args.permutations, chat=args.chat)
        summary = flag_run(args.run, args.watchlist, features=features, device=args.device,
                           progress=not args.no_progress, settings=settings, force=args.force)
    except (WatchlistError, FlagError, ValueError) as exc:
        print(f"autointerp flag: error: {exc}", file=sys.stderr)
        return 2
    found = flags(args.run, watchlist=summary["watchlist"], flagged_only=True)
    print(f"watchlist {summary['watchlist']} ({summary['watchlist_hash']}): {len(found)} flag(s)")
    if found:
        print(format_flags(found))
    return 0
