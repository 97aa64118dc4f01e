"""Train a TopK SAE with our `dictionaries` Trainer for one pass: the same protocol as the peers.

Run with the project's venv (``.venv/bin/python benchmarks/peers/run_ours.py --train T --heldout H
--latents 4608 --k 32 --batch 4096 --threads 2 --out OUT.json``). Only ``Trainer.train`` is
timed; the metrics are those of ``_common.evaluate`` (identical for every runner).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, evaluate, load_activations, parse_args, report  # noqa: E402

import dictionaries as dl  # noqa: E402

KEY = "acts"


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    train = load_activations(args.train)
    heldout = load_activations(args.heldout)
    n, d_in = train.shape
    steps = n // args.batch  # one pass; the ragged tail is dropped by the source
    cfg = dl.DictionaryConfig(arch="topk", d_in=d_in, n_latents=args.latents, k=args.k)
    spec = dl.DictionarySpec(name="sae", cfg=cfg, input_key=KEY)
    train_cfg = dl.TrainConfig(steps=steps, seed=args.seed,
                               progress=False)
    source = dl.TensorBatchSource({KEY: train}, batch_size=args.batch, seed=args.seed)
    with tempfile.TemporaryDirectory() as out:
        with Timer() as t:
            result = dl.Trainer([spec], train_cfg, out).train(source)["sae"]
    sae = result.dictionary.eval()

    @torch.no_grad()
    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = sae.encode(x)
        return z, sae.decode(z)

    metrics = evaluate(encode_decode, train, heldout, args.latents)
    report(args, {
        "package": "autointerp-dictionaries",
        "version": "local",
        "torch": torch.__version__,
        "trainer": "dictionaries.Trainer (TensorBatchSource, shuffled)",
        "train_tokens": steps * args.batch,
        "heldout_tokens": heldout.shape[0],
        "d_in": d_in,
        "steps": steps,
        "train_seconds": t.seconds,
        "tokens_per_s": steps * args.batch / t.seconds,
        "lr": train_cfg.lr_for(args.latents),
        **metrics,
    })


if __name__ == "__main__":
    main()
