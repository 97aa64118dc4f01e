"""What the peer benchmark runners share: arguments, data, held-out metrics, the JSON report.

Imports only torch, safetensors and the standard library, because it runs inside each peer's
venv (``benchmarks/_venvs/<peer>``) next to that peer's package.

Metric definitions (identical for every runner, and meant to match ``benchmarks/bench_train.py``):

* ``fvu``: on the held-out set, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` with ``mean`` the
  held-out mean; accumulated in float64 over chunks.
* ``l0``: mean number of non-zero latents per held-out token.
* ``dead_fraction``: fraction of latents that are zero on *every* token of train + held-out,
  using the final weights (one extra inference pass over the training set, not timed).
  ``dead_fraction_heldout``: the same on the held-out set alone.
* ``tokens_per_s``: training tokens / seconds spent in the package's training call (one pass).
* ``peak_rss_mib``: ``ru_maxrss`` of this process (includes the loaded activations).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

EVAL_CHUNK = 4096

# (x [n, d]) -> (latents [n, F] dense, x_hat [n, d])
EncodeDecode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--train", type=Path, required=True, help="safetensors with 'activations' [N, d] float32")
    p.add_argument("--heldout", type=Path, required=True,
                   help="safetensors with 'activations' [M, d] float32")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096, help="tokens per training step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


def load_activations(path: Path) -> torch.Tensor:
    tensors = load_file(str(path))
    if set(tensors) != {"activations"}:
        raise ValueError(f"{path}: expected exactly one tensor 'activations', found {sorted(tensors)}")
    acts = tensors["activations"]
    if acts.ndim != 2 or acts.dtype != torch.float32:
        raise ValueError(
            f"{path}: 'activations' must be float32 [N, d], got {acts.dtype} {tuple(acts.shape)}"
        )
    return acts


@torch.no_grad()
def evaluate(encode_decode: EncodeDecode, train: torch.Tensor, heldout: torch.Tensor, n_latents: int) -> dict:
    """Held-out FVU and L0, and the dead fractions defined in the module docstring."""
    fired_heldout = torch.zeros(n_latents, dtype=torch.bool)
    sq_err = torch.zeros((), dtype=torch.float64)
    active = 0
    mean = heldout.double().mean(0)
    total_var = (heldout.double() - mean).pow(2).sum()
    for chunk in heldout.split(EVAL_CHUNK):
        latents, x_hat = encode_decode(chunk)
        sq_err += (chunk.double() - x_hat.double()).pow(2).sum()
        nonzero = latents != 0
        active += int(nonzero.sum())
        fired_heldout |= nonzero.any(0)
    fired_all = fired_heldout.clone()
    for chunk in train.split(EVAL_CHUNK):
        latents, _ = encode_decode(chunk)
        fired_all |= (latents != 0).any(0)
    return {
        "fvu": float(sq_err / total_var),
        "l0": active / heldout.shape[0],
        "dead_fraction": float((~fired_all).float().mean()),
        "dead_fraction_heldout": float((~fired_heldout).float().mean()),
        "dead_definition": "latents zero on every train+heldout token under the final weights",
    }


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def report(args: argparse.Namespace, result: dict) -> None:
    result = {**result, "peak_rss_mib": peak_rss_mib(), "threads": args.threads,
              "latents": args.latents, "k": args.k, "batch": args.batch, "seed": args.seed}
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
