"""The registry of ``autointerp`` subcommands: each is a function registered with ``@command``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> exit code`` as subcommand ``name`` with its argument set-up."""
    def deco(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (configure, fn)
        return fn
    return deco


_OVERRIDABLE = ("run", "config")
"""commands that take ``--section.field VALUE`` config overrides after their own flags."""


class UserError(Exception):
    """An error caused by the user's input: printed as one clear message, exit code 2."""


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)
