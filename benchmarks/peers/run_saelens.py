"""Train a SAE Lens TopK SAE for one pass over cached activations; report speed and quality.

Run with the SAE Lens venv (``bash benchmarks/peers/setup_peers.sh saelens``)::

    benchmarks/_venvs/saelens/bin/python benchmarks/peers/run_saelens.py \\
        --train TRAIN.safetensors --heldout HELDOUT.safetensors \\
        --latents 4608 --k 32 --batch 4096 --threads 2 --out OUT.json

SAE Lens's own trainer does the training: ``SAETrainer`` fed by an in-memory iterator of
``[batch, d]`` tensors (its ``DataProvider`` protocol; SAE Lens's synthetic-data training uses
the same entry point). The language-model runner is not used because it needs a model to
produce activations. Everything not given on the command line is the package default:
``TopKTrainingSAEConfig`` (aux_loss_coefficient 1, rescale_acts_by_decoder_norm, decoder init
norm 0.1, b_dec subtracted from the input, no activation normalisation) and ``SAETrainerConfig``
(Adam lr 3e-4, betas 0.9/0.999, constant schedule, grad-norm clip 1, dead window 1000 steps).
``total_training_samples = N`` and the iterator ends with the partial last batch, so the loop
sees every training token exactly once. Only ``SAETrainer.fit`` is timed.

Metrics: see ``_common.py``; latents are SAE Lens's feature activations of the trained SAE.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, evaluate, load_activations, parse_args, report  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    train = load_activations(args.train)
    heldout = load_activations(args.heldout)
    n, d_in = train.shape

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=args.latents, k=args.k))
    lr = SAETrainerConfig.lr
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n,
        train_batch_size_samples=args.batch,
        lr_end=lr / 10,  # what LanguageModelSAERunnerConfig fills in (unused by the constant schedule)
    )
    batches = iter(train.split(args.batch))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches)

    with Timer() as t:
        trainer.fit()
    assert trainer.n_training_samples == n, (trainer.n_training_samples, n)

    sae.eval()

    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = sae.encode(x)
        return latents, sae.decode(latents)

    metrics = evaluate(encode_decode, train, heldout, args.latents)
    report(args, {
        "package": "sae-lens",
        "version": version("sae-lens"),
        "torch": torch.__version__,
        "trainer": "sae_lens.SAETrainer (in-memory DataProvider)",
        "train_tokens": n,
        "heldout_tokens": heldout.shape[0],
        "d_in": d_in,
        "steps": trainer.n_training_steps,
        "train_seconds": t.seconds,
        "tokens_per_s": n / t.seconds,
        **metrics,
    })


if __name__ == "__main__":
    main()
