"""Dictionary quality metrics as pure functions of tensors.

* :func:`fvu` - fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  with sums over tokens and features and ``mean`` over tokens of the *same* set; report it on a
  held-out set. :class:`FVUAccumulator` gives the same number streamed over batches.
* :func:`l0` - mean number of active latents per token.
* :func:`firing_density`, :func:`dead_fraction`, :func:`dense_fraction` - per-latent firing rates.
* :func:`density_histogram_figure` - plotly histogram of ``log10`` firing density.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
from torch import Tensor

if TYPE_CHECKING:  # plotly is optional: imported lazily by density_histogram_figure
    import plotly.graph_objects as go

__all__ = [
    "FVUAccumulator",
    "dead_fraction",
    "dense_fraction",
    "density_histogram_figure",
    "firing_density",
    "fvu",
    "l0",
]


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained of ``x_hat`` for ``x`` (both ``[..., d]``), a scalar:
    ``sum ||x - x_hat||^2 / sum ||x - mean_tokens(x)||^2``. Computed in float64."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
    acc = FVUAccumulator()
    acc.update(x, x_hat)
    return acc.compute()


class FVUAccumulator:
    """Streaming :func:`fvu` over batches, with the mean taken over *all* tokens seen.

    Keeps, in float64, the token count ``n``, the per-feature mean and sum of squared deviations
    (merged with Chan et al.'s parallel update, which avoids the cancellation of
    ``E[x^2] - E[x]^2``) and the summed squared error. ``compute()`` after updating with batches
    ``b_1..b_m`` equals ``fvu(cat(b_1..b_m))`` up to float64 rounding.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean_D: Tensor | None = None
        self.m2_D: Tensor | None = None
        self.sse = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor) -> None:
        """Add a batch ``x, x_hat: [..., d]``."""
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
        x_ND = x.reshape(-1, x.shape[-1]).double().cpu()
        x_hat_ND = x_hat.reshape(-1, x.shape[-1]).double().cpu()
        n_b = x_ND.shape[0]
        if n_b == 0:
            return
        self.sse += (x_ND - x_hat_ND).pow(2).sum()
        mean_b = x_ND.mean(0)
        m2_b = (x_ND - mean_b).pow(2).sum(0)
        if self.mean_D is None or self.m2_D is None:
            self.n, self.mean_D, self.m2_D = n_b, mean_b, m2_b
            return
        if self.mean_D.shape != mean_b.shape:
            raise ValueError(f"feature width changed: {self.mean_D.shape[0]} -> {mean_b.shape[0]}")
        n = self.n + n_b
        delta = mean_b - self.mean_D
        self.m2_D = self.m2_D + m2_b + delta.pow(2) * (self.n * n_b / n)
        self.mean_D = self.mean_D + delta * (n_b / n)
        self.n = n

    def compute(self) -> Tensor:
        """The FVU (float64 scalar) of everything seen so far."""
        if self.m2_D is None:
            raise ValueError("FVUAccumulator.compute() before any update")
        return self.sse / self.m2_D.sum()


def l0(z: Tensor) -> Tensor:
    """Mean number of non-zero latents per token of ``z: [..., F]`` (float scalar)."""
    return (z != 0).sum(-1).double().mean()


def firing_density(z_batches: Iterable[Tensor]) -> Tensor:
    """Fraction of tokens on which each latent is non-zero, over batches ``z: [..., F]``; ``[F]``
    float64."""
    counts_F: Tensor | None = None
    n_tokens = 0
    for z in z_batches:
        z_NF = z.reshape(-1, z.shape[-1])
        fired_F = (z_NF != 0).sum(0).double().cpu()
        counts_F = fired_F if counts_F is None else counts_F + fired_F
        n_tokens += z_NF.shape[0]
    if counts_F is None or n_tokens == 0:
        raise ValueError("firing_density needs at least one non-empty batch")
    return counts_F / n_tokens


def dead_fraction(fire_counts: Tensor) -> float:
    """Fraction of latents that never fired: ``mean(fire_counts == 0)`` for ``fire_counts: [F]``
    (counts or densities)."""
    return float((fire_counts == 0).double().mean())


def dense_fraction(density: Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of tokens (``density: [F]`` in [0, 1]).
    Such dense latents are usually uninterpretable; 0.1 is a common cut-off."""
    return float((density > threshold).double().mean())


def density_histogram_figure(density: Tensor, title: str = "Latent firing density") -> "go.Figure":
    """Histogram of ``log10(density)`` over latents; dead latents (density 0, ``log10 = -inf``)
    are counted in the title rather than dropped silently. Needs plotly (imported here)."""
    import plotly.graph_objects as go

    density = density.double().cpu()
    alive = density[density > 0]
    n_dead = int((density == 0).sum())
    fig = go.Figure(go.Histogram(x=alive.log10().tolist(), nbinsx=60))
    fig.update_layout(
        title=f"{title} ({n_dead} of {density.numel()} latents dead, not shown)",
        xaxis_title="log10(firing density)",
        yaxis_title="latents",
        bargap=0.02,
    )
    return fig
