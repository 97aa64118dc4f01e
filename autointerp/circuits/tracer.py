"""The replacement model's forward passes (:class:`Tracer`): the clean run that records the
operating point, the linearised run with the frozen values substituted, and the spliced run of the
ablation check. See :mod:`autointerp.circuits.graph` for the maths."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from autointerp.circuits.targets import CircuitError, Spliced, Target


# -------------------------------------------------------------------------------------- the tracer
class _Stop(Exception):
    """Ends a forward pass once the target has been computed."""


@dataclass
class Tracer:
    """The model, the prompt and the spliced dictionaries, with the clean run's frozen values."""

    model: object
    ids_T: Tensor
    spliced: list[Spliced]
    target: Target
    frozen: dict[str, Tensor] = field(default_factory=dict)
    emb_Td: Tensor | None = None
    value: float = math.nan
    """the target on the clean prompt."""
    clean_logits: Tensor | None = None
    markup: bool = False
    """the prompt was tokenised as chat-template text (special tokens kept as markup)."""
    mean_emb_d: Tensor | None = None
    """the mean token embedding (see :meth:`mean_embedding`), computed once."""

    @property
    def bridge(self):
        return self.model.bridge

    def upstream(self) -> list[Spliced]:
        """The dictionaries whose output can reach the target, in firing order."""
        if self.target.kind == "logit":
            return self.spliced
        tgt = next(s for s in self.spliced if s.name == self.target.dictionary)
        return [s for s in self.spliced if s.order < tgt.order_in]

    def _frozen_names(self) -> list[str]:
        # Gemma's extra norms after attention and after the MLP (ln1_post, ln2_post) too; its q/k
        # norms act only through the (frozen) attention pattern
        return [n for n in self.bridge.hook_dict
                if n.endswith(("ln1.hook_scale", "ln2.hook_scale", "ln1_post.hook_scale", "ln2_post.hook_scale"))
                or n == "ln_final.hook_scale" or n.endswith("attn.hook_pattern")]

    def _act_modules(self) -> list[tuple[str, torch.nn.Module]]:
        mods = []
        for i, block in enumerate(self.bridge.blocks):
            act = getattr(getattr(block.mlp, "original_component", None), "act_fn", None)
            if act is None:
                raise CircuitError("unsupported MLP: circuits linearise gated MLPs (act_fn(gate(x)) * up(x), "
                                   f"Llama family); block {i} has none")
            mods.append((f"blocks.{i}.mlp.act_fn", act))
        return mods

    def _target_value(self, pres: dict[str, Tensor], logits: Tensor | None) -> Tensor:
        """The target per batch row ``[B]``."""
        t = self.target
        if t.kind == "feature":
            return pres[t.dictionary][:, t.position, t.latent]
        last = logits[:, -1, :].to(torch.float32)
        return last[:, t.token_id] - last.mean(dim=-1)

    def mean_embedding(self) -> Tensor:
        """The mean token embedding ``[d]`` (float32) as ``embed.hook_out`` sees it: the embedding
        module's output averaged over every row of the embedding matrix (padding rows included),
        times the bridge's outer embedding scale where the architecture has one."""
        if self.mean_emb_d is None:
            embed = self.bridge.embed
            V = embed.W_E.shape[0]
            total = torch.zeros(embed.W_E.shape[1], dtype=torch.float32, device=self.model.device)
            with torch.no_grad():
                for start in range(0, V, 8192):  # through the module: a scaled embedding scales here too
                    ids = torch.arange(start, min(V, start + 8192), device=self.model.device)
                    total += embed.original_component(ids).to(torch.float32).sum(0)
            # hook_out exposes the output times an outer HF scale (1 for the Llama family)
            self.mean_emb_d = total / V * float(getattr(embed, "_output_contribution_scale", 1.0))
        return self.mean_emb_d

    def forward(self, mode: str, batch: int = 1, leaves: dict | None = None,
                ablate: dict[str, list[tuple[int, int]]] | None = None, ablate_positions: list[int] | None = None):
        """One forward pass; returns ``(pre-activations by dictionary [B, T, F], logits or None)``.

        ``mode``: ``record`` (clean run; stores frozen values, z, err and the target),
        ``linear`` (frozen values substituted, leaves spliced in: the linearised replacement
        model), ``spliced`` (live model, dictionaries spliced in with the clean errors, the
        features of ``ablate`` set to 0 and the token embeddings at ``ablate_positions``
        replaced by :meth:`mean_embedding`).
        """
        pres: dict[str, Tensor] = {}
        x_in: dict[str, Tensor] = {}
        by_in: dict[str, list[Spliced]] = {}
        for s in self.spliced:
            by_in.setdefault(s.input_hookpoint, []).append(s)
        by_out = {s.target_hookpoint: s for s in self.spliced}
        stop = self.target.dictionary if self.target.kind == "feature" else None
        events: list[str] = []

        def frozen_hook(act: Tensor, hook):
            if mode == "record":
                self.frozen[hook.name] = act.detach()
            elif mode == "linear":
                return self.frozen[hook.name].expand(batch, *act.shape[1:])
            return act

        def act_hook(name):
            def h(module, inputs, out):
                if mode == "record":
                    self.frozen[name] = out.detach()
                elif mode == "linear":
                    return self.frozen[name].expand(batch, *out.shape[1:])
            return h

        def embed_hook(act: Tensor, hook):
            if mode == "record":
                self.emb_Td = act[0].detach().to(torch.float32)
            elif mode == "linear":
                return leaves["embed"].to(act.dtype)
            elif ablate_positions:
                act = act.clone()
                act[:, list(ablate_positions)] = self.mean_embedding().to(act.dtype)
            return act

        def read_inputs(act: Tensor, name: str) -> None:
            """Encode ``act`` for every dictionary reading hook point ``name``."""
            for s in by_in.get(name, []):
                x_in[s.name] = act
                pres[s.name] = s.dictionary.pre_activation(act.to(torch.float32))
                if mode == "record":
                    s.order_in = len(events)
                    events.append(s.name)
                if s.name == stop:
                    raise _Stop

        def in_hook(act: Tensor, hook):
            read_inputs(act, hook.name)
            return act

        def out_hook(act: Tensor, hook):
            s = by_out[hook.name]
            if s.input_hookpoint == hook.name:  # an SAE: it reads and writes the same hook point
                read_inputs(act, hook.name)
            skip_x = x_in[s.name].to(torch.float32)
            if mode == "record":
                s.order = len(events)
                events.append(s.name)
                z = s.dictionary.activation(pres[s.name][0]).dense.detach()
                z[~s.keep_T] = 0.0
                s.z_TF, s.x_in_Td, s.pre_TF = z, skip_x[0].detach(), pres[s.name][0].detach()
                s.err_Td = (act[0].to(torch.float32) - self._decode(s, z, skip_x[0])).detach()
                return act
            if mode == "linear":
                z, err = leaves[s.name]
            else:
                z = s.dictionary.activation(pres[s.name]).dense
                z = z * s.keep_T[None, :, None].to(z.dtype)
                if ablate and ablate.get(s.name):
                    pos, lat = zip(*ablate[s.name])
                    z = z.clone()
                    z[:, list(pos), list(lat)] = 0.0
                err = s.err_Td[None]
            new = (self._decode(s, z, skip_x) + err).to(act.dtype)
            if s.input_hookpoint != hook.name:
                read_inputs(new, hook.name)  # a transcoder reading another dictionary's output
            return new

        hooks = [("embed.hook_out", embed_hook)] + [(n, frozen_hook) for n in self._frozen_names()]
        hooks += [(n, in_hook) for n in by_in if n not in by_out]
        hooks += [(n, out_hook) for n in by_out]
        handles = [m.register_forward_hook(act_hook(n)) for n, m in self._act_modules()]
        logits = None
        ids = self.ids_T[None].expand(batch, -1).to(self.model.device)
        try:
            with self.bridge.hooks(fwd_hooks=hooks), warnings.catch_warnings():
                # the bridge warns when a hook edits hook_scale: that edit is the point here
                warnings.filterwarnings("ignore", message="A forward hook edited hook_scale")
                logits = self.bridge(ids)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if mode == "record" and logits is not None:
            self.clean_logits = logits.detach()
        return pres, logits

    @staticmethod
    def _decode(s: Spliced, z: Tensor, x: Tensor) -> Tensor:
        return s.dictionary.decode(z, x if s.dictionary.W_skip is not None else None)
