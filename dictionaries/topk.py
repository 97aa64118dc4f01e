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

from .base import Dictionary, DictionaryConfig, Latents, register

__all__ = ["AuxKMixin", "TopKDictionary"]


class AuxKMixin(Dictionary):
    """AuxK loss of Gao et al. for any architecture whose sparsity is set by k (no penalty)."""

    def auxk_loss(self, pre_BF: Tensor, residual_BO: Tensor, dead_mask_F: Tensor | None) -> Tensor:
        """``aux_coeff * sum ||e - e_hat||^2 / sum ||e - mean_tokens(e)||^2`` (scalar).

        ``e_hat = ReLU(top k_aux of the dead latents' pre-activations) @ W_dec`` (no bias: it
        explains a residual). ``k_aux`` is capped at the number of dead latents. Zero when
        ``dead_mask_F`` is None or has no dead latent.
        """
        if dead_mask_F is None or self.cfg.aux_coeff == 0:
            return pre_BF.new_zeros(())
        dead_mask_F = dead_mask_F.bool()
        n_dead = int(dead_mask_F.sum())
        if n_dead == 0:
            return pre_BF.new_zeros(())
        k_aux = min(self.cfg.aux_k, n_dead)
        pre_ND = pre_BF.reshape(-1, pre_BF.shape[-1])
        e_NO = residual_BO.reshape(-1, residual_BO.shape[-1])
        dead_pre_ND = pre_ND.masked_fill(~dead_mask_F, float("-inf"))
        acts_NK, idx_NK = dead_pre_ND.topk(k_aux, dim=-1, sorted=False)
        e_hat_NO = torch.nn.functional.embedding_bag(
            idx_NK, self.W_dec, per_sample_weights=torch.relu(acts_NK), mode="sum"
        )
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
