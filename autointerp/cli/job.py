"""``autointerp`` commands run, report, search, config: the whole job and what reads its folder."""

from __future__ import annotations

import argparse
import sys
import time

from autointerp.cli.registry import UserError, command


# ------------------------------------------------------------------------------------ run
def _run_args(p: argparse.ArgumentParser) -> None:
    from autointerp.pipeline import STAGE_NAMES

    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the embedded defaults)")
    p.add_argument("--out", default="runs/default", help="run folder (default: runs/default)")
    p.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, default=None,
                   help="redo this stage and every later one")
    p.add_argument("--until", choices=STAGE_NAMES, default=None, help="stop after this stage")
    p.add_argument("--model", default=None, help="override the config's subject model")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, ...)")
    p.add_argument("--threads", type=int, default=None, help="override the config's torch CPU threads")
    p.add_argument("--dictionary", default=None,
                   help="a published dictionary (SAE Lens or sparsify folder, or one of ours) used instead of "
                        "training one (train.dictionary)")
    p.add_argument("--update", action="store_true",
                   help="the run folder was made with another config: redo the stages the changes affect")
    p.epilog = ("Any config field can be overridden with its dotted path, e.g. --train.k 64 "
                "--explain.llm_features 8 (see `autointerp config --print-defaults`).")


@command("run", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    """Run the main job (cache, train, evaluate, examples, explain, score, report); resumes a killed run."""
    from autointerp import pipeline
    from autointerp.config import load_config, parse_overrides

    overrides = {k: v for k, v in (("model", args.model), ("device", args.device), ("threads", args.threads),
                                   ("train.dictionary", args.dictionary)) if v is not None}
    cfg = load_config(args.config, {**overrides, **parse_overrides(args.overrides)})
    t = time.time()
    pipeline.run(cfg, args.out, from_stage=args.from_stage, until=args.until, update=args.update)
    line = pipeline.summary_line(args.out) if (args.until in (None, "report")) else f"stopped after {args.until}"
    print(f"done in {time.time() - t:.0f}s: {line}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--feature-pages", default="explained", help="explained (default), all, or a number N (the first N)")


@command("report", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    """(Re)write a run folder's report.html and feature pages from what it holds now."""
    from autointerp.report import build_report
    from autointerp.runfolder import RunFolder

    if not RunFolder(args.run).db.exists():
        raise UserError(f"{args.run} has no features.db: run `autointerp run` (at least to the examples stage) first")
    pages = int(args.feature_pages) if args.feature_pages.isdigit() else args.feature_pages
    try:
        print(build_report(args.run, feature_pages=pages))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return 0


def _search_args(p: argparse.ArgumentParser) -> None:
    from autointerp.cli.search import configure_search_args

    configure_search_args(p)


@command("search", _search_args)
def cmd_search(args: argparse.Namespace) -> int:
    """Search a run's features: by meaning of their explanations, by words (--fts), or by firing on a text (--text)."""
    from autointerp.cli.search import run_search

    return run_search(args)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="a YAML config to check and print resolved")
    p.add_argument("--print-defaults", action="store_true", help="print a commented template of every field")


@command("config", _config_args)
def cmd_config(args: argparse.Namespace) -> int:
    """Print the commented default config (--print-defaults), or check a config and print it resolved."""
    from autointerp.config import dump_config, load_config, parse_overrides

    cfg = load_config(None if args.print_defaults else args.config, parse_overrides(args.overrides))
    sys.stdout.write(dump_config(cfg, comments=args.print_defaults))
    return 0
