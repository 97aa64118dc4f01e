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
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import torch
from jaxtyping import Float, Int
from torch import Tensor

from autointerp.models.loader import LoadedModel

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_ATTN_INTERNAL = re.compile(r"\.attn\.(?!hook_in$|hook_out$)")


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


def _fused_forward(self, *args, **kwargs):
    """Attention through the wrapped transformers module (fused SDPA), keeping hook_in/hook_out."""
    hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
    out, weights = self.original_component(self.hook_in(hidden), **kwargs)
    return self.hook_out(out), weights


@contextmanager
def fused_attention(model: LoadedModel, names: list[str], enabled: bool = True) -> Iterator[bool]:
    """Run attention as one fused SDPA kernel while no attention-internal hook is requested.

    Why: the bridge re-implements attention step by step (eager softmax) so that
    ``hook_attn_scores``/``hook_pattern`` can fire; that costs ~10% of a forward pass on CPU.
    When ``names`` holds no hook point inside attention (other than ``attn.hook_in`` and
    ``attn.hook_out``, which still fire), each attention bridge calls the transformers
    module it wraps, with SDPA, instead. Applies to bridges of the rotary-attention family
    (Llama, Mistral, Qwen2, Gemma, ...); others keep the step-by-step path. Both the patched
    ``forward`` and the attention setting are restored in ``finally``. Yields whether the fused
    path is active.
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge)

    attns = [m for m in model.bridge.modules() if type(m) is PositionEmbeddingsAttentionBridge]
    if not enabled or not attns or any(_ATTN_INTERNAL.search(n) for n in names):
        yield False
        return
    configs = {id(a.original_component.config): a.original_component.config for a in attns}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for a in attns:
            object.__setattr__(a, "forward", MethodType(_fused_forward, a))
        for c in configs.values():
            c._attn_implementation = "sdpa"
        yield True
    finally:
        for a in attns:
            a.__dict__.pop("forward", None)
        for k, c in configs.items():
            c._attn_implementation = saved[k]


def capture(
    model: LoadedModel,
    input_ids: Int[Tensor, "batch pos"],
    names: list[str],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    fused: bool = True,
) -> dict[str, Float[Tensor, "batch pos d"]]:
    """Run the model on ``input_ids`` and return the activations at ``names``.

    One forward pass serves every name; it is stopped by an exception as soon as every
    requested hook point has fired, so layers after the deepest one are never run.
    Attention runs fused when no attention-internal hook point is requested
    (``fused_attention``); pass ``fused=False`` to force the bridge's step-by-step path.
    """
    wanted = set(names)
    out: dict[str, Tensor] = {}

    def hook(act: Tensor, hook) -> None:
        out[hook.name] = act.detach()
        if wanted.issubset(out):
            raise _StopForward

    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
    with torch.inference_mode(), fused_attention(model, names, enabled=fused):
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


def head_logits(hf_model, h: Tensor) -> Tensor:
    """The LM head applied to final-normed hidden states ``h [..., d]`` (what ``unembed.hook_in``
    sees): ``W_U h + b``, then the architecture's final logit soft-capping where its config has one
    (Gemma 2: ``c * tanh(logits / c)``; Llama, SmolLM2 and Gemma 3 have none). Reads the head's
    weights, not its (bridge-wrapped, hooked) module, whose hook would fire."""
    head = hf_model.get_output_embeddings()
    logits = torch.nn.functional.linear(h, head.weight, getattr(head, "bias", None))
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
