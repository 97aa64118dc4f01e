"""Benchmark: throughput and memory of `autointerp cache` against plain transformers forwards.

In one run, on the embedded model (SmolLM2-135M), batches of 16 x 128 tokens, fixed threads:

* ``autointerp cache`` at ``blocks.15.hook_out`` (TransformerBridge hooks, early stop after
  layer 15, shards written and hashed), timed around the caching itself;
* (a) a plain transformers forward of all 30 layers with the LM head;
* (b) a plain transformers forward truncated after layer 15 (``model.model.layers[:16]``).

``--model gemma3-270m --layer 9`` measures the second family the same way. The cached rows are
also compared with the plain forward's hidden state (``max_abs_diff_vs_plain``; 0 is bit-identical).

Rounds alternate between the three so that drifts in machine speed hit all of them; the
best round of each is reported. Then the peak RSS of the full CLI command for 100k and
1M tokens, each in a fresh process.

    python benchmarks/bench_cache.py [--batches 12] [--rounds 2] [--rss-tokens 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from autointerp.activations import CacheConfig, CacheWriter
from autointerp.data import ContextConfig
from autointerp.models import load_model



def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` in a fresh child; return (its peak RSS in MB, wall seconds)."""
    probe = ("import resource, subprocess, sys, time; t = time.time(); "
             "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t, rc)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True).stdout
    kb, secs, rc = out.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {rc}")
    return int(kb) / 1024, float(secs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=12, help="batches of 16 x 128 per timed round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss-tokens", default="100000,1000000", help="token counts for the peak-RSS runs ('' to skip)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--model", default="smollm2-135m", help="model spec (gemma3-270m: the second family)")
    p.add_argument("--layer", type=int, default=15, help="cache blocks.LAYER.hook_out; truncate after LAYER")
    args = p.parse_args()
    hook = f"blocks.{args.layer}.hook_out"
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    bridge_model = load_model(args.model)
    plain = AutoModelForCausalLM.from_pretrained(bridge_model.source, dtype=torch.float32).eval()
    n_ctx = 16 * args.batches
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    cfg = CacheConfig(model=args.model, hookpoints=[hook], tokens=n_ctx * 120, batch_size=16,
                      shard_contexts=16 * 4, context=ContextConfig(ctx_len=128))
    writer = CacheWriter(cfg, tmp / "warm", model=bridge_model, progress=False)
    # the baselines run exactly the contexts the cache job runs
    tokens = writer.contexts.tokens
    n_ctx, n_tok = len(tokens), tokens.numel()
    layers = plain.model.layers

    def run_cache(r: int) -> None:
        CacheWriter(cfg, tmp / f"r{r}", model=bridge_model, progress=False).run()

    def run_full(_r: int) -> None:
        with torch.inference_mode():
            for i in range(0, n_ctx, 16):
                plain(tokens[i:i + 16])

    def run_truncated(_r: int) -> None:
        plain.model.layers = layers[:args.layer + 1]
        try:
            with torch.inference_mode():
                for i in range(0, n_ctx, 16):
                    plain.model(tokens[i:i + 16])
        finally:
            plain.model.layers = layers

    with torch.inference_mode():  # warm-up
        plain(tokens[:16])
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for name, fn in [("autointerp_cache", run_cache), ("plain_full_lm_head", run_full),
                         ("plain_truncated", run_truncated)]:
            t = time.perf_counter()
            fn(r)
            tps = n_tok / (time.perf_counter() - t)
            best[name] = max(best.get(name, 0.0), tps)
            print(f"round {r} {name}: {tps:,.0f} tokens/s", flush=True)
    # bit-identical: the cached rows against the plain forward's hidden state (first shard)
    from autointerp.activations import iter_shards

    shard = next(iter_shards(tmp / "r0" / hook))
    with torch.inference_mode():
        hidden = plain(shard["contexts"].long(), output_hidden_states=True).hidden_states[args.layer + 1]
    rows = hidden[shard["ctx"].long(), shard["ctx_pos"].long()]
    max_diff = float((rows - shard["activations"]).abs().max())
    print(f"cached rows vs plain forward: max |diff| {max_diff:.3g}", flush=True)
    res = {
        "model": args.model, "hookpoint": hook, "max_abs_diff_vs_plain": max_diff,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": args.threads, "tokens_per_round": n_tok,
        "tokens_per_s": {k: round(v) for k, v in best.items()},
        "ratio_vs_full": round(best["autointerp_cache"] / best["plain_full_lm_head"], 2),
        "ratio_vs_truncated": round(best["autointerp_cache"] / best["plain_truncated"], 3),
    }
    rss = {}
    for n in [int(x) for x in args.rss_tokens.split(",") if x]:
        cmd = [sys.executable, "-m", "autointerp.cli", "cache", "--model", args.model, "--hookpoints", hook,
               "--tokens", str(n), "--threads", str(args.threads), "--out", str(tmp / f"rss{n}")]
        mb, secs = peak_rss_mb(cmd)
        rss[n] = {"peak_rss_mb": round(mb), "wall_s": round(secs, 1)}
        print(f"peak RSS for {n:,} tokens: {mb:,.0f} MB ({secs:.0f}s)", flush=True)
    if len(rss) >= 2:
        lo, hi = rss[min(rss)]["peak_rss_mb"], rss[max(rss)]["peak_rss_mb"]
        res["rss_ratio_max_vs_min"] = round(hi / lo, 3)
    res["peak_rss"] = rss
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
