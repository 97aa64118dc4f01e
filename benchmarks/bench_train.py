"""Benchmark: TopK SAE training, ours against SAE Lens and EleutherAI sparsify, in one run.

The same activations for all: SmolLM2-135M ``blocks.15.hook_out`` on the embedded corpus
(cached with ``autointerp cache``), the first 300k rows for training and the next 30k held
out; TopK with 4,608 latents and k = 32, batch 4,096, one pass, 2 threads. Each trainer runs
in its own process and virtual env (``benchmarks/peers/setup_peers.sh`` makes the peers'),
with the same runner protocol (``benchmarks/peers/_common.py``: tokens/s of the training call,
held-out FVU and L0, dead fraction, peak RSS). Runners alternate over ``--repeats`` rounds;
the best tokens/s of each is kept (quality figures are deterministic per seed).

The dense ceiling: a step of a dense SAE costs six GEMMs of 2*B*d*F FLOPs each (forward,
weight gradient and input gradient, for the encoder and for the decoder). Their GFLOP/s is
measured in the same run; every trainer's "dense-equivalent GFLOP/s" is tokens/s x 6 x 2 x d x F,
so a trainer above the ceiling is one that avoids dense work (sparse decoding and gradients).

    python benchmarks/bench_train.py [--repeats 2] [--peers saelens,sparsify]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
OUT = HERE / "_out" / "train"
VENVS = HERE / "_venvs"


def prepare_data(train_tokens: int, heldout_tokens: int, model: str = "smollm2-135m",
                 hook: str = "blocks.15.hook_out") -> tuple[Path, Path]:
    from autointerp.activations import CacheConfig, cache_activations, iter_shards

    out = OUT if model == "smollm2-135m" else OUT / model
    train_f, held_f = out / "train.safetensors", out / "heldout.safetensors"
    if train_f.exists() and held_f.exists():
        return train_f, held_f
    out.mkdir(parents=True, exist_ok=True)
    cfg = CacheConfig(model=model, hookpoints=[hook], tokens=train_tokens + heldout_tokens)
    folder = cache_activations(cfg, out / "activations")[hook]
    acts = torch.cat([s["activations"] for s in iter_shards(folder)])
    save_file({"activations": acts[:train_tokens].contiguous()}, str(train_f))
    save_file({"activations": acts[train_tokens:].contiguous()}, str(held_f))
    return train_f, held_f


def gemm_ceiling(d: int, f: int, batch: int, threads: int, reps: int = 5) -> float:
    """GFLOP/s of the six dense GEMMs of a dense SAE step (best of ``reps``)."""
    torch.set_num_threads(threads)
    x, w_enc, w_dec = torch.randn(batch, d), torch.randn(d, f), torch.randn(f, d)
    z, g_out = torch.randn(batch, f), torch.randn(batch, d)

    def step() -> None:
        pre = x @ w_enc            # encoder forward
        _ = x.T @ pre              # encoder weight gradient (shape stand-in)
        _ = pre @ w_enc.T          # encoder input gradient
        _ = z @ w_dec              # decoder forward
        _ = z.T @ g_out            # decoder weight gradient
        _ = g_out @ w_dec.T        # decoder input gradient (to the latents)

    step()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return 6 * 2 * batch * d * f / best / 1e9


def run(runner: str, python: Path, train: Path, held: Path, args: argparse.Namespace, tag: str) -> dict:
    out = OUT / f"{tag}.json"
    cmd = [str(python), str(HERE / "peers" / runner), "--train", str(train), "--heldout", str(held),
           "--latents", str(args.latents), "--k", str(args.k), "--batch", str(args.batch),
           "--threads", str(args.threads), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    if proc.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="whose activations (gemma3-270m: the second family)")
    p.add_argument("--hookpoint", default="blocks.15.hook_out", help="e.g. blocks.9.hook_out for gemma3-270m")
    p.add_argument("--train-tokens", type=int, default=300_000)
    p.add_argument("--heldout-tokens", type=int, default=30_000)
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peers", default="sparsify,saelens", help="peers to run ('' for ours only)")
    args = p.parse_args()
    train, held = prepare_data(args.train_tokens, args.heldout_tokens, args.model, args.hookpoint)
    runners = {"ours": ("run_ours.py", Path(sys.executable))}
    for peer in [x for x in args.peers.split(",") if x]:
        python = VENVS / peer / "bin" / "python"
        if not python.exists():
            subprocess.run(["bash", str(HERE / "peers" / "setup_peers.sh")], check=True)
        runners[peer] = (f"run_{peer}.py", python)
    from safetensors import safe_open

    with safe_open(str(train), "pt") as f:
        d = f.get_slice("activations").get_shape()[1]
    best: dict[str, dict] = {}
    for r in range(args.repeats):
        for name, (runner, python) in runners.items():
            res = run(runner, python, train, held, args, f"{name}-{r}")
            print(f"round {r} {name}: {res['tokens_per_s']:,.0f} tokens/s  fvu {res['fvu']:.4f}  "
                  f"l0 {res['l0']:.1f}  dead {res['dead_fraction']:.2%}  rss {res['peak_rss_mib']:,.0f} MiB", flush=True)
            if name not in best or res["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = res
    ceiling = gemm_ceiling(d, args.latents, args.batch, args.threads)
    flop_per_token = 6 * 2 * d * args.latents
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}")
    print(f"dense ceiling: {ceiling:.1f} GFLOP/s = {ceiling * 1e9 / flop_per_token:,.0f} tokens/s\n")
    print("| trainer | version | tokens/s | dense-equiv. GFLOP/s | held-out FVU | L0 | dead | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res in best.items():
        print(f"| {name} | {res['version']} | {res['tokens_per_s']:,.0f} | {res['tokens_per_s'] * flop_per_token / 1e9:.1f} "
              f"| {res['fvu']:.4f} | {res['l0']:.1f} | {res['dead_fraction']:.2%} | {res['peak_rss_mib']:,.0f} |")
    summary = {"best": best, "dense_ceiling_gflops": ceiling, "args": vars(args)}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
