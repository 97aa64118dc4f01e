"""The ``autointerp`` command line.

Each subcommand is a function registered with ``@command`` (:mod:`autointerp.cli.registry`) in the
module of its group: ``models`` (fetch, hookpoints, cache), ``dictionary`` (train, evaluate),
``interpret`` (explain, score), ``job`` (run, report, search, config) and ``audit`` (diff, circuit,
flag, audit). Importing a group registers its commands, in the order ``autointerp --help`` lists."""

from __future__ import annotations

import argparse
import logging
import sys

# importing a group registers its commands, in this order
from autointerp.cli import models  # noqa: F401, I001
from autointerp.cli import dictionary  # noqa: F401
from autointerp.cli import interpret  # noqa: F401
from autointerp.cli import job  # noqa: F401
from autointerp.cli import audit  # noqa: F401
from autointerp.cli.registry import _COMMANDS, _OVERRIDABLE, UserError, command

__all__ = ["UserError", "build_parser", "command", "main"]


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autointerp", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (configure, fn) in _COMMANDS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        configure(sub.add_parser(name, help=doc, description=doc))
    return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``--section.field VALUE`` / ``--section.field=VALUE`` config overrides out of ``argv``."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            take = 1 if "=" in arg else 2
            overrides.extend(argv[i:i + take])
            i += take
        else:
            rest.append(arg)
            i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv, overrides = _split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if overrides and args.command not in _OVERRIDABLE:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from autointerp.activations import CacheError
    from autointerp.config import ConfigError
    from autointerp.featuredb import FeatureDBError
    from autointerp.pipeline import RunError
    from autointerp.published import PublishedDictionaryError
    from autointerp.search import SearchError
    from autointerp.data import CorpusError
    from autointerp.models import HookPointError, ModelNotFoundError

    from dictionaries import TrainingDivergedError

    try:
        return _COMMANDS[args.command][1](args)
    except (UserError, CacheError, CorpusError, HookPointError, ModelNotFoundError, ConfigError, RunError,
            PublishedDictionaryError,
            FeatureDBError, SearchError) as exc:
        print(f"autointerp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"autointerp {args.command}: training diverged: {exc}", file=sys.stderr)
        return 1

