"""Sparse kernels for dictionaries whose latents are chosen by k (TopK, BatchTopK).

Only ``M`` entries of the pre-activations ``pre = x @ W_enc + b_enc  [N, F]`` are ever used
(``M = k N``), so only they need a gradient. Plain autograd through ``pre`` builds a dense
``[N, F]`` gradient and spends a second full ``[N, d_in] x [N, F]`` GEMM on ``W_enc``; here the
backward touches the ``M`` selected entries only::

    grad b_enc[f]      = sum_{m: latent_m = f} g_m
    grad W_enc[:, f]   = sum_{m: latent_m = f} g_m x[token_m]          (a feature-major bag sum)
    grad x[n]          = sum_{m: token_m = n}  g_m W_enc[:, latent_m]   (a token-major bag sum)

Both bag sums are ``F.embedding_bag(..., mode="sum", per_sample_weights=g)``, which neither
materialises the ``[M, d_in]`` products nor loops in Python.

A :class:`Selection` lists the entries token by token (CSR order), which is exactly what
``embedding_bag`` wants for decoding ``x_hat[n] = sum_{m: token_m = n} acts_m W_dec[latent_m]``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Selection", "decode_selected", "selected_pre_activations"]

_CHUNK = 8192
"""Entries per chunk of :meth:`Selection.dots`' fallback (gathers ``[chunk, d]`` blocks instead
of materialising ``[M, d]``)."""


class Selection:
    """``M`` selected entries ``(token_M[m], latent_M[m])`` of an ``[N, F]`` matrix, grouped by
    token in increasing token order (CSR order), plus (computed once, on demand) the same
    entries grouped by latent, which the backward passes share."""

    def __init__(self, token_M: Tensor, latent_M: Tensor, offsets_N: Tensor, n_latents: int):
        self.token_M = token_M
        """``[M]`` int64 row (token) of each entry, non-decreasing."""
        self.latent_M = latent_M
        """``[M]`` int64 column (latent) of each entry."""
        self.offsets_N = offsets_N
        """``[N]`` int64 start of each token's entries (``embedding_bag`` offsets)."""
        self.n_latents = n_latents
        """``F``, the number of columns."""

    @property
    def n_tokens(self) -> int:
        return self.offsets_N.shape[0]

    @classmethod
    def per_token(cls, idx_NK: Tensor, n_latents: int) -> "Selection":
        """Exactly ``K`` entries per token: ``idx_NK[n]`` are token ``n``'s latents."""
        n, k = idx_NK.shape
        rows = torch.arange(n, device=idx_NK.device)
        return cls(rows.repeat_interleave(k), idx_NK.reshape(-1), rows * k, n_latents)

    @classmethod
    def from_flat(cls, flat_M: Tensor, n_tokens: int, n_latents: int) -> "Selection":
        """Entries given as sorted (ascending) flat indices ``token * F + latent``."""
        token_M = torch.div(flat_M, n_latents, rounding_mode="floor")
        return cls(token_M, flat_M - token_M * n_latents, _starts(token_M, n_tokens), n_latents)

    @cached_property
    def by_latent(self) -> tuple[Tensor, Tensor]:
        """``(order_M, offsets_F)``: ``latent_M[order_M]`` is non-decreasing and latent ``f``'s
        entries start at ``offsets_F[f]`` of it (a stable order, so results are reproducible)."""
        # Trap: torch.sort is several times slower on int64 than on float32 (CPU, torch 2.x);
        # latent ids < 2**24 are exact in float32.
        key = self.latent_M.float() if self.n_latents <= 2**24 else self.latent_M
        order_M = torch.sort(key, stable=True).indices
        return order_M, _starts(self.latent_M, self.n_latents)

    def to_dense(self, values_M: Tensor) -> Tensor:
        """``[N, F]`` matrix with ``values_M`` at the selected entries, zeros elsewhere
        (differentiable in ``values_M``)."""
        flat = values_M.new_zeros(self.n_tokens * self.n_latents)
        flat = flat.index_put((self.token_M * self.n_latents + self.latent_M,), values_M)
        return flat.reshape(self.n_tokens, self.n_latents)

    def fired(self, values_M: Tensor) -> Tensor:
        """``[F]`` bool: the latent has a non-zero value at some selected entry."""
        nonzero_M = (values_M != 0).to(values_M.dtype)
        return values_M.new_zeros(self.n_latents).index_add_(0, self.latent_M, nonzero_M) > 0

    def bag_sum_by_latent(self, table_ND: Tensor, weights_M: Tensor) -> Tensor:
        """``out[f] = sum_{m: latent_m = f} weights_m table[token_m]``  -> ``[F, D]``."""
        order_M, offsets_F = self.by_latent
        return F.embedding_bag(self.token_M[order_M], table_ND, offsets_F, mode="sum",
                               per_sample_weights=weights_M[order_M])

    def bag_sum_by_token(self, table_FD: Tensor, weights_M: Tensor) -> Tensor:
        """``out[n] = sum_{m: token_m = n} weights_m table[latent_m]``  -> ``[N, D]``."""
        return F.embedding_bag(self.latent_M, table_FD, self.offsets_N, mode="sum",
                               per_sample_weights=weights_M)

    def dots(self, table_FD: Tensor, vecs_ND: Tensor) -> Tensor:
        """``out[m] = table[latent_m] . vecs[token_m]``  -> ``[M]``."""
        if _PER_SAMPLE_WEIGHTS_BACKWARD is not None:
            # The per-sample-weight gradient of embedding_bag is exactly this product; its ATen
            # kernel is ~10x faster on CPU than gathering [M, d] rows (even chunked).
            return _PER_SAMPLE_WEIGHTS_BACKWARD(vecs_ND, table_FD, self.latent_M, self.offsets_N,
                                                self.token_M, 0, -1)
        out_M = vecs_ND.new_empty(self.latent_M.shape[0])
        for start in range(0, out_M.shape[0], _CHUNK):
            sl = slice(start, start + _CHUNK)
            rows = table_FD.index_select(0, self.latent_M[sl])
            rows.mul_(vecs_ND.index_select(0, self.token_M[sl]))
            torch.sum(rows, dim=-1, out=out_M[sl])
        return out_M


_PER_SAMPLE_WEIGHTS_BACKWARD = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
"""Private ATen op (``grad, weight, indices, offsets, offset2bag, mode, padding_idx``); if a torch
version drops it, :meth:`Selection.dots` falls back to chunked gathers (same result, slower)."""


def _starts(sorted_ids_M: Tensor, n: int) -> Tensor:
    """Start offset of each id ``0..n-1`` in a non-decreasing (or to-be-sorted) id list."""
    counts = torch.zeros(n, dtype=torch.int64, device=sorted_ids_M.device)
    counts.index_add_(0, sorted_ids_M, torch.ones_like(sorted_ids_M))
    return counts.cumsum(0) - counts


class _SelectedPreActivations(torch.autograd.Function):
    """``values_M = (x @ W_enc + b_enc)[token_M, latent_M]`` with a sparse backward.

    The forward takes the values already computed (they come out of the GEMM + top-k that chose
    the entries), so it costs nothing; the backward is described in the module docstring."""

    @staticmethod
    def forward(ctx: Any, values_M: Tensor, x_ND: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor,
                sel: Selection) -> Tensor:
        ctx.save_for_backward(x_ND, W_enc_DF)
        ctx.sel = sel
        return values_M.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_M: Tensor) -> tuple[Tensor | None, ...]:
        x_ND, W_enc_DF = ctx.saved_tensors
        sel: Selection = ctx.sel
        grad_M = grad_M.contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[2]:
            # [F, D] bag sums of x rows; W_enc's layout is [D, F], hence the transpose (one copy).
            grad_W = sel.bag_sum_by_latent(x_ND, grad_M).t()
        if ctx.needs_input_grad[3]:
            grad_b = grad_M.new_zeros(sel.n_latents).index_add_(0, sel.latent_M, grad_M)
        if ctx.needs_input_grad[1]:
            grad_x = sel.bag_sum_by_token(W_enc_DF.t().contiguous(), grad_M)
        return None, grad_x, grad_W, grad_b, None


class _DecodeSelected(torch.autograd.Function):
    """``x_hat[n] = sum_{m: token_m = n} acts_m W_dec[latent_m]``; backward:
    ``grad acts_m = g[token_m] . W_dec[latent_m]``, ``grad W_dec[f] = sum_{latent_m = f} acts_m g[token_m]``."""

    @staticmethod
    def forward(ctx: Any, acts_M: Tensor, W_dec_FO: Tensor, sel: Selection) -> Tensor:
        ctx.save_for_backward(acts_M, W_dec_FO)
        ctx.sel = sel
        return sel.bag_sum_by_token(W_dec_FO, acts_M)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_NO: Tensor) -> tuple[Tensor | None, ...]:
        acts_M, W_dec_FO = ctx.saved_tensors
        sel: Selection = ctx.sel
        grad_NO = grad_NO.contiguous()
        grad_acts = sel.dots(W_dec_FO, grad_NO) if ctx.needs_input_grad[0] else None
        grad_W = sel.bag_sum_by_latent(grad_NO, acts_M) if ctx.needs_input_grad[1] else None
        return grad_acts, grad_W, None


def selected_pre_activations(values_M: Tensor, x_ND: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor,
                             sel: Selection) -> Tensor:
    """Attach to ``values_M`` (``[M]``, the pre-activations ``x @ W_enc + b_enc`` at ``sel``,
    computed without grad) the gradient they would have through the dense pre-activations,
    w.r.t. ``x_ND [N, D]``, ``W_enc_DF [D, F]`` and ``b_enc_F [F]``. Costs ``O(M D)``."""
    return _SelectedPreActivations.apply(values_M.detach(), x_ND, W_enc_DF, b_enc_F, sel)


def decode_selected(acts_M: Tensor, W_dec_FO: Tensor, sel: Selection) -> Tensor:
    """``x_hat[n] = sum_{m: token_m = n} acts_m W_dec[latent_m]``  -> ``[N, O]`` (no bias);
    differentiable in ``acts_M`` and ``W_dec_FO``, with an ``O(M O)`` backward."""
    return _DecodeSelected.apply(acts_M, W_dec_FO, sel)
