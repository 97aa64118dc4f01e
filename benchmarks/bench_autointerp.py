"""Benchmark: local explainer throughput, batched against one request at a time.

On the embedded model (SmolLM2-135M-Instruct as the explainer LLM), the token-activation
explainer's real prompts for ``--features`` alive latents of a trained dictionary are sent
(a) one at a time through ``LocalClient.generate`` and (b) together through
``LocalClient.generate_many`` with ``--batch-size``; greedy decoding, the same
``--max-tokens`` for both. Reported: explanations/s of each and the ratio (issue target: at
least 4x). Both runs produce the same greedy completions up to batching noise; the share of
identical texts is reported too.

    python benchmarks/bench_autointerp.py --dictionary runs/demo/dictionaries/blocks.15.hook_out

``--scoring``: instead, the teacher-forced LLM scorers (``detection``, ``simulation``) on
``--features`` alive latents with the prompt prefix their rows share computed once
(``LocalClient.min_shared_prefix`` 16, the default) against every row computed in full; reported:
seconds per feature of each and the ratio, and the largest difference between the two scores.
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
    p.add_argument("--scoring", action="store_true", help="time teacher-forced scoring, shared prefix vs none")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    records = collect_examples(args.dictionary, progress=False, n_top=12, n_random=4)
    alive = [r for r in records.values() if not r.dead][:args.features]
    client = LocalClient(model, batch_size=args.batch_size, max_new_tokens=args.max_tokens)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}"
    if args.scoring:
        print(json.dumps({"machine": machine, **scoring(client, model.tokenizer, alive)}, indent=2))
        return
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
        "machine": machine,
        "features": len(prompts), "batch_size": args.batch_size, "max_tokens": args.max_tokens,
        "one_at_a_time_per_s": len(prompts) / t_single, "batched_per_s": len(prompts) / t_batched,
        "speedup": t_single / t_batched, "identical_texts": same,
        "ok": {"single": sum(c.ok for c in single), "batched": sum(c.ok for c in batched)},
        "example_completion": batched[0].text,
    }
    print(json.dumps(res, indent=2))


def scoring(client: LocalClient, tokenizer, records) -> dict:
    """Seconds per feature of forced detection and simulation, prefix shared vs not (same scores)."""
    from autointerp.scorers import build_scorer

    out = {"features": len(records), "batch_size": client.batch_size}
    for name in ("detection", "simulation"):
        scorer = build_scorer(name, client=client, tokenizer=tokenizer)
        times, values = {}, {}
        for mode, min_shared in (("full", 10**9), ("shared_prefix", LocalClient.min_shared_prefix)):
            client.min_shared_prefix = min_shared
            t = time.perf_counter()
            scores = [scorer.score(r, "the word open in file-handling code") for r in records]
            times[mode] = (time.perf_counter() - t) / len(records)
            values[mode] = [s.value for s in scores]
        diffs = [abs(a - b) for a, b in zip(values["full"], values["shared_prefix"]) if a is not None and b is not None]
        out[name] = {"s_per_feature_full": times["full"], "s_per_feature_shared": times["shared_prefix"],
                     "speedup": times["full"] / times["shared_prefix"], "max_abs_score_difference": max(diffs)}
    client.min_shared_prefix = LocalClient.min_shared_prefix
    return out


if __name__ == "__main__":
    main()
