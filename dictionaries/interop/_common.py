"""Helpers the format modules share: assemble a dictionary from mapped tensors, check inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..base import Dictionary
from ..config import DictionaryConfig, build


def _assemble(cfg: DictionaryConfig, tensors: dict[str, Tensor], dtype: torch.dtype) -> Dictionary:
    """Build ``cfg``'s architecture on the meta device and assign ``tensors`` (cast to ``dtype``);
    the scale buffers default to 1. Returned in eval mode."""
    state = {name: t.to(dtype).contiguous() for name, t in tensors.items()}
    for buffer in ("folded_in_scale", "folded_out_scale"):  # float32 scalars, as io.save writes them
        state[buffer] = tensors.get(buffer, torch.ones(())).to(torch.float32).reshape(())
    with torch.device("meta"):
        dictionary = build(cfg)
    dictionary.load_state_dict(state, strict=True, assign=True)
    return dictionary.eval()


def _unit_rows(W_dec_FO: Tensor) -> bool:
    """Whether every decoder row has unit norm (then our trainer may keep it so when fine-tuning)."""
    return bool(((W_dec_FO.norm(dim=-1) - 1).abs() <= 1e-4).all())


def _require(tensors: dict[str, Tensor], names: list[str], path: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing}; found {sorted(tensors)}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return json.loads(path.read_text())
