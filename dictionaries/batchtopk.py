"""BatchTopK sparse autoencoder with a learned inference threshold.

Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders" (arXiv:2412.06410)::

    training:  z = TopK_{k * n_tokens}(ReLU(pre)) over the whole batch (flattened tokens x latents)
    inference: z = pre * 1[pre > threshold]

so tokens may use more or fewer than ``k`` latents while the batch averages ``k``. The
threshold is an EMA (momentum ``cfg.threshold_momentum``) of the smallest positive
activation selected in each training batch, stored in the ``threshold`` buffer (in latent
units; -1 until the first training batch). Before any training batch has been seen, eval-mode
encoding falls back to per-token TopK, since there is no threshold to apply yet.
The AuxK loss of Gao et al. (see :mod:`.topk`) revives dead latents.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Latents
from .config import DictionaryConfig, register
from .kernels import Selection
from .topk import AuxKMixin

__all__ = ["BatchTopKDictionary"]


@register("batchtopk")
class BatchTopKDictionary(AuxKMixin):
    """``k * n_tokens`` active latents per training batch; a fixed threshold at inference."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.full((), -1.0))

    @classmethod
    def validate_config(cls, cfg: DictionaryConfig) -> None:
        if cfg.k > cfg.n_latents:
            raise ValueError(f"k={cfg.k} must be <= n_latents={cfg.n_latents}")

    def activation(self, pre_BF: Tensor) -> Latents:
        acts_BF = torch.relu(pre_BF)
        if self.training:
            return Latents(dense=self._batch_topk(acts_BF))
        if self.threshold < 0:  # never trained: no threshold yet
            top_acts, top_idx = acts_BF.topk(self.cfg.k, dim=-1, sorted=False)
            return Latents(dense=torch.zeros_like(acts_BF).scatter(-1, top_idx, top_acts))
        return Latents(dense=acts_BF * (acts_BF > self.threshold))

    def has_selection(self) -> bool:
        return self.training

    def select(self, pre_NF: Tensor) -> tuple[Selection, Tensor]:
        # Selecting on pre rather than ReLU(pre) only changes which zero-valued entries are
        # picked when fewer than k * N are positive; they contribute nothing either way.
        n_tokens, n_latents = pre_NF.shape
        flat = pre_NF.reshape(-1)
        values_M, flat_M = flat.topk(min(self.cfg.k * n_tokens, flat.numel()), sorted=False)
        flat_M, order = flat_M.sort()
        values_M = values_M[order]
        self._update_threshold(values_M)
        return Selection.from_flat(flat_M, n_tokens, n_latents), values_M

    def _batch_topk(self, acts_BF: Tensor) -> Tensor:
        n_tokens = acts_BF.numel() // acts_BF.shape[-1]
        flat = acts_BF.reshape(-1)
        top_acts, top_idx = flat.topk(min(self.cfg.k * n_tokens, flat.numel()), sorted=False)
        dense = torch.zeros_like(flat).scatter(-1, top_idx, top_acts).reshape(acts_BF.shape)
        self._update_threshold(top_acts)
        return dense

    @torch.no_grad()
    def _update_threshold(self, top_values: Tensor) -> None:
        """EMA of the smallest positive selected value (no update if none is positive)."""
        positive = top_values[top_values > 0]
        if positive.numel() > 0:
            batch_min = positive.min()
            if self.threshold < 0:
                self.threshold.copy_(batch_min)
            else:
                m = self.cfg.threshold_momentum
                self.threshold.mul_(m).add_(batch_min, alpha=1 - m)
