"""Read EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors``).

sparsify computes::

    pre   = (x - b_dec  unless transcode) @ encoder.weight.T + encoder.bias     encoder.weight [F, d_in]
    z     = TopK_k(ReLU(pre))                                                   W_dec [F, d_in]
    x_hat = z @ W_dec + b_dec (+ x @ W_skip.T)                                  W_skip [d_out, d_in]

mapped to ``topk`` with ``W_enc = encoder.weight.T``, ``b_enc = encoder.bias - b_dec @ W_enc`` (not for
transcoders), ``W_skip = W_skip.T``. sparsify applies ReLU *before* top-k and we apply it after; the
dense latents are identical because ReLU is monotone (the two may only pick different indices among
candidates that are zero either way). ``activation="groupmax"`` cannot be represented and raises.

Settings that cannot be represented (per-token normalisation, whitening, other architectures)
raise a ``ValueError`` naming the setting; nothing is silently approximated. Conversions are
computed in float64 and the result cast to ``dtype`` (float32 by default).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..base import Dictionary
from ..config import DictionaryConfig
from ._common import _assemble, _read_json, _require, _unit_rows

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"


def load_sparsify(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Dictionary:
    """Load a sparsify folder (``cfg.json`` + ``sae.safetensors``, as ``SparseCoder.save_to_disk``
    writes it) as a ``topk`` :class:`Dictionary` with the same latents and reconstruction
    (module docstring: the mapping). Transcoders (``transcode``) and skip connections
    (``skip_connection``) are kept.

    Raises:
        ValueError: ``activation="groupmax"``, ``signed`` latents, or missing tensors.
    """
    path = Path(path)
    raw = _read_json(path / SPARSIFY_CFG)
    if raw.get("activation", "topk") != "topk":
        raise ValueError(
            f"{path}: sparsify activation={raw['activation']!r} cannot be represented (only 'topk')"
        )
    if raw.get("signed", False):
        raise ValueError(f"{path}: sparsify signed=True latents cannot be represented")
    tensors = {k: v.double() for k, v in load_file(str(path / SPARSIFY_WEIGHTS)).items()}
    skip = bool(raw.get("skip_connection", False))
    needed = ["encoder.weight", "encoder.bias", "W_dec", "b_dec"] + (["W_skip"] if skip else [])
    _require(tensors, needed, path)

    W_enc_DF = tensors["encoder.weight"].T
    W_dec_FO, b_dec_O = tensors["W_dec"], tensors["b_dec"]
    d_in, n_latents = W_enc_DF.shape
    expected_f = raw.get("num_latents") or raw["d_in"] * raw.get("expansion_factor", 32)
    if (d_in, n_latents) != (raw["d_in"], expected_f):
        raise ValueError(f"{path}: encoder.weight {tuple(W_enc_DF.shape[::-1])} disagrees with cfg")
    b_enc_F = tensors["encoder.bias"]
    if not raw.get("transcode", False):
        b_enc_F = b_enc_F - b_dec_O @ W_enc_DF  # sparsify encodes x - b_dec
    state = {"W_enc": W_enc_DF, "b_enc": b_enc_F, "W_dec": W_dec_FO, "b_dec": b_dec_O}
    if skip:
        state["W_skip"] = tensors["W_skip"].T  # sparsify: [d_out, d_in]
    cfg = DictionaryConfig(
        arch="topk", d_in=d_in, n_latents=n_latents, d_out=W_dec_FO.shape[1], k=int(raw["k"]),
        skip_connection=skip,
        normalize_decoder=bool(raw.get("normalize_decoder", True)) and _unit_rows(W_dec_FO),
    )
    return _assemble(cfg, state, dtype)
