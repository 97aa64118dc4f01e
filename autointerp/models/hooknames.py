"""Hook-point names of other libraries, mapped both ways to ours (TransformerBridge names).

=============================  ==============================  =========================
ours                           SAE Lens (``hook_name``)         sparsify (module path)
=============================  ==============================  =========================
``blocks.L.hook_in``           ``blocks.L.hook_resid_pre``       -
``blocks.L.hook_out``          ``blocks.L.hook_resid_post``      ``layers.L``
``blocks.L.ln2.hook_in``       ``blocks.L.hook_resid_mid``       -
``blocks.L.attn.hook_out``     ``blocks.L.hook_attn_out``        ``layers.L.self_attn``
``blocks.L.mlp.hook_out``      ``blocks.L.hook_mlp_out``         ``layers.L.mlp``
=============================  ==============================  =========================

``blocks.L.ln2.hook_in`` is the residual stream between attention and MLP (the MLP's norm reads
it; on Gemma, after the attention's own post-norm, as SAE Lens's ``hook_resid_mid`` is). A name
that is already ours passes through unchanged; any other is a ``ValueError`` naming the forms
understood.
"""

from __future__ import annotations

import re

_PAIRS = (("hook_in", "hook_resid_pre"), ("hook_out", "hook_resid_post"), ("ln2.hook_in", "hook_resid_mid"),
          ("attn.hook_out", "hook_attn_out"), ("mlp.hook_out", "hook_mlp_out"))
_SPARSIFY = {"": "hook_out", ".self_attn": "attn.hook_out", ".mlp": "mlp.hook_out"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _known() -> str:
    return ", ".join(f"blocks.L.{o} / blocks.L.{s}" for o, s in _PAIRS)


def _convert(name: str, to_ours: bool) -> str:
    m = _BLOCK.match(name)
    if m:
        for ours, theirs in _PAIRS:
            if m.group(2) in (ours, theirs):
                return f"blocks.{m.group(1)}.{ours if to_ours else theirs}"
    raise ValueError(f"hook point {name!r} has no {'equivalent here' if to_ours else 'SAE Lens name'}; "
                     f"understood (ours / SAE Lens): {_known()}")


def from_saelens(name: str) -> str:
    """Our name of an SAE Lens ``hook_name`` (ours pass through)."""
    return _convert(name, to_ours=True)


def to_saelens(name: str) -> str:
    """The SAE Lens ``hook_name`` of one of our hook points (SAE Lens names pass through)."""
    return _convert(name, to_ours=False)


def from_sparsify(module: str) -> str:
    """Our name of a sparsify hook-point module path (``layers.6``, ``layers.6.mlp``, ...)."""
    m = re.match(r"^(?:model\.)?layers\.(\d+)(\.self_attn|\.mlp)?$", module)
    if m is None:
        raise ValueError(f"sparsify hook point {module!r} has no equivalent here; understood: layers.L, "
                         f"layers.L.self_attn, layers.L.mlp")
    return f"blocks.{m.group(1)}.{_SPARSIFY[m.group(2) or '']}"
