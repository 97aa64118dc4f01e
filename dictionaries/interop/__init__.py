"""Read and write other libraries' dictionary folders, without importing those libraries.

Only their on-disk files are read (``json`` + ``safetensors``), and every tensor is mapped onto
our one model (see :mod:`.base`)::

    pre = x @ W_enc + b_enc ;  z = activation(pre) ;  x_hat = z @ W_dec + b_dec (+ x @ W_skip)


* :mod:`.saelens`: SAE Lens folders, read (:func:`load_saelens`) and written (:func:`export_saelens`);
* :mod:`.sparsify`: EleutherAI sparsify folders, read (:func:`load_sparsify`);
* here: which format a folder holds (:func:`detect_format`), and loading any of them (:func:`load_any`).

Settings that cannot be represented (per-token normalisation, whitening, other architectures)
raise a ``ValueError`` naming the setting; nothing is silently approximated. Conversions are
computed in float64 and the result cast to ``dtype`` (float32 by default).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Literal

from ..base import Dictionary
from ..io import CONFIG_FILE, WEIGHTS_FILE, load
from .saelens import SAELENS_CFG, SAELENS_FORMAT_VERSION, SAELENS_WEIGHTS, export_saelens, load_saelens
from .sparsify import SPARSIFY_CFG, SPARSIFY_WEIGHTS, load_sparsify

__all__ = [
    "SAELENS_FORMAT_VERSION",
    "detect_format",
    "export_saelens",
    "load_any",
    "load_saelens",
    "load_sparsify",
]

Format = Literal["dictionaries", "saelens", "sparsify"]

_LOADERS: dict[str, Callable[..., Dictionary]] = {"dictionaries": load, "saelens": load_saelens,
                                                  "sparsify": load_sparsify}


def detect_format(path: str | os.PathLike) -> Format:
    """``"dictionaries"`` (``cfg.json`` with our ``arch`` key + ``weights.safetensors``),
    ``"saelens"`` (``sae_weights.safetensors``) or ``"sparsify"`` (``sae.safetensors``)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        if "arch" in json.loads((path / CONFIG_FILE).read_text()):
            return "dictionaries"
    if (path / SAELENS_CFG).is_file() and (path / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (path / SPARSIFY_CFG).is_file() and (path / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "not a directory"
    raise ValueError(f"{path}: not a dictionaries, SAE Lens or sparsify folder (found: {found})")


def load_any(path: str | os.PathLike, **kwargs: Any) -> Dictionary:
    """Load a folder in any supported format (see :func:`detect_format`). ``kwargs`` go to the
    format's loader (``norm_scaling_factor`` and ``dtype`` for SAE Lens, ``dtype`` for sparsify,
    ``device`` for ours)."""
    return _LOADERS[detect_format(path)](path, **kwargs)
