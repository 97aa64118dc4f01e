"""Hook points: list them, validate names, and capture activations with an early stop.

Hook points carry TransformerLens names (``blocks.15.hook_out``, ``blocks.3.mlp.hook_in``),
provided by the ``TransformerBridge``. ``capture`` runs one forward pass for any number of
hook points and stops it as soon as the last of them has fired, so no later layer and no
LM head is computed.

Trap: TransformerLens hooks are global state on the model. Every hook added here is added
through ``bridge.hooks(...)``, a context manager that removes it in a ``finally`` block even
when the forward pass is cut short by ``_StopForward``.
"""

from __future__ import annotations

import difflib
import re
import warnings

import torch
from jaxtyping import Float, Int
from torch import Tensor

from autointerp.models.loader import LoadedModel

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class HookPointError(ValueError):
    """A requested hook point does not exist in the model."""


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once everything is captured."""


def hookpoint_layer(name: str) -> int | None:
    """Block index of a hook point name (``blocks.15.mlp.hook_in`` -> 15), None if outside blocks."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def hookpoint_names(model: LoadedModel) -> list[str]:
    return list(model.bridge.hook_dict.keys())


def validate_hookpoints(model: LoadedModel, names: list[str]) -> None:
    """Raise ``HookPointError`` naming the problem and the valid choices."""
    if not names:
        raise HookPointError("no hook point given")
    valid = set(hookpoint_names(model))
    for name in names:
        if name in valid:
            continue
        layer = hookpoint_layer(name)
        if layer is not None and layer >= model.n_layers:
            raise HookPointError(
                f"hook point {name!r}: layer {layer} is beyond the model, which has {model.n_layers} "
                f"layers (blocks.0 to blocks.{model.n_layers - 1})")
        near = difflib.get_close_matches(name, sorted(valid), n=5)
        block0 = sorted(n for n in valid if n.startswith("blocks.0."))
        raise HookPointError(
            f"unknown hook point {name!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
            + f"\nvalid hook points of block 0 (same names for blocks.0 to blocks.{model.n_layers - 1}): "
            + ", ".join(block0) + "\n(`autointerp hookpoints --model ...` lists all of them with shapes)")


def capture(
    model: LoadedModel,
    input_ids: Int[Tensor, "batch pos"],
    names: list[str],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> dict[str, Float[Tensor, "batch pos d"]]:
    """Run the model on ``input_ids`` and return the activations at ``names``.

    One forward pass serves every name; it is stopped by an exception as soon as every
    requested hook point has fired, so layers after the deepest one are never run.
    """
    wanted = set(names)
    out: dict[str, Tensor] = {}

    def hook(act: Tensor, hook) -> None:
        out[hook.name] = act.detach()
        if wanted.issubset(out):
            raise _StopForward

    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
    with torch.inference_mode():
        try:
            with model.bridge.hooks(fwd_hooks=[(n, hook) for n in names]):
                model.bridge(input_ids, return_type=None, **kwargs)
        except _StopForward:
            pass
    missing = wanted - set(out)
    if missing:
        raise HookPointError(f"hook points never fired during the forward pass: {sorted(missing)}")
    return {n: out[n] for n in names}


def hookpoint_shapes(model: LoadedModel, seq_len: int = 4) -> list[tuple[str, tuple[int, ...]]]:
    """Every hook point with the shape it produces for a batch of 1 and ``seq_len`` positions."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(act: Tensor, hook) -> None:
        if isinstance(act, Tensor):
            shapes.setdefault(hook.name, tuple(act.shape))

    ids = torch.full((1, seq_len), 1, dtype=torch.long, device=model.device)
    with warnings.catch_warnings():
        # the bridge warns about hook names that are gated off; they simply do not appear below
        warnings.simplefilter("ignore", UserWarning)
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[(lambda _n: True, hook)]):
            model.bridge(ids, return_type=None)
    return [(n, shapes[n]) for n in hookpoint_names(model) if n in shapes]
