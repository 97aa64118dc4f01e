"""Train a sparsify (EleutherAI) TopK SAE for one pass over cached activations; report speed and quality.

Run with the sparsify venv (``bash benchmarks/peers/setup_peers.sh sparsify``)::

    benchmarks/_venvs/sparsify/bin/python benchmarks/peers/run_sparsify.py \\
        --train TRAIN.safetensors --heldout HELDOUT.safetensors \\
        --latents 4608 --k 32 --batch 4096 --threads 2 --out OUT.json

sparsify's own ``Trainer`` does the training. It has no cached-activations entry point: it runs
a model and trains on the output of hooked modules. So the "model" here is a lookup table:
token ids are row indices into the activation matrix and the hooked module ``hookpoint``
outputs those rows. Each dataset item is a "sequence" of ``seq_len`` consecutive rows, with
``seq_len`` dividing both N and the batch (at most 64), so that a step of ``--batch`` tokens
is ``batch / seq_len`` sequences and the DataLoader collates few items. The loader is not
shuffled (sparsify never shuffles), so training sees every row exactly once, in file order.

Everything else is the package default: ``SparseCoderConfig`` (activation topk, unit-norm
decoder) and ``TrainConfig`` (schedule-free SignSGD, lr ``5e-3 / sqrt(latents / 2**14)``,
loss fvu, ``auxk_alpha = 0`` so no AuxK loss, b_dec set to the first batch's mean). Only
``Trainer.fit`` is timed, minus the time spent in its checkpoint writes (``Trainer.save``,
every 1000 steps and at the end), reported as ``checkpoint_seconds``. The held-out metrics use
the final checkpoint as sparsify writes it (schedule-free *evaluation* weights), loaded with
``SparseCoder.load_from_disk``.

Metrics: see ``_common.py``; latents are sparsify's top-k activations scattered into [n, F].
"""

from __future__ import annotations

import math
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, evaluate, load_activations, parse_args, report  # noqa: E402

HOOKPOINT = "hookpoint"


class ActivationTable(nn.Module):
    """A stand-in for a language model: ``input_ids`` are rows of ``table``, emitted by the
    ``hookpoint`` submodule that sparsify hooks. Provides the few attributes the Trainer reads
    (``base_model``, ``device``, ``dummy_inputs``)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table, persistent=False)
        self.hookpoint = nn.Identity()

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hookpoint(self.table[input_ids])


class RowSequences(torch.utils.data.Dataset):
    """Item ``i`` is ``{"input_ids": rows i*seq_len ... (i+1)*seq_len - 1}``."""

    def __init__(self, n_rows: int, seq_len: int):
        self.n_rows, self.seq_len = n_rows, seq_len

    def __len__(self) -> int:
        return self.n_rows // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.arange(i * self.seq_len, (i + 1) * self.seq_len)}


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    from sparsify import SparseCoder, SparseCoderConfig, Trainer, TrainConfig

    train = load_activations(args.train)
    heldout = load_activations(args.heldout)
    n, d_in = train.shape
    seq_len = max(s for s in range(1, 65) if n % s == 0 and args.batch % s == 0)

    with tempfile.TemporaryDirectory() as save_dir:
        cfg = TrainConfig(
            sae=SparseCoderConfig(num_latents=args.latents, k=args.k),
            batch_size=args.batch // seq_len,
            hookpoints=[HOOKPOINT],
            log_to_wandb=False,
            save_dir=save_dir,
            init_seeds=[args.seed],
        )
        trainer = Trainer(cfg, RowSequences(n, seq_len), ActivationTable(train))

        checkpoint_seconds = 0.0
        real_save = trainer.save

        def timed_save() -> None:
            nonlocal checkpoint_seconds
            with Timer() as ts:
                real_save()
            checkpoint_seconds += ts.seconds

        trainer.save = timed_save  # instance attribute: fit() calls self.save()
        with Timer() as t:
            trainer.fit()
        train_seconds = t.seconds - checkpoint_seconds
        steps = trainer.global_step
        assert steps == math.ceil(n / args.batch), (steps, n, args.batch)

        coder = SparseCoder.load_from_disk(Path(save_dir) / "unnamed" / HOOKPOINT)
    coder.eval()

    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top_acts, top_indices, _ = coder.encode(x)
        latents = torch.zeros(x.shape[0], coder.num_latents).scatter(-1, top_indices, top_acts)
        return latents, coder.decode(top_acts, top_indices)

    metrics = evaluate(encode_decode, train, heldout, args.latents)
    report(args, {
        "package": "eai-sparsify",
        "version": version("eai-sparsify"),
        "torch": torch.__version__,
        "trainer": "sparsify.Trainer (activation-table model)",
        "seq_len": seq_len,
        "train_tokens": n,
        "heldout_tokens": heldout.shape[0],
        "d_in": d_in,
        "steps": steps,
        "train_seconds": train_seconds,
        "checkpoint_seconds": checkpoint_seconds,
        "tokens_per_s": n / train_seconds,
        **metrics,
    })


if __name__ == "__main__":
    main()
