"""The dictionary interface shared by every architecture (its config and registry:
:mod:`dictionaries.config`).

A dictionary (sparse autoencoder, or transcoder when input and target differ) is::

    pre     = x @ W_enc + b_enc                          x: [..., d_in], pre: [..., F]
    z       = activation(pre)                            z: [..., F]   (architecture-specific)
    x_hat   = z @ W_dec + b_dec  (+ x @ W_skip)          x_hat: [..., d_out]

with ``W_enc: [d_in, F]``, ``b_enc: [F]``, ``W_dec: [F, d_out]``, ``b_dec: [d_out]`` and the
optional linear skip ``W_skip: [d_in, d_out]`` of a skip transcoder.

An architecture is one file that subclasses :class:`Dictionary`, implements
:meth:`Dictionary.activation` and registers itself with ``@register("name")``; :func:`build`
turns a :class:`DictionaryConfig` into the registered class.

Training happens on scaled activations (``x * s`` with ``E||x * s|| = sqrt(d_in)``);
:meth:`Dictionary.fold_scale` rewrites the weights afterwards so that the saved dictionary
takes raw activations and gives the *same latents* and raw-scale reconstructions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DictionaryConfig
from .kernels import Selection, decode_selected, selected_pre_activations

__all__ = ["Dictionary", "DictionaryOutput", "Latents"]


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


class Latents(NamedTuple):
    """What an architecture's activation function returns."""

    dense: Tensor
    """``[..., F]`` latent activations ``z`` (zeros where inactive)."""

    top_indices: Tensor | None = None
    """``[..., K]`` indices of the active latents when every token has exactly K (TopK), else None."""

    top_acts: Tensor | None = None
    """``[..., K]`` activations at ``top_indices`` (may contain zeros), else None."""


class DictionaryOutput(NamedTuple):
    """Result of :meth:`Dictionary.forward`. All losses are scalars; ``loss`` carries the graph."""

    x_hat: Tensor
    """``[..., d_out]`` reconstruction of the target (including the skip path if any)."""

    latents: Tensor | None
    """``[..., F]`` latent activations ``z``; None when ``forward(..., dense_latents=False)`` and
    the architecture has a sparse path (TopK, BatchTopK in training)."""

    loss: Tensor
    """Total training loss ``recon_loss + sparsity_loss + auxk_loss``."""

    recon_loss: Tensor
    """``mean_tokens sum_features (target - x_hat)^2``: squared error summed over ``d_out``,
    averaged over tokens."""

    sparsity_loss: Tensor
    """Architecture penalty, already weighted: ReLU ``l1_coeff * mean_tokens sum_i z_i ||W_dec_i||``,
    JumpReLU ``l0_coeff * mean_tokens L0``; zero for TopK / BatchTopK."""

    auxk_loss: Tensor
    """TopK / BatchTopK: ``aux_coeff * ||e - e_hat||^2 / ||e - mean e||^2`` where ``e`` is the
    (detached) residual and ``e_hat`` its reconstruction by the top ``k_aux`` dead latents;
    zero for other architectures, when no ``dead_mask`` is given or no latent is dead."""

    fvu: Tensor
    """Fraction of variance unexplained on this batch (detached):
    ``sum ||target - x_hat||^2 / sum ||target - mean_batch(target)||^2``."""

    l0: Tensor
    """Mean number of non-zero latents per token (detached)."""

    fired: Tensor
    """``[F]`` bool: the latent is non-zero for at least one token of the batch (detached)."""


# --------------------------------------------------------------------------------------
# The base module
# --------------------------------------------------------------------------------------


def check_width(t: Tensor, expected: int, what: str) -> None:
    """Raise a ``ValueError`` unless ``t.shape[-1] == expected``."""
    if t.ndim == 0 or t.shape[-1] != expected:
        raise ValueError(
            f"{what}: expected last dimension {expected}, got tensor of shape {tuple(t.shape)}"
        )


class Dictionary(nn.Module, ABC):
    """Abstract sparse dictionary. Subclasses implement :meth:`activation` and may override
    :meth:`sparsity_loss`, :meth:`auxk_loss` and :meth:`validate_config`.

    Parameters: ``W_enc [d_in, F]``, ``b_enc [F]``, ``W_dec [F, d_out]``, ``b_dec [d_out]``,
    ``W_skip [d_in, d_out]`` (only with ``cfg.skip_connection``). Buffers ``folded_in_scale`` and
    ``folded_out_scale`` record the product of the factors folded in by :meth:`fold_scale`
    (1.0 for a dictionary that still expects normalised activations).
    """

    arch: ClassVar[str] = ""

    use_sparse_kernels: bool = True
    """Train through the sparse path when the architecture has one (:meth:`has_selection`).
    Set to False (on the class or an instance) for plain autograd through the dense
    pre-activations: same results to float rounding, slower; kept as the reference."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_out, n = cfg.d_in, cfg.d_out, cfg.n_latents
        assert d_out is not None  # resolved by DictionaryConfig.__post_init__

        # Decoder rows are random unit vectors. For an SAE the encoder starts as the decoder's
        # transpose (Gao et al. 2024; it keeps latents from dying early); a transcoder's encoder
        # lives in another space, so it gets its own random unit columns.
        W_dec_FO = torch.randn(n, d_out)
        W_dec_FO /= W_dec_FO.norm(dim=-1, keepdim=True)
        if d_in == d_out:
            W_enc_DF = W_dec_FO.T.clone()
        else:
            W_enc_DF = torch.randn(d_in, n)
            W_enc_DF /= W_enc_DF.norm(dim=0, keepdim=True)

        self.W_enc = nn.Parameter(W_enc_DF)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(W_dec_FO)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out)) if cfg.skip_connection else None
        self.register_buffer("folded_in_scale", torch.ones(()))
        self.register_buffer("folded_out_scale", torch.ones(()))

    # ---- extension points -----------------------------------------------------------

    @classmethod
    def validate_config(cls, cfg: DictionaryConfig) -> None:
        """Raise ``ValueError`` if ``cfg`` is invalid for this architecture (default: accept)."""

    @abstractmethod
    def activation(self, pre_BF: Tensor) -> Latents:
        """Map pre-activations ``[..., F]`` to latents. May depend on ``self.training``."""

    def has_selection(self) -> bool:
        """Whether :meth:`select` applies in the current mode (default: never)."""
        return False

    def select(self, pre_NF: Tensor) -> tuple[Selection, Tensor]:
        """Sparse path: the active entries of the (graph-less) pre-activations ``[N, F]`` and their
        values ``[M]`` *before* the ReLU, which :meth:`forward` applies. Must give the same
        latents as ``activation(pre_NF).dense`` (entries whose ReLU is 0 may be included)."""
        raise NotImplementedError(f"{type(self).__name__} has no sparse selection")

    def sparsity_loss(self, pre_BF: Tensor, latents: Latents) -> Tensor:
        """Weighted sparsity penalty (scalar). Default: none."""
        return pre_BF.new_zeros(())

    def auxk_loss(self, pre_NF: Tensor, residual_NO: Tensor, dead_mask_F: Tensor | None,
                  x_ND: Tensor | None = None) -> Tensor:
        """Auxiliary loss on dead latents (scalar). Default: none. ``pre_NF`` may carry no graph
        (sparse path): take differentiable entries with :meth:`pre_at` (it needs ``x_ND``)."""
        return pre_NF.new_zeros(())

    # ---- the model ------------------------------------------------------------------

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    def pre_activation(self, x: Tensor) -> Tensor:
        """``x [..., d_in] -> x @ W_enc + b_enc  [..., F]``."""
        check_width(x, self.cfg.d_in, "x")
        return einops.einsum(x, self.W_enc, "... d, d f -> ... f") + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """``x [..., d_in] -> z [..., F]`` (BatchTopK: the batch is all leading dims in training
        mode; the learned threshold is used in eval mode)."""
        return self.activation(self.pre_activation(x)).dense

    def decode(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """``z [..., F] -> z @ W_dec + b_dec (+ x @ W_skip)  [..., d_out]``.

        ``x [..., d_in]`` is required when the dictionary has a skip connection (decoding a skip
        transcoder without its input would silently drop the linear path) and ignored otherwise.
        """
        check_width(z, self.cfg.n_latents, "z")
        x_hat = einops.einsum(z, self.W_dec, "... f, f o -> ... o") + self.b_dec
        return x_hat + self._skip(x)

    def decode_sparse(self, top_indices: Tensor, top_acts: Tensor, x: Tensor | None = None) -> Tensor:
        """Decode from ``K`` active latents per token without materialising ``z``.

        ``x_hat[t] = sum_j top_acts[t, j] * W_dec[top_indices[t, j]] + b_dec (+ x[t] @ W_skip)``.
        ``top_indices, top_acts: [..., K]`` -> ``[..., d_out]``. Equal to :meth:`decode` of the
        dense ``z`` (to float rounding), with the same gradients for ``W_dec`` and ``top_acts``;
        costs ``O(K d_out)`` per token instead of ``O(F d_out)``.
        """
        if top_indices.shape != top_acts.shape:
            raise ValueError(
                f"top_indices {tuple(top_indices.shape)} and top_acts {tuple(top_acts.shape)} differ"
            )
        lead, k = top_indices.shape[:-1], top_indices.shape[-1]
        x_hat_NO = F.embedding_bag(
            top_indices.reshape(-1, k),
            self.W_dec,
            per_sample_weights=top_acts.reshape(-1, k),
            mode="sum",
        )
        x_hat = x_hat_NO.reshape(*lead, self.cfg.d_out) + self.b_dec
        return x_hat + self._skip(x)

    def _skip(self, x: Tensor | None) -> Tensor | float:
        if self.W_skip is None:
            if x is not None:
                check_width(x, self.cfg.d_in, "x")
            return 0.0
        if x is None:
            raise ValueError("this dictionary has a skip connection: decode needs the input x too")
        check_width(x, self.cfg.d_in, "x")
        return einops.einsum(x, self.W_skip, "... d, d o -> ... o")

    def forward(
        self,
        x: Tensor,
        target: Tensor | None = None,
        dead_mask: Tensor | None = None,
        *,
        dense_latents: bool = True,
    ) -> DictionaryOutput:
        """Reconstruct ``target`` (default ``x``) from ``x`` and compute the training losses.

        Args:
            x: ``[..., d_in]`` input activations (normalised scale during training).
            target: ``[..., d_out]`` what to reconstruct; required when ``d_out != d_in``
                (transcoder: e.g. the MLP output for the MLP input ``x``).
            dead_mask: ``[F]`` bool, True for latents the trainer considers dead (AuxK only).
            dense_latents: False lets an architecture with a sparse path (see :meth:`select`)
                skip building the ``[..., F]`` latents; ``latents`` is then None (use ``l0`` and
                ``fired``). The trainer passes False; every other output is unchanged.
        """
        check_width(x, self.cfg.d_in, "x")
        if target is None:
            if self.cfg.d_out != self.cfg.d_in:
                raise ValueError(
                    f"d_out={self.cfg.d_out} != d_in={self.cfg.d_in}: a transcoder needs a target"
                )
            target = x
        check_width(target, self.cfg.d_out, "target")
        if target.shape[:-1] != x.shape[:-1]:
            raise ValueError(
                f"x {tuple(x.shape)} and target {tuple(target.shape)} have different leading dims"
            )
        if dead_mask is not None and dead_mask.shape != (self.cfg.n_latents,):
            raise ValueError(
                f"dead_mask: expected shape ({self.cfg.n_latents},), got {tuple(dead_mask.shape)}"
            )

        lead = x.shape[:-1]
        x_ND = x.reshape(-1, self.cfg.d_in)
        if self.use_sparse_kernels and self.has_selection():
            # Sparse path: the pre-activations are computed without a graph; only the selected
            # entries get one (kernels.selected_pre_activations), so the backward never forms
            # the dense [N, F] gradient nor its [N, d_in] x [N, F] GEMM.
            with torch.no_grad():
                pre_NF = torch.addmm(self.b_enc, x_ND, self.W_enc)
            sel, values_M = self.select(pre_NF)
            acts_M = torch.relu(self.pre_at(pre_NF, sel, x_ND, values_M))
            x_hat_NO = decode_selected(acts_M, self.W_dec, sel)
            dense_NF = sel.to_dense(acts_M) if dense_latents else None
            with torch.no_grad():
                l0 = (acts_M != 0).sum().float() / max(sel.n_tokens, 1)
                fired_F = sel.fired(acts_M)
            sparsity_loss = pre_NF.new_zeros(())
        else:
            pre_NF = self.pre_activation(x_ND)
            latents = self.activation(pre_NF)
            if latents.top_indices is not None and latents.top_acts is not None:
                x_hat_NO = F.embedding_bag(latents.top_indices, self.W_dec,
                                           per_sample_weights=latents.top_acts, mode="sum")
            else:
                x_hat_NO = latents.dense @ self.W_dec
            dense_NF = latents.dense
            with torch.no_grad():
                nonzero_NF = latents.dense != 0
                l0 = nonzero_NF.sum(-1).float().mean()
                fired_F = nonzero_NF.any(0)
            sparsity_loss = self.sparsity_loss(pre_NF, latents)

        x_hat_BO = (x_hat_NO + self.b_dec).reshape(*lead, self.cfg.d_out) + self._skip(x)
        error_BO = target - x_hat_BO
        recon_loss = error_BO.pow(2).sum(-1).mean()
        error_NO = error_BO.detach().reshape(-1, self.cfg.d_out)
        auxk_loss = self.auxk_loss(pre_NF, error_NO, dead_mask, x_ND)
        with torch.no_grad():
            target_ND = target.reshape(-1, target.shape[-1])
            total_var = (target_ND - target_ND.mean(0)).pow(2).sum()
            fvu = error_NO.pow(2).sum() / total_var
        return DictionaryOutput(
            x_hat=x_hat_BO,
            latents=None if dense_NF is None else dense_NF.reshape(*lead, self.cfg.n_latents),
            loss=recon_loss + sparsity_loss + auxk_loss,
            recon_loss=recon_loss,
            sparsity_loss=sparsity_loss,
            auxk_loss=auxk_loss,
            fvu=fvu,
            l0=l0,
            fired=fired_F,
        )

    def pre_at(self, pre_NF: Tensor, sel: Selection, x_ND: Tensor | None,
               values_M: Tensor | None = None) -> Tensor:
        """``pre_NF [N, F]`` at the entries ``sel`` -> ``[M]``, differentiable w.r.t. the encoder.

        If ``pre_NF`` carries a graph this is a plain gather; if it was computed without one
        (the sparse path), the gradient goes through :func:`kernels.selected_pre_activations`
        from ``x_ND [N, d_in]`` (without ``x_ND`` the entries get no gradient).
        ``values_M``: the entries if already at hand (e.g. from topk).
        """
        if pre_NF.requires_grad:
            return pre_NF[sel.token_M, sel.latent_M]
        if values_M is None:
            values_M = pre_NF[sel.token_M, sel.latent_M]
        if x_ND is None:
            return values_M
        return selected_pre_activations(values_M, x_ND, self.W_enc, self.b_enc, sel)

    # ---- decoder-norm constraint (called by the trainer) ----------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_(self) -> None:
        """Rescale every decoder row ``W_dec[i]`` to unit L2 norm."""
        norm_F1 = torch.linalg.vector_norm(self.W_dec, dim=-1, keepdim=True)
        self.W_dec /= norm_F1.clamp_min(torch.finfo(self.W_dec.dtype).tiny)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from ``W_dec.grad`` its component along each (unit) decoder row, so that a
        small step moves rows tangentially to the unit sphere: ``g_i -= (g_i . w_i) w_i``."""
        if self.W_dec.grad is None:
            return
        parallel_F = torch.linalg.vecdot(self.W_dec.grad, self.W_dec)
        self.W_dec.grad.addcmul_(parallel_F[:, None], self.W_dec, value=-1)  # in place, one pass

    # ---- scale folding --------------------------------------------------------------

    @torch.no_grad()
    def fold_scale(self, in_scale: float, out_scale: float | None = None) -> None:
        """Make a dictionary trained on ``x * in_scale`` (targets ``y * out_scale``) work on raw
        activations: afterwards ``encode(x) == encode_before(x * in_scale)`` (same latents) and
        ``decode(z) == decode_before(z) / out_scale``.

        ``W_enc *= s_in``; ``W_dec, b_dec /= s_out``; ``W_skip *= s_in / s_out``. Pre-activations
        are unchanged, so thresholds in pre-activation / latent units (JumpReLU ``theta``,
        BatchTopK inference threshold) need no change; an architecture that rescaled its
        latents instead would have to rescale those thresholds too. Decoder rows then have norm
        ``1 / s_out``: fold only after training.

        ``out_scale`` defaults to ``in_scale`` (an SAE).
        """
        s_in = float(in_scale)
        s_out = float(in_scale if out_scale is None else out_scale)
        if not (math.isfinite(s_in) and math.isfinite(s_out) and s_in > 0 and s_out > 0):
            raise ValueError(f"scales must be finite and > 0, got in={s_in}, out={s_out}")
        self.W_enc *= s_in
        self.W_dec /= s_out
        self.b_dec /= s_out
        if self.W_skip is not None:
            self.W_skip *= s_in / s_out
        self.folded_in_scale *= s_in
        self.folded_out_scale *= s_out

    def extra_repr(self) -> str:
        c = self.cfg
        return f"arch={self.arch!r}, d_in={c.d_in}, n_latents={c.n_latents}, d_out={c.d_out}"
