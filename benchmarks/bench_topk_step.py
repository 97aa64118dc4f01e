"""Benchmark: one TopK SAE training step of ``dictionaries.Trainer`` against two references.

In one run, on the same random-normal data ``[tokens, d_in]``, fixed threads:

* (a) ``dictionaries.Trainer`` steps (forward, backward, decoder-gradient projection, Adam,
  decoder renormalisation, dead-latent bookkeeping, per-step metrics), timed between the
  ``on_step`` callbacks of the first and last step (initialisation and saving excluded);
* (b) a plain dense PyTorch TopK SAE loop: ``z = scatter(ReLU(topk(x W_enc + b_enc)))``,
  ``x_hat = z W_dec + b_dec``, autograd, ``torch.optim.Adam`` (the naive baseline);
* (c) the six dense GEMMs of a dense SAE step (encoder and decoder forward; gradients of the
  pre-activations, ``W_dec``, ``W_enc`` and ``x``), a ceiling for dense-autograd training.

Rounds alternate between (a), (b) and (c) so that drifts in machine speed hit all three; the
best round of each is reported, in tokens per second.

    python benchmarks/bench_topk_step.py [--rounds 3] [--steps 8] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import dictionaries as dl

SPARSIFY_REPORTED = 13_248
"""sparsify's TopK trainer on a comparable 2-core machine, same setting (reported to us, not
measured by this script)."""


def trainer_round(data: torch.Tensor, args: argparse.Namespace, out: Path) -> float:
    """Seconds per step of ``dl.Trainer`` (mean over steps 2..last of one run)."""
    stamps: list[float] = []
    spec = dl.DictionarySpec("sae", dl.DictionaryConfig("topk", d_in=args.d_in, n_latents=args.latents, k=args.k),
                             input_key="x")
    cfg = dl.TrainConfig(steps=args.steps + 1, warmup_steps=1, progress=False, b_dec_init="mean")
    source = dl.TensorBatchSource({"x": data}, args.batch, seed=0)
    dl.Trainer([spec], cfg, out).train(source, on_step=lambda _info: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def dense_round(data: torch.Tensor, args: argparse.Namespace) -> float:
    """Seconds per step of the plain dense PyTorch TopK SAE loop."""
    torch.manual_seed(0)
    d, n = args.d_in, args.latents
    W_dec = torch.randn(n, d)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_enc = torch.nn.Parameter(W_dec.T.clone())
    W_dec = torch.nn.Parameter(W_dec)
    b_enc = torch.nn.Parameter(torch.zeros(n))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)
    batches = data.split(args.batch)
    t0 = 0.0
    for step in range(args.steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        x = batches[step % len(batches)]
        pre = x @ W_enc + b_enc
        acts, idx = pre.topk(args.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, idx, torch.relu(acts))
        x_hat = z @ W_dec + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / args.steps


def gemm_round(data: torch.Tensor, args: argparse.Namespace) -> float:
    """Seconds per step of the six dense GEMMs alone."""
    g = torch.Generator().manual_seed(0)
    d, n, b = args.d_in, args.latents, args.batch
    W_enc, W_dec = torch.randn(d, n, generator=g), torch.randn(n, d, generator=g)
    x = data[:b]
    grad_out = torch.randn(b, d, generator=g)
    t0 = 0.0
    for step in range(args.steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        pre = x @ W_enc                 # encoder forward      [B, F]
        _x_hat = pre @ W_dec            # decoder forward      [B, d]
        grad_pre = grad_out @ W_dec.T   # grad of latents      [B, F]
        _g_dec = pre.T @ grad_out       # grad W_dec           [F, d]
        _g_enc = x.T @ grad_pre         # grad W_enc           [d, F]
        _g_x = grad_pre @ W_enc.T       # grad x               [B, d]
    return (time.perf_counter() - t0) / args.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=40_960, help="rows of random-normal data")
    p.add_argument("--steps", type=int, default=8, help="timed steps per round (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["trainer", "dense", "gemm"], action="append",
                   help="run only these (repeatable); default all three")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("dictionaries").setLevel(logging.ERROR)  # no "too few tokens" warnings
    data = torch.randn(args.tokens, args.d_in, generator=torch.Generator().manual_seed(0))

    tmp = Path(tempfile.mkdtemp(prefix="bench-topk-"))
    runners: dict[str, Callable[[int], float]] = {
        "trainer": lambda r: trainer_round(data, args, tmp / f"r{r}"),
        "dense": lambda r: dense_round(data, args),
        "gemm": lambda r: gemm_round(data, args),
    }
    chosen = args.only or list(runners)
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for name in chosen:
            secs = runners[name](r)
            best[name] = min(best.get(name, float("inf")), secs)
            print(f"round {r} {name:8s} {secs * 1e3:8.1f} ms/step  {args.batch / secs:9.0f} tokens/s", flush=True)

    rates = {name: args.batch / secs for name, secs in best.items()}
    print(f"\nbest of {args.rounds} rounds x {args.steps} steps; d_in={args.d_in} latents={args.latents} "
          f"k={args.k} batch={args.batch} threads={args.threads} torch={torch.__version__}")
    labels = {"trainer": "(a) dictionaries.Trainer step", "dense": "(b) plain dense PyTorch loop",
              "gemm": "(c) six dense GEMMs"}
    for name in chosen:
        print(f"{labels[name]:32s} {best[name] * 1e3:8.1f} ms/step  {rates[name]:9.0f} tokens/s")
    print(f"{'sparsify (reported, not run)':32s} {'':8s}          {SPARSIFY_REPORTED:9.0f} tokens/s")
    if "trainer" in rates:
        for name in ("dense", "gemm"):
            if name in rates:
                print(f"trainer / {name}: {rates['trainer'] / rates[name]:.2f}x")
        print(f"trainer / sparsify (reported): {rates['trainer'] / SPARSIFY_REPORTED:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": vars(args), "torch": torch.__version__, "machine": platform.machine(),
            "seconds_per_step": best, "tokens_per_s": rates,
            "sparsify_reported_tokens_per_s": SPARSIFY_REPORTED,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
