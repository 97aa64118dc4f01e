"""The training state of each dictionary and its checkpoints: written, pruned, refused, resumed.

A checkpoint of dictionary ``name`` at step ``S`` is the folder
``<out>/<name>/checkpoints/<step_dir_name(S)>/`` (written under a temporary name, then published
atomically: :mod:`dictionaries.checkpoint`) holding the weights, the Adam state, the trainer's
tensors (dead-latent counters, the torch RNG state), ``state.json`` (step, tokens, scales, the
metrics window and the *identity*: spec, resume-relevant training fields, world size) and each
rank's data-source position. A resume takes the latest step every dictionary has complete, and
refuses one whose identity differs from the trainer's, naming every differing field.
"""

from __future__ import annotations

import logging
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import distributed as ddp
from .base import Dictionary
from .checkpoint import (
    complete_checkpoints,
    load_optimizer_state,
    load_tensors,
    publish,
    read_json,
    step_dir_name,
    write_checkpoint_files,
)
from .data import BatchSource
from .io import write_json_atomic
from .train_config import DictionarySpec, TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class RunState:
    """Training state of one dictionary."""

    spec: DictionarySpec
    model: Dictionary
    optimizer: torch.optim.Adam
    peak_lr: float
    tokens_since_fired_F: Tensor
    in_scale: float = float("nan")
    out_scale: float = float("nan")
    history: deque = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.spec.name


class Checkpoints:
    """The checkpoints of every dictionary a trainer writes under ``out_dir``."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, world: ddp.World):
        self.out_dir, self.cfg, self.world = out_dir, cfg, world
        self.last: dict[str, Path] = {}
        """each dictionary's latest checkpoint written or resumed from."""

    def folder(self, name: str) -> Path:
        return self.out_dir / name / "checkpoints"

    def identity(self, run: RunState) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this trainer."""
        return {"spec": run.spec.to_dict(), "train": self.cfg.resume_fields(), "world_size": self.world.size}

    def save(self, runs: list[RunState], step: int, tokens: int, source: BatchSource) -> None:
        for run in runs:
            ckpt_dir = self.folder(run.name)
            final = ckpt_dir / step_dir_name(step)
            tmp = ckpt_dir / f".tmp-{step_dir_name(step)}"
            if self.world.is_main:
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "tokens": tokens,
                    "in_scale": run.in_scale,
                    "out_scale": run.out_scale,
                    "history": [list(h) for h in run.history],
                    "identity": self.identity(run),
                }
                trainer_tensors = {
                    "tokens_since_fired": run.tokens_since_fired_F,
                    "rng_state": torch.get_rng_state(),
                }
                write_checkpoint_files(tmp, run.model, run.optimizer, trainer_tensors, state)
            ddp.barrier()
            write_json_atomic(source.state_dict(), tmp / f"source-rank{self.world.rank}.json")
            ddp.barrier()
            if self.world.is_main:
                publish(tmp, final)
                self._prune(ckpt_dir)
            ddp.barrier()
            self.last[run.name] = final

    def _prune(self, ckpt_dir: Path) -> None:
        if self.cfg.keep_checkpoints is None:
            return
        existing = complete_checkpoints(ckpt_dir)
        for old in sorted(existing)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(existing[old])

    def refuse_existing(self, names: list[str]) -> None:
        """``ValueError`` when any of ``names`` already has a complete checkpoint."""
        for name in names:
            existing = complete_checkpoints(self.folder(name))
            if existing:
                raise ValueError(
                    f"{self.folder(name)} already holds checkpoints "
                    f"(steps {sorted(existing)}); "
                    "pass resume=True to continue them or choose another out_dir"
                )

    def resume(self, runs: list[RunState], source: BatchSource) -> tuple[int, int]:
        """Load the latest step every run has complete into ``runs``, the torch RNG and ``source``;
        ``(step, tokens)``, or ``(0, 0)`` when there is none."""
        per_run = {r.name: complete_checkpoints(self.folder(r.name)) for r in runs}
        common = set.intersection(*(set(c) for c in per_run.values()))
        if not common:
            logger.info("resume=True but no common complete checkpoint: starting from scratch")
            return 0, 0
        step = max(common)
        tokens = None
        for run in runs:
            path = per_run[run.name][step]
            state = read_json(path / "state.json")
            self._check_identity(path, state, run)
            run.model.load_state_dict(load_tensors(path / "model.safetensors"), strict=True)
            load_optimizer_state(run.optimizer, load_tensors(path / "optimizer.safetensors"),
                                 read_json(path / "optimizer.json"))
            trainer_tensors = load_tensors(path / "trainer.safetensors")
            run.tokens_since_fired_F = trainer_tensors["tokens_since_fired"].to(self.cfg.device)
            rng_state = trainer_tensors["rng_state"]
            run.in_scale, run.out_scale = float(state["in_scale"]), float(state["out_scale"])
            run.history = deque(tuple(h) for h in state["history"])
            tokens = int(state["tokens"])
            self.last[run.name] = path
        torch.set_rng_state(rng_state)
        source.load_state_dict(read_json(per_run[runs[0].name][step] / f"source-rank{self.world.rank}.json"))
        logger.info("resumed from step %d (%d tokens)", step, tokens)
        assert tokens is not None
        return step, tokens

    def _check_identity(self, path: Path, state: dict[str, Any], run: RunState) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}"
            )
        diffs = _diff(state["identity"], self.identity(run))
        if diffs:
            raise ValueError(
                f"checkpoint {path} was written with a different configuration and cannot be resumed: "
                + "; ".join(diffs)
            )


def _diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now)):
            out += _diff(saved.get(key, "<missing>"), now.get(key, "<missing>"), f"{prefix}{key}.")
        return out
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return [] if saved == now else [f"{prefix.rstrip('.')}: checkpoint {saved!r} != now {now!r}"]
