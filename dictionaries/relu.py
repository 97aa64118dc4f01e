"""ReLU sparse autoencoder with a decoder-norm-weighted L1 penalty.

Bricken et al. 2023, "Towards Monosemanticity" (transformer-circuits.pub/2023/monosemantic-features),
with the loss of the Anthropic "Circuits Updates - April 2024" training update::

    z    = ReLU(x @ W_enc + b_enc)
    loss = mean_tokens ||y - z @ W_dec - b_dec||^2 + l1_coeff * mean_tokens sum_i z_i ||W_dec_i||

Weighting ``|z_i|`` by the decoder-row norm makes the penalty invariant to moving scale
between ``z_i`` and ``W_dec_i``, so it stays meaningful with ``normalize_decoder=False``.
(The April update also ramps ``l1_coeff`` up over the first 5% of training; not done here.)
"""

from __future__ import annotations

import einops
import torch
from torch import Tensor

from .base import Dictionary, Latents
from .config import register

__all__ = ["ReLUDictionary"]


@register("relu")
class ReLUDictionary(Dictionary):
    """``z = ReLU(pre)``; sparsity from the weighted L1 penalty (``cfg.l1_coeff``)."""

    def activation(self, pre_BF: Tensor) -> Latents:
        return Latents(dense=torch.relu(pre_BF))

    def sparsity_loss(self, pre_BF: Tensor, latents: Latents) -> Tensor:
        dec_norm_F = self.W_dec.norm(dim=-1)
        weighted_B = einops.einsum(latents.dense.abs(), dec_norm_F, "... f, f -> ...")
        return self.cfg.l1_coeff * weighted_B.mean()
