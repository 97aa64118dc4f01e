"""Benchmark: the behaviour diff's divergence pass (issue 20's target: 1,600 prompts x 8 tokens in at
most 180 s on 2 CPU cores for a 135M pair).

It runs :func:`autointerp.behaviour.behaviour_diff` end to end (prompts, the suspect's greedy answer,
both models' teacher-forced pass, the base's own answer, the SQLite table), without a dictionary,
on ``--prompts`` chat prompts: the shipped audit corpus (1,200 conversations) cycled to the count
asked (a repeated conversation costs what the first one did). A fresh folder each time: nothing is
resumed.

    python benchmarks/bench_behaviour.py --suspect benchmarks/_out/planted/clean-0/model \\
        [--base smollm2-135m] [--prompts 1600] [--batch-size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suspect", required=True)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=1600)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from autointerp.audit import default_corpus
    from autointerp.behaviour import behaviour_diff

    lines = Path(default_corpus()).read_text().splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("\n".join(itertools.islice(itertools.cycle(lines), args.prompts)) + "\n")
        t = time.perf_counter()
        r = behaviour_diff(Path(tmp) / "run", args.base, suspect=args.suspect, corpus=str(corpus),
                           n_tokens=args.tokens, batch_size=args.batch_size, causal=0, progress=False)
        wall = time.perf_counter() - t
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
           "suspect": args.suspect, "base": args.base, "prompts": r.n_prompts, "tokens": args.tokens,
           "batch_size": args.batch_size, "wall_s": round(wall, 1), "divergence_s": r.timings_s["divergence"],
           "prompts_per_s": round(r.n_prompts / wall, 2), "shape": r.shape, "outliers": len(r.outliers),
           "median_kl_first": round(r.stats["kl_first"]["median"], 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
