"""``autointerp`` commands train, evaluate: the dictionaries."""

from __future__ import annotations

import argparse
from pathlib import Path

from autointerp.cli.registry import UserError, _threads, command


# ---------------------------------------------------------------------------------------- train
def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _train_args(p: argparse.ArgumentParser) -> None:
    from autointerp.training import TrainJob

    d = TrainJob(activations=["x"], out="x")
    p.add_argument("--activations", required=True, action="append",
                   help="cache folder of a hook point (repeat, or comma-separate, for several)")
    p.add_argument("--out", required=True, help="dictionaries root; each dictionary goes to OUT/<hookpoint>/")
    p.add_argument("--arch", default=d.arch, help="relu, topk, batchtopk, jumprelu (or a registered name)")
    p.add_argument("--latents", type=_int_list, default=d.latents, help="dictionary size(s), e.g. 4608 or 4608,9216")
    p.add_argument("--k", type=_int_list, default=d.k, help="active latents per token (TopK family), e.g. 32 or 16,32")
    p.add_argument("--target", default=None, help="cache folder of a target hook point: train transcoders")
    p.add_argument("--skip", action="store_true", help="transcoder with a linear skip connection")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--heldout-tokens", type=int, default=d.heldout_tokens, help="trailing cache tokens never trained on")
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(latents / 16384)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--threads", type=int, default=None)


@command("train", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    """Train sparse dictionaries (SAEs or transcoders) on cached activations, all from one read."""
    from autointerp.distributed import init_from_env
    from autointerp.training import TrainJob, train_from_cache

    _threads(args.threads)
    init_from_env()
    folders = [f.strip() for a in args.activations for f in a.split(",") if f.strip()]
    try:
        job = TrainJob(activations=folders, out=args.out, arch=args.arch, latents=args.latents, k=args.k,
                       target=args.target, skip_connection=args.skip, batch_size=args.batch_size,
                       epochs=args.epochs, heldout_tokens=args.heldout_tokens, lr=args.lr, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)
        trained = train_from_cache(job, resume=args.resume)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    for name, t in trained.items():
        m = t.metrics
        print(f"{name}: fvu {m.get('fvu', float('nan')):.4f}  l0 {m.get('l0', float('nan')):.1f}  "
              f"dead {m.get('dead_fraction', float('nan')):.2%} -> {t.path}")
        for w in m.get("warnings", []):
            print(f"  WARNING: {w}")
    return 0


# ------------------------------------------------------------------------------------- evaluate
def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dictionaries", nargs="+", help="dictionary folders written by `autointerp train`")
    p.add_argument("--no-downstream", action="store_true", help="skip the model-based CE/KL metrics")
    p.add_argument("--contexts", type=int, default=64, help="held-out contexts for the downstream metrics")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)


@command("evaluate", _evaluate_args)
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Held-out FVU, L0, dead/dense fractions and CE-loss recovered; writes metrics.json beside each dictionary."""
    import json

    from autointerp.evaluate import evaluate_dictionary
    from autointerp.models import load_model

    _threads(args.threads)
    models: dict[str, object] = {}
    for folder in args.dictionaries:
        model = None
        if not args.no_downstream:
            spec = json.loads((Path(folder) / "autointerp.json").read_text())["model"]["spec"]
            model = models.setdefault(spec, load_model(spec, device=args.device))
        m = evaluate_dictionary(folder, model=model, downstream_contexts=args.contexts)
        line = f"{folder}: fvu {m['fvu']:.4f}  l0 {m['l0']:.1f}  dead {m['dead_fraction']:.2%}"
        if "ce_recovered_zero" in m:
            line += (f"  CE clean {m['ce_clean']:.3f} dict {m['ce_dict']:.3f}  recovered (zero) "
                     f"{m['ce_recovered_zero']:.3f} (mean) {m['ce_recovered_mean']:.3f}  KL {m['kl_clean_to_dict']:.3f}")
        print(line)
    return 0
