"""TopK sparse autoencoder with the AuxK loss on dead latents.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (arXiv:2406.04093)::

    z     = ReLU(TopK_k(x @ W_enc + b_enc))              exactly k candidates per token
    x_hat = z @ W_dec + b_dec                            decoded sparsely (k rows per token)
    e     = y - x_hat                                    (detached)
    e_hat = TopK_{k_aux}(pre restricted to dead latents) @ W_dec
    loss  = ||e||^2 + aux_coeff * ||e - e_hat||^2 / ||e - mean(e)||^2

The AuxK term gives dead latents (``dead_mask``, supplied by the trainer) a gradient: the
best-aligned dead latents are asked to explain the current residual error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Dictionary, Latents
from .config import DictionaryConfig, register
from .kernels import Selection, decode_selected

__all__ = ["AuxKMixin", "TopKDictionary"]


class AuxKMixin(Dictionary):
    """AuxK loss of Gao et al. for any architecture whose sparsity is set by k (no penalty)."""

    def auxk_loss(self, pre_NF: Tensor, residual_NO: Tensor, dead_mask_F: Tensor | None,
                  x_ND: Tensor | None = None) -> Tensor:
        """``aux_coeff * sum ||e - e_hat||^2 / sum ||e - mean_tokens(e)||^2`` (scalar).

        ``e_hat = ReLU(top k_aux of the dead latents' pre-activations) @ W_dec`` (no bias: it
        explains a residual). ``k_aux`` is capped at the number of dead latents. Zero when
        ``dead_mask_F`` is None or has no dead latent.
        """
        if dead_mask_F is None or self.cfg.aux_coeff == 0:
            return pre_NF.new_zeros(())
        dead_mask_F = dead_mask_F.bool()
        n_dead = int(dead_mask_F.sum())
        if n_dead == 0:
            return pre_NF.new_zeros(())
        k_aux = min(self.cfg.aux_k, n_dead)
        with torch.no_grad():
            dead_pre_NF = pre_NF.masked_fill(~dead_mask_F, float("-inf"))
            values_NK, idx_NK = dead_pre_NF.topk(k_aux, dim=-1, sorted=False)
        sel = Selection.per_token(idx_NK, self.cfg.n_latents)
        acts_M = torch.relu(self.pre_at(pre_NF, sel, x_ND, values_NK.reshape(-1)))
        e_hat_NO = decode_selected(acts_M, self.W_dec, sel)
        e_NO = residual_NO
        total_var = (e_NO - e_NO.mean(0)).pow(2).sum().clamp_min(torch.finfo(e_NO.dtype).tiny)
        return self.cfg.aux_coeff * (e_hat_NO - e_NO).pow(2).sum() / total_var


@register("topk")
class TopKDictionary(AuxKMixin):
    """Exactly ``k`` candidate latents per token (``ReLU`` may zero some of them)."""

    @classmethod
    def validate_config(cls, cfg: DictionaryConfig) -> None:
        if cfg.k > cfg.n_latents:
            raise ValueError(f"k={cfg.k} must be <= n_latents={cfg.n_latents}")

    def activation(self, pre_BF: Tensor) -> Latents:
        top_acts, top_indices = pre_BF.topk(self.cfg.k, dim=-1, sorted=False)
        top_acts = torch.relu(top_acts)
        dense = torch.zeros_like(pre_BF).scatter(-1, top_indices, top_acts)
        return Latents(dense=dense, top_indices=top_indices, top_acts=top_acts)

    def has_selection(self) -> bool:
        return True

    def select(self, pre_NF: Tensor) -> tuple[Selection, Tensor]:
        values_NK, idx_NK = pre_NF.topk(self.cfg.k, dim=-1, sorted=False)
        return Selection.per_token(idx_NK, self.cfg.n_latents), values_NK.reshape(-1)
