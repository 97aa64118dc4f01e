"""Benchmark: local explainer throughput, batched against one request at a time.

On the embedded model (SmolLM2-135M-Instruct as the explainer LLM), the token-activation
explainer's real prompts for ``--features`` alive latents of a trained dictionary are sent
(a) one at a time through ``LocalClient.generate`` and (b) together through
``LocalClient.generate_many`` with ``--batch-size``; greedy decoding, the same
``--max-tokens`` for both. Reported: explanations/s of each and the ratio (issue target: at
least 4x). Both runs produce the same greedy completions up to batching noise; the share of
identical texts is reported too.

    python benchmarks/bench_autointerp.py --dictionary runs/demo/dictionaries/blocks.15.hook_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from autointerp.examples import collect_examples
from autointerp.explainers import build_explainer
from autointerp.llm import LocalClient
from autointerp.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dictionary", default="runs/demo/dictionaries/blocks.15.hook_out")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-examples", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    records = collect_examples(args.dictionary, progress=False, n_top=12, n_random=4)
    alive = [r for r in records.values() if not r.dead][:args.features]
    client = LocalClient(model, batch_size=args.batch_size, max_new_tokens=args.max_tokens)
    explainer = build_explainer("token-activation", client=client, tokenizer=model.tokenizer,
                                max_examples=args.max_examples, max_tokens=args.max_tokens)
    prompts = [explainer.messages(r)[0] for r in alive]

    t = time.perf_counter()
    single = [client.generate(m, max_tokens=args.max_tokens) for m in prompts]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    batched = client.generate_many(prompts, max_tokens=args.max_tokens)
    t_batched = time.perf_counter() - t

    same = sum(a.text == b.text for a, b in zip(single, batched)) / len(prompts)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}",
        "features": len(prompts), "batch_size": args.batch_size, "max_tokens": args.max_tokens,
        "one_at_a_time_per_s": len(prompts) / t_single, "batched_per_s": len(prompts) / t_batched,
        "speedup": t_single / t_batched, "identical_texts": same,
        "ok": {"single": sum(c.ok for c in single), "batched": sum(c.ok for c in batched)},
        "example_completion": batched[0].text,
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
