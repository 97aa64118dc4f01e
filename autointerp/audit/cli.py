"""``autointerp audit SUSPECT --base BASE``: the flags and what they run."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    from autointerp.audit import STAGES, AuditSettings

    d = AuditSettings()
    p.add_argument("suspect", help="the suspect model: alias, local folder, .gguf or cached hub id")
    p.add_argument("--base", required=True, help="the model it was fine-tuned from (same architecture and tokenizer)")
    p.add_argument("--corpus", default=None,
                   help="the audit corpus (a chat .jsonl with 'messages', or any corpus spec); default: the generic "
                        "chat corpus shipped with autointerp")
    p.add_argument("--out", default=None, help="audit folder (default: runs/audit-<suspect folder name>)")
    p.add_argument("--until", default=None, choices=STAGES, help="stop after this stage (rerun to go on)")
    p.add_argument("--force", action="store_true", help="start over in a folder holding another audit")
    p.add_argument("--latents", type=int, default=d.latents, help="dictionary width")
    p.add_argument("--k", type=int, default=d.k, help="active latents per token (TopK)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="dictionary training epochs over the corpus")
    p.add_argument("--tokens", type=int, default=d.behaviour_tokens, help="answer tokens per prompt (behaviour diff)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts per batch")
    p.add_argument("--causal", type=int, default=d.causal,
                   help="explaining features (of the behaviour change, of a confirmed trigger) given the causal check")
    p.add_argument("--null", type=int, default=d.null, help="random live features of the causal check's null")
    p.add_argument("--no-triggers", action="store_true", help="skip trigger discovery")
    p.add_argument("--grow-anchors", type=int, default=d.grow_anchors,
                   help="best tokens of the weight scan grown into trigger candidates (0: none)")
    p.add_argument("--grow-max-len", type=int, default=d.grow_max_len,
                   help="longest grown trigger candidate, in tokens")
    p.add_argument("--grow-min-gain", type=float, default=d.grow_min_gain,
                   help="least relative rise of the answer's divergence that keeps a growth step")
    p.add_argument("--grow-companions", type=int, default=d.grow_companions,
                   help="the weight scan's best tokens screened as neighbours at every growth step")
    p.add_argument("--no-grow-null", action="store_true",
                   help="keep a growth step on its relative gain alone, not also against random extensions")
    p.add_argument("--grow-shortlist", type=int, default=d.grow_shortlist,
                   help="best tokens of each scan a growth step reads (0: the whole vocabulary)")
    p.add_argument("--pool", type=int, default=d.pool, help="best-scanned tokens the trigger search builds from")
    p.add_argument("--max-len", type=int, default=d.max_len, help="longest trigger candidate, in tokens")
    p.add_argument("--scan-layer", type=int, default=None,
                   help="layer of the token scan's residual stream (default: a quarter of the depth)")
    p.add_argument("--gcg-steps", type=int, default=d.gcg_steps,
                   help="steps of the gradient-guided search, run when growth and the beam search leave "
                        "nothing confirmed (0: never)")
    p.add_argument("--confirm-prompts", type=int, default=d.confirm_prompts,
                   help="held-out prompts each trigger candidate is confirmed on")
    p.add_argument("--controls", type=int, default=d.controls, help="random strings per candidate (the control)")
    p.add_argument("--describe", type=int, default=d.describe,
                   help="suspicious features steered into ordinary prompts to show what they make the model say")
    p.add_argument("--flag-features", type=int, default=d.flag_features,
                   help="most-changed features given the watchlist's feature-level flag (0: off; ~20 min on 2 cores)")
    p.add_argument("--watchlist", default="default",
                   help="watchlist YAML of the describe and flag stages (default: the built-in one)")
    p.add_argument("--no-watchlist", action="store_true", help="no watchlist concepts at all (the verdict needs none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> str:
    """Run the audit for parsed ``args``; returns the final one-line verdict."""
    from pathlib import Path

    from autointerp.audit import AuditSettings, audit

    s = AuditSettings(corpus=args.corpus, latents=args.latents, k=args.k, epochs=args.epochs,
                      behaviour_tokens=args.tokens, batch_size=args.batch_size, causal=args.causal, null=args.null,
                      triggers=not args.no_triggers,
                      grow_anchors=args.grow_anchors, grow_max_len=args.grow_max_len,
                      grow_min_gain=args.grow_min_gain, grow_companions=args.grow_companions,
                      grow_shortlist=args.grow_shortlist, grow_null=not args.no_grow_null, pool=args.pool,
                      max_len=args.max_len,
                      scan_layer=args.scan_layer, gcg_steps=args.gcg_steps,
                      confirm_prompts=args.confirm_prompts, controls=args.controls, describe=args.describe,
                      flag_features=args.flag_features,
                      watchlist=None if args.no_watchlist else args.watchlist, device=args.device,
                      threads=args.threads)
    out = args.out or str(Path("runs") / f"audit-{Path(args.suspect).name or 'suspect'}")
    result = audit(args.suspect, args.base, out, s, until=args.until, force=args.force)
    if "verdict_line" in result:
        return f"{result['verdict_line']}\nreport: {Path(out) / 'report.html'}"
    return f"stopped after stage {args.until}; rerun without --until to go on ({out})"
