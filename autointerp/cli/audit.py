"""``autointerp`` commands diff, circuit, flag, audit: what changed in a fine-tune and whether it is a problem."""

from __future__ import annotations

import argparse

from autointerp.cli.registry import UserError, command


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder made on the fine-tuned model (its cache and dictionary)")
    p.add_argument("--base", default=None,
                   help="the base model: alias, local folder, .gguf or cached hub id (default: the --base-run's)")
    p.add_argument("--base-run", default=None,
                   help="a run of the base model on the same corpus: its cached activations are read instead of "
                        "running the base model")
    p.add_argument("--dictionary", default=None, help="which of the run's dictionaries (when it has several)")
    p.add_argument("--base-dictionary", default=None,
                   help="a dictionary trained on the base model at the same hook point: adds counterpart cosines")
    p.add_argument("--z-min", type=float, default=5.0, help="|z| at which a change counts as significant")
    p.add_argument("--jump-min", type=int, default=3,
                   help="contexts with a jump beyond the base maximum at which a change counts as significant")
    p.add_argument("--rank-by", default="tail", choices=["tail", "frequency"],
                   help="tail: contexts where the fine-tune lifts the feature beyond its base range first; "
                        "frequency: token-level firing change first")
    p.add_argument("--top", type=int, default=20, help="rows of the ranking to print")
    p.add_argument("--device", default="cpu")
    from autointerp.behaviour.cli import configure

    configure(p)


@command("diff", _diff_args)
def cmd_diff(args: argparse.Namespace) -> int:
    """Rank a run's features by how they changed from a base model to the run's own model."""
    from autointerp.diff import DiffError, diff_run, format_diff

    if args.behaviour:
        from autointerp.behaviour import BehaviourError
        from autointerp.behaviour import cli as behaviour_cli

        try:
            print(behaviour_cli.run(args))
        except BehaviourError as exc:
            raise UserError(str(exc)) from exc
        return 0
    try:
        result = diff_run(args.run, args.base, dictionary=args.dictionary, base_dictionary=args.base_dictionary,
                          base_run=args.base_run, z_min=args.z_min, jump_min=args.jump_min, rank_by=args.rank_by,
                          device=args.device)
    except DiffError as exc:
        raise UserError(str(exc)) from exc
    print(format_diff(result, args.top))
    return 0


def _circuit_args(p: argparse.ArgumentParser) -> None:
    from autointerp.circuits.cli import configure

    configure(p)


@command("circuit", _circuit_args)
def cmd_circuit(args: argparse.Namespace) -> int:
    """Attribution graph from a prompt's tokens through the run's features to a feature or logit target."""
    from autointerp.circuits.cli import main as circuit_main

    return circuit_main(args)


def _flag_args(p: argparse.ArgumentParser) -> None:
    from autointerp.flagging.cli import configure

    configure(p)


@command("flag", _flag_args)
def cmd_flag(args: argparse.Namespace) -> int:
    """Flag a run's features that match a watchlist's concepts (similarity, probe AUROC, causal effect, with nulls)."""
    from autointerp.flagging.cli import main as flag_main

    return flag_main(args)


def _audit_args(p: argparse.ArgumentParser) -> None:
    from autointerp.audit.cli import configure

    configure(p)


@command("audit", _audit_args)
def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a suspect model against its base: behaviour diff, trigger discovery, flagged features, verdict."""
    from autointerp.audit import AuditError
    from autointerp.audit.cli import run as audit_run
    from autointerp.behaviour import BehaviourError

    try:
        print(audit_run(args))
    except (AuditError, BehaviourError) as exc:
        raise UserError(str(exc)) from exc
    return 0
