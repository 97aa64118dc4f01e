"""Benchmark: local explainer throughput, batched against one request at a time.

On the embedded model (SmolLM2-135M-Instruct as the explainer LLM), the token-activation
explainer's real prompts for ``--features`` alive latents of a trained dictionary are sent
(a) one at a time through ``LocalClient.generate`` and (b) together through
``LocalClient.generate_many`` with ``--batch-size``, with the prompt prefix every request shares
(system prompt and instructions) computed once, and again with it computed for every row; greedy decoding, the same
``--max-tokens`` for both. Reported: explanations/s of each and the ratio (issue target: at
least 4x). Both runs produce the same greedy completions up to batching noise; the share of
identical texts is reported too.

    python benchmarks/bench_autointerp.py --dictionary runs/demo/dictionaries/blocks.15.hook_out

``--batch-size`` takes several sizes (``1,16,64``): the one-at-a-time run is done once and each
batched run is compared with it. ``--device cuda`` runs the explainer on a GPU.
``--save-records FILE`` writes the alive latents' examples as JSON and stops; ``--records FILE``
reads them instead of streaming the activation cache, so the benchmark can run on a machine
that holds only the model (``--model`` takes any spec, a ``.gguf`` path included).

``--scoring``: instead, the teacher-forced LLM scorers (``detection``, ``simulation``) on
``--features`` alive latents with the prompt prefix their rows share computed once
(``LocalClient.min_shared_prefix`` 16, the default) against every row computed in full; reported:
seconds per feature of each and the ratio, and the largest difference between the two scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from autointerp.examples import Example, LatentRecord, collect_examples
from autointerp.explainers import build_explainer
from autointerp.llm import LocalClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dictionary", default="runs/demo/dictionaries/blocks.15.hook_out")
    p.add_argument("--model", default="smollm2-135m", help="explainer model spec (alias, folder or .gguf)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--batch-size", default="16", help="one size, or several comma-separated")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-examples", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--records", help="read the latents' examples from this JSON (from --save-records)")
    p.add_argument("--save-records", help="write the alive latents' examples to this JSON and stop")
    p.add_argument("--scoring", action="store_true", help="time teacher-forced scoring, shared prefix vs none")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_size.split(",")]
    if args.records:
        alive = [_record(d) for d in json.loads(Path(args.records).read_text())][:args.features]
    else:
        records = collect_examples(args.dictionary, progress=False, n_top=12, n_random=4)
        alive = [r for r in records.values() if not r.dead][:args.features]
    if args.save_records:
        Path(args.save_records).write_text(json.dumps([dataclasses.asdict(r) for r in alive]))
        print(f"wrote {len(alive)} records to {args.save_records}")
        return
    client = LocalClient(args.model, device=args.device, batch_size=max(sizes), max_new_tokens=args.max_tokens)
    tokenizer = client.tokenizer
    gpu = f", {torch.cuda.get_device_name()}" if client.device.startswith("cuda") else ""
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}, "
               f"device {client.device}{gpu}")
    if args.scoring:
        client.batch_size = sizes[0]
        print(json.dumps({"machine": machine, **scoring(client, tokenizer, alive)}, indent=2))
        return
    explainer = build_explainer("token-activation", client=client, tokenizer=tokenizer,
                                max_examples=args.max_examples, max_tokens=args.max_tokens)
    prompts = [explainer.messages(r)[0] for r in alive]
    client.generate(prompts[0], max_tokens=2)  # warm-up: first-call allocations and kernel choices

    t = time.perf_counter()
    single = [client.generate(m, max_tokens=args.max_tokens) for m in prompts]
    t_single = time.perf_counter() - t
    res = {"machine": machine, "model": args.model, "features": len(prompts), "max_tokens": args.max_tokens,
           "one_at_a_time_per_s": len(prompts) / t_single, "batched": []}
    for size in sizes:
        client.batch_size = size
        for shared in (True, False):  # the prompt prefix all requests share computed once, or per batch row
            client.min_shared_prefix = LocalClient.min_shared_prefix if shared else 10**9
            t = time.perf_counter()
            batched = client.generate_many(prompts, max_tokens=args.max_tokens)
            t_batched = time.perf_counter() - t
            res["batched"].append({
                "batch_size": size, "shared_prefix": shared, "per_s": len(prompts) / t_batched,
                "speedup": t_single / t_batched,
                "identical_texts": sum(a.text == b.text for a, b in zip(single, batched)) / len(prompts),
                "ok": sum(c.ok for c in batched)})
        client.min_shared_prefix = LocalClient.min_shared_prefix
    res["shared_prefix_tokens"] = client._shared_prefix([client.prompt_ids(m) for m in prompts])[0]
    res["ok_single"] = sum(c.ok for c in single)
    res["example_completion"] = single[0].text
    print(json.dumps(res, indent=2))


def _record(d: dict) -> LatentRecord:
    """A :class:`LatentRecord` from its ``dataclasses.asdict`` form."""
    lists = {k: [Example(**e) for e in d[k]] for k in ("top", "quantiles", "random")}
    return LatentRecord(**{**d, **lists})


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
