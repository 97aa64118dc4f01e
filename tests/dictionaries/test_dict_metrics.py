"""Pure metric functions."""

from __future__ import annotations

import pytest
import torch

import dictionaries as dl


def test_fvu_reference_values():
    torch.manual_seed(0)
    x = torch.randn(100, 8) + 3.0
    assert float(dl.fvu(x, x)) == 0.0
    assert float(dl.fvu(x, x.mean(0).expand_as(x))) == pytest.approx(1.0, abs=1e-12)
    x_hat = x + 0.1 * torch.randn(100, 8)
    expected = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(dl.fvu(x, x_hat)) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        dl.fvu(x, x[:, :4])


def test_fvu_accumulator_equals_fvu_of_concatenation():
    torch.manual_seed(0)
    xs = [torch.randn(n, 6) * 4 + 100.0 for n in (7, 50, 1, 33)]  # large offset: cancellation trap
    batches = [(x, x + torch.randn_like(x) * 0.5) for x in xs]
    acc = dl.FVUAccumulator()
    for x, x_hat in batches:
        acc.update(x, x_hat)
    whole = dl.fvu(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert float(acc.compute()) == pytest.approx(float(whole), rel=1e-10)
    # the mean is over all tokens, not per batch: differs from averaging per-batch FVUs
    per_batch = sum(float(dl.fvu(x, xh)) for x, xh in batches) / len(batches)
    assert per_batch != pytest.approx(float(whole), rel=1e-3)
    with pytest.raises(ValueError):
        dl.FVUAccumulator().compute()


def test_l0_density_dead_dense():
    z1 = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.5, 0.0, 0.0, 0.0]])
    z2 = torch.tensor([[0.0, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 1.0]])
    assert float(dl.l0(z1)) == 1.5
    density = dl.firing_density([z1, z2])
    assert density.tolist() == [0.75, 0.0, 0.0, 0.75]
    assert dl.dead_fraction(density) == 0.5
    assert dl.dead_fraction(torch.tensor([0, 3, 0, 1])) == 0.5
    assert dl.dense_fraction(density, threshold=0.5) == 0.5
    assert dl.dense_fraction(torch.tensor([0.05, 0.2])) == 0.5
    with pytest.raises(ValueError):
        dl.firing_density([])


def test_density_histogram_figure():
    pytest.importorskip("plotly")
    density = torch.tensor([0.0, 0.0, 1e-4, 1e-3, 1e-2, 0.5])
    fig = dl.density_histogram_figure(density)
    assert "2 of 6 latents dead" in fig.layout.title.text
    assert sorted(fig.data[0].x) == pytest.approx([-4.0, -3.0, -2.0, torch.tensor(0.5).log10().item()])
