"""JumpReLU sparse autoencoder trained with straight-through estimators of an L0 penalty.

Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders" (arXiv:2407.14435)::

    theta = exp(log_threshold)                         [F], learned, > 0
    z     = JumpReLU_theta(pre) = pre * H(pre - theta)
    loss  = mean_tokens ||y - z @ W_dec - b_dec||^2 + l0_coeff * mean_tokens sum_i H(pre_i - theta_i)

``H`` has zero gradient almost everywhere, so ``theta`` is trained with the paper's
pseudo-derivatives, using the rectangle kernel ``K(u) = 1[|u| < 1/2]`` of bandwidth ``eps``::

    d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta = -(1 / eps) K((pre - theta) / eps)

while gradients with respect to ``pre`` are the ordinary ones (``H(pre - theta)`` for
JumpReLU, zero for the step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import Dictionary, Latents
from .config import DictionaryConfig, register

__all__ = ["JumpReLUDictionary", "jumprelu", "step"]


def _sum_to_threshold(grad: Tensor, threshold_F: Tensor) -> Tensor:
    return grad.reshape(-1, threshold_F.shape[-1]).sum(0)


def _rectangle(pre: Tensor, threshold_F: Tensor, bandwidth: float) -> Tensor:
    """``K((pre - theta) / eps)`` with ``K(u) = 1[|u| < 1/2]``, as ``pre``'s dtype."""
    return ((pre - threshold_F).abs() < bandwidth / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold_F: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold_F)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold_F).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold_F = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold_F).to(pre.dtype)
        grad_theta = -(threshold_F / eps) * _rectangle(pre, threshold_F, eps) * grad_out
        return grad_pre, _sum_to_threshold(grad_theta, threshold_F), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold_F: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold_F)
        ctx.bandwidth = bandwidth
        return (pre > threshold_F).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold_F = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * _rectangle(pre, threshold_F, eps) * grad_out
        return torch.zeros_like(pre), _sum_to_threshold(grad_theta, threshold_F), None


def jumprelu(pre: Tensor, threshold_F: Tensor, bandwidth: float) -> Tensor:
    """``pre * H(pre - theta)`` with the straight-through gradient for ``theta``."""
    return _JumpReLU.apply(pre, threshold_F, bandwidth)


def step(pre: Tensor, threshold_F: Tensor, bandwidth: float) -> Tensor:
    """``H(pre - theta)`` (as floats) with the straight-through gradient for ``theta``."""
    return _Step.apply(pre, threshold_F, bandwidth)


@register("jumprelu")
class JumpReLUDictionary(Dictionary):
    """Per-latent learned threshold; sparsity from the L0 penalty (``cfg.l0_coeff``)."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.n_latents,), math.log(cfg.initial_threshold)))

    @property
    def threshold(self) -> Tensor:
        """``theta = exp(log_threshold)``, shape ``[F]``."""
        return self.log_threshold.exp()

    def activation(self, pre_BF: Tensor) -> Latents:
        return Latents(dense=jumprelu(pre_BF, self.threshold, self.cfg.bandwidth))

    def sparsity_loss(self, pre_BF: Tensor, latents: Latents) -> Tensor:
        l0_B = step(pre_BF, self.threshold, self.cfg.bandwidth).sum(-1)
        return self.cfg.l0_coeff * l0_B.mean()
