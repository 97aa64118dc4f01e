"""Dictionary files: ``<dir>/cfg.json`` (the :class:`DictionaryConfig`) + ``<dir>/weights.safetensors``.

Nothing is pickled. ``load(save(d))`` reproduces every parameter and buffer bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .base import Dictionary
from .config import DictionaryConfig, build

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "load", "save", "write_json_atomic"]

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1


def write_json_atomic(obj: object, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as detached, contiguous CPU tensors that safetensors accepts."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save(dictionary: Dictionary, path: str | os.PathLike) -> Path:
    """Write ``dictionary`` to the directory ``path`` (created if needed); returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_tmp = path / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
    save_file(state_tensors(dictionary), str(weights_tmp), metadata={"arch": dictionary.cfg.arch})
    os.replace(weights_tmp, path / WEIGHTS_FILE)
    write_json_atomic({"format_version": FORMAT_VERSION, **dictionary.cfg.to_dict()}, path / CONFIG_FILE)
    return path


def load_config(path: str | os.PathLike) -> DictionaryConfig:
    """Read ``<path>/cfg.json``."""
    raw = json.loads((Path(path) / CONFIG_FILE).read_text())
    version = raw.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported dictionary format_version {version!r}")
    return DictionaryConfig.from_dict(raw)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dictionary:
    """Read a dictionary written by :func:`save`. Returned in eval mode (BatchTopK then uses its
    learned threshold). Does not touch the global RNG (the module is built on the meta device)."""
    cfg = load_config(path)
    tensors = load_file(str(Path(path) / WEIGHTS_FILE), device=str(device))
    with torch.device("meta"):
        dictionary = build(cfg)
    dictionary.load_state_dict(tensors, strict=True, assign=True)
    return dictionary.eval()
