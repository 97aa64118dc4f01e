"""Training checkpoints without pickle.

One checkpoint of one dictionary is a directory ``<out>/<name>/checkpoints/step-XXXXXXX/``::

    model.safetensors          parameters and buffers (normalised-scale, not folded)
    optimizer.safetensors      optimizer state tensors, keyed "state.<param index>.<name>"
    optimizer.json             param_groups and non-tensor state
    trainer.safetensors        tokens_since_fired [F] int64, rng_state (torch.get_rng_state(), uint8)
    state.json                 step, tokens, scales, metrics window, configs (for the resume check)
    source-rank<r>.json        data position of rank r (BatchSource.state_dict())

It is written under a temporary name and renamed with ``os.replace``, so a directory named
``step-*`` is always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .io import state_tensors, write_json_atomic

__all__ = [
    "complete_checkpoints",
    "load_optimizer_state",
    "optimizer_state_files",
    "read_json",
    "step_dir_name",
]

_STEP_RE = re.compile(r"^step-(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(checkpoints_dir: Path) -> dict[int, Path]:
    """``{step: path}`` of the complete checkpoints in ``checkpoints_dir`` (may not exist)."""
    found: dict[int, Path] = {}
    if not checkpoints_dir.is_dir():
        return found
    for child in checkpoints_dir.iterdir():
        m = _STEP_RE.match(child.name)
        if m and (child / "state.json").is_file():
            found[int(m.group(1))] = child
    return found


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def optimizer_state_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state_files`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):  # JSON turned the tuple into a list
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def write_checkpoint_files(
    tmp_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Write everything but the per-rank source files into ``tmp_dir`` (rank 0 only)."""
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    save_tensors(state_tensors(model), tmp_dir / "model.safetensors")
    opt_tensors, opt_meta = optimizer_state_files(optimizer)
    save_tensors(opt_tensors, tmp_dir / "optimizer.safetensors")
    write_json_atomic(opt_meta, tmp_dir / "optimizer.json")
    save_tensors(trainer_tensors, tmp_dir / "trainer.safetensors")
    write_json_atomic(state, tmp_dir / "state.json")


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically rename a finished temporary checkpoint directory to its final name."""
    if final_dir.exists():  # an older run's checkpoint at the same step: replace it whole
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
