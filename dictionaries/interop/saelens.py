"""Read and write SAE Lens folders (``cfg.json`` + ``sae_weights.safetensors``: the format of sae-lens
6.x; older configs without ``architecture`` are read too).

SAE Lens computes::

    sae_in = x - b_dec * apply_b_dec_to_input
    pre    = sae_in @ W_enc + b_enc                    W_enc [d_in, d_sae], W_dec [d_sae, d_out]
    pre   *= ||W_dec_i||          (topk with rescale_acts_by_decoder_norm only)
    z      = standard: ReLU(pre) | topk: ReLU(TopK(pre)) | jumprelu: ReLU(pre) * 1[pre > threshold]
    x_hat  = (z / ||W_dec_i||   if rescaled) @ W_dec + b_dec  (+ x @ W_skip.T for skip transcoders)

and the mapping is ``standard`` / ``transcoder`` / ``skip_transcoder`` -> ``relu``; ``topk`` -> ``topk``;
``jumprelu`` / ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` -> ``jumprelu`` with
``log_threshold = log(threshold)``; with the weights rewritten so that the *same latents* come out:

* ``apply_b_dec_to_input``: ``b_enc <- b_enc - b_dec @ W_enc`` (the subtraction is linear);
* ``rescale_acts_by_decoder_norm``: ``W_enc, b_enc <- * ||W_dec_i||``, ``W_dec_i <- W_dec_i / ||W_dec_i||``
  (SAE Lens's own latents are the rescaled ones, and so are ours);
* ``normalize_activations="expected_average_only_in"``: the SAE expects ``x * s``; the factor ``s``
  is not in ``cfg.json``, so it is taken from ``activation_scaler.json`` beside it (as SAE Lens's
  trainer writes in checkpoints) or from the ``norm_scaling_factor`` argument, and folded with
  :meth:`Dictionary.fold_scale` (what SAE Lens's ``fold_activation_norm_scaling_factor`` does);
* ``reshape_activations="hook_z"``: accepted; our dictionary takes the heads already flattened
  (``[..., n_heads * d_head]``), which is what SAE Lens reshapes to internally.

A JumpReLU threshold ``<= 0`` gates nothing that ReLU does not (``ReLU(pre) * 1[pre > t] = ReLU(pre)``):
all thresholds ``== 0`` load as ``relu``; a mix of ``<= 0`` and ``> 0`` cannot be represented (our
``theta = exp(log_threshold) > 0``) and raises.


Settings that cannot be represented (per-token normalisation, whitening, other architectures)
raise a ``ValueError`` naming the setting; nothing is silently approximated. Conversions are
computed in float64 and the result cast to ``dtype`` (float32 by default).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..base import Dictionary
from ..config import DictionaryConfig
from ..io import state_tensors, write_json_atomic
from ._common import _assemble, _read_json, _require, _unit_rows

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"

SAELENS_FORMAT_VERSION = "6.54.12"
"""The sae-lens release whose folder format :func:`export_saelens` writes (and that loads it:
``benchmarks/make_interop_fixtures.py --check-export``). Written as ``metadata.sae_lens_version``;
without a version >= 6, SAE Lens would reinterpret the config as a pre-6.0 one."""

_SAELENS_ARCHS: dict[str, tuple[str, bool, bool]] = {
    # SAE Lens architecture -> (our activation, is a transcoder, has W_skip)
    "standard": ("relu", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}


def _saelens_architecture(raw: dict[str, Any]) -> str:
    """The architecture of a SAE Lens config, reading pre-6.0 configs (``activation_fn_str``)."""
    if "architecture" in raw:
        return str(raw["architecture"])
    activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
    if activation == "topk":
        return "topk"
    if activation != "relu":
        raise ValueError(f"SAE Lens activation_fn={activation!r} is not supported (relu, topk)")
    return "standard"


def _saelens_k(raw: dict[str, Any]) -> int:
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    if k is None:
        raise ValueError("SAE Lens topk config has no 'k'")
    return int(k)


def _saelens_scaling_factor(
    raw: dict[str, Any], path: Path, norm_scaling_factor: float | None
) -> float | None:
    """The factor to fold for ``normalize_activations``, or None for none; raises when the
    setting cannot be represented or the factor is unknown."""
    norm = raw.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:  # pre-6.0 configs stored a bool
        norm = "expected_average_only_in" if norm else "none"
    if norm == "none":
        if norm_scaling_factor is not None:
            raise ValueError(
                f"{path}: norm_scaling_factor given but normalize_activations='none' (nothing to fold)"
            )
        return None
    if norm != "expected_average_only_in":
        raise ValueError(
            f"{path}: SAE Lens normalize_activations={norm!r} cannot be represented "
            "(it normalises each token, or whitens, at run time); only 'none' and "
            "'expected_average_only_in' are supported"
        )
    if norm_scaling_factor is not None:
        return float(norm_scaling_factor)
    scaler = path / SAELENS_SCALER
    if scaler.is_file():
        factor = json.loads(scaler.read_text()).get("scaling_factor")
        if factor is not None:
            return float(factor)
    raise ValueError(
        f"{path}: SAE Lens normalize_activations='expected_average_only_in' expects inputs scaled "
        f"by a factor that is not stored in {SAELENS_CFG}, and there is no {SAELENS_SCALER} with it; "
        "pass norm_scaling_factor= (SAE Lens keeps it per release in its pretrained_saes.yaml)"
    )


def load_saelens(
    path: str | os.PathLike,
    *,
    norm_scaling_factor: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dictionary:
    """Load a SAE Lens folder (``cfg.json`` + ``sae_weights.safetensors``) as a :class:`Dictionary`
    with the same latents and reconstruction (module docstring: the mapping).

    Args:
        path: the folder.
        norm_scaling_factor: for ``normalize_activations="expected_average_only_in"`` only, the
            factor the SAE was trained with (when no ``activation_scaler.json`` is beside it).
        dtype: dtype of the returned parameters.

    Raises:
        ValueError: for settings that cannot be represented, naming the setting.
    """
    path = Path(path)
    raw = _read_json(path / SAELENS_CFG)
    tensors = {k: v.double() for k, v in load_file(str(path / SAELENS_WEIGHTS)).items()}
    arch_name = _saelens_architecture(raw)
    if arch_name not in _SAELENS_ARCHS:
        raise ValueError(
            f"{path}: SAE Lens architecture {arch_name!r} is not supported; "
            f"supported: {sorted(_SAELENS_ARCHS)}"
        )
    arch, transcoder, skip = _SAELENS_ARCHS[arch_name]
    if raw.get("finetuning_scaling_factor"):
        raise ValueError(f"{path}: SAE Lens finetuning_scaling_factor=True is not supported")
    if raw.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise ValueError(
            f"{path}: SAE Lens reshape_activations={raw['reshape_activations']!r} is not supported"
        )
    scale = _saelens_scaling_factor(raw, path, norm_scaling_factor)

    _require(tensors, ["W_enc", "b_enc", "W_dec", "b_dec"] + (["W_skip"] if skip else []), path)
    W_enc_DF, b_enc_F = tensors["W_enc"], tensors["b_enc"]
    W_dec_FO, b_dec_O = tensors["W_dec"], tensors["b_dec"]
    d_in, n_latents = W_enc_DF.shape
    d_out = W_dec_FO.shape[1]
    if (d_in, n_latents) != (raw.get("d_in", d_in), raw.get("d_sae", n_latents)):
        raise ValueError(f"{path}: W_enc {tuple(W_enc_DF.shape)} disagrees with cfg d_in/d_sae")

    # apply_b_dec_to_input (never for transcoders, whose b_dec lives in the output space)
    if raw.get("apply_b_dec_to_input", True) and not transcoder:
        b_enc_F = b_enc_F - b_dec_O @ W_enc_DF

    k = 32
    if arch == "topk":
        k = _saelens_k(raw)
        if raw.get("rescale_acts_by_decoder_norm", False):
            norm_F = W_dec_FO.norm(dim=-1)
            if bool((norm_F == 0).any()):
                raise ValueError(f"{path}: rescale_acts_by_decoder_norm with a zero decoder row")
            W_enc_DF, b_enc_F = W_enc_DF * norm_F, b_enc_F * norm_F
            W_dec_FO = W_dec_FO / norm_F[:, None]

    state = {"W_enc": W_enc_DF, "b_enc": b_enc_F, "W_dec": W_dec_FO, "b_dec": b_dec_O}
    if skip:
        state["W_skip"] = tensors["W_skip"].T  # SAE Lens: [d_out, d_in]
    if arch == "jumprelu":
        if "log_threshold" in tensors:  # checkpoints of older SAE Lens versions
            state["log_threshold"] = tensors["log_threshold"]
        else:
            _require(tensors, ["threshold"], path)
            threshold_F = tensors["threshold"]
            if bool((threshold_F == 0).all()):
                arch = "relu"  # ReLU(pre) * 1[pre > 0] == ReLU(pre)
            elif bool((threshold_F <= 0).any()):
                n_bad = int((threshold_F <= 0).sum())
                raise ValueError(
                    f"{path}: {n_bad} JumpReLU thresholds are <= 0 and the others > 0; our "
                    "JumpReLU needs threshold > 0 (a threshold <= 0 acts as plain ReLU)"
                )
            else:
                state["log_threshold"] = threshold_F.log()

    derived = DictionaryConfig(
        arch=arch, d_in=d_in, n_latents=n_latents, d_out=d_out, k=k,
        skip_connection=skip, normalize_decoder=_unit_rows(W_dec_FO),
    )
    cfg = _stored_cfg(raw.get("metadata") or {}, derived)
    if cfg is not derived:  # written by export_saelens: restore our bookkeeping too
        meta = raw["metadata"]
        state["folded_in_scale"] = torch.tensor(float(meta.get("dictionaries_folded_in_scale", 1.0)))
        state["folded_out_scale"] = torch.tensor(float(meta.get("dictionaries_folded_out_scale", 1.0)))
    dictionary = _assemble(cfg, state, dtype)
    if scale is not None:
        dictionary.fold_scale(scale)
    return dictionary


def _stored_cfg(metadata: dict[str, Any], derived: DictionaryConfig) -> DictionaryConfig:
    """Our full config as stored by :func:`export_saelens`, if present and describing the same
    model as ``derived``; else ``derived``."""
    stored = metadata.get("dictionaries_cfg")
    if not isinstance(stored, dict):
        return derived
    try:
        cfg = DictionaryConfig.from_dict(stored)
    except (TypeError, ValueError):
        return derived
    same = ["arch", "d_in", "n_latents", "d_out", "skip_connection"]
    if derived.arch == "topk":
        same.append("k")
    if any(getattr(cfg, f) != getattr(derived, f) for f in same):
        return derived
    return cfg


_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}


def export_saelens(dictionary: Dictionary, path: str | os.PathLike) -> Path:
    """Write ``dictionary`` as a SAE Lens folder (``cfg.json`` + ``sae_weights.safetensors``) that
    ``sae_lens.SAE.load_from_disk`` loads with the same latents and reconstruction.

    ``relu`` -> ``standard`` (``skip_transcoder`` with a skip path, ``transcoder`` when
    ``d_out != d_in``); ``topk`` -> ``topk``; ``jumprelu`` -> ``jumprelu`` (``*_transcoder`` likewise)
    with ``threshold = exp(log_threshold)``; ``batchtopk`` (its eval-mode rule
    ``ReLU(pre) * 1[ReLU(pre) > t]``) -> ``jumprelu`` with every threshold ``t``. Always written with
    ``apply_b_dec_to_input=False``, ``rescale_acts_by_decoder_norm=False`` and
    ``normalize_activations="none"``, so the weights go through unchanged. Our config and scale
    buffers travel in ``metadata`` so that :func:`load_saelens` gives them back.

    Raises:
        ValueError: TopK with a skip path or ``d_out != d_in`` (SAE Lens has no TopK transcoder),
            an untrained BatchTopK (no threshold yet), or an unknown architecture.
    """
    path = Path(path)
    cfg = dictionary.cfg
    tensors = state_tensors(dictionary)
    is_transcoder = cfg.skip_connection or cfg.d_out != cfg.d_in
    weights = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.skip_connection:
        weights["W_skip"] = tensors["W_skip"].T.contiguous()

    extra: dict[str, Any] = {}
    if cfg.arch == "relu":
        name = "skip_transcoder" if cfg.skip_connection else "transcoder" if is_transcoder else "standard"
    elif cfg.arch == "topk":
        if is_transcoder:
            raise ValueError("SAE Lens has no TopK transcoder: cannot export a topk dictionary "
                             "with a skip connection or d_out != d_in")
        name = "topk"
        extra = {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    elif cfg.arch in ("jumprelu", "batchtopk"):
        if cfg.arch == "jumprelu":
            threshold_F = tensors["log_threshold"].exp()
        else:
            t = float(tensors["threshold"])
            if t < 0:
                raise ValueError("this BatchTopK dictionary has no inference threshold yet (never trained)")
            threshold_F = torch.full((cfg.n_latents,), t, dtype=tensors["W_enc"].dtype)
        weights["threshold"] = threshold_F.contiguous()
        name = ("jumprelu_skip_transcoder" if cfg.skip_connection
                else "jumprelu_transcoder" if is_transcoder else "jumprelu")
    else:
        raise ValueError(f"cannot export architecture {cfg.arch!r} to SAE Lens")

    dtype = weights["W_enc"].dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"cannot export dtype {dtype} to SAE Lens")
    sae_cfg: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "dtype": _DTYPE_NAMES[dtype],
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            "exported_by": "dictionaries.interop.export_saelens",
            "dictionaries_cfg": cfg.to_dict(),
            "dictionaries_folded_in_scale": float(tensors["folded_in_scale"]),
            "dictionaries_folded_out_scale": float(tensors["folded_out_scale"]),
        },
        "architecture": name,
        **extra,
    }
    if is_transcoder:
        sae_cfg["d_out"] = cfg.d_out

    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{SAELENS_WEIGHTS}.tmp-{os.getpid()}"
    save_file(weights, str(tmp))
    os.replace(tmp, path / SAELENS_WEIGHTS)
    write_json_atomic(sae_cfg, path / SAELENS_CFG)
    return path
