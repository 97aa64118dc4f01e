"""Architecture-specific behaviour: sparse decoding, AuxK, BatchTopK threshold, JumpReLU STE."""

from __future__ import annotations

import math

import pytest
import torch

import dictionaries as dl
from dictionaries.jumprelu import jumprelu, step
from dict_helpers import D_IN, N_LATENTS, make_cfg


# ---- sparse decoding ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sae", "transcoder+skip"])
def test_decode_sparse_matches_dense_values_and_gradients(mode):
    torch.manual_seed(0)
    model = dl.build(make_cfg("topk", mode))
    with torch.no_grad():
        model.b_dec.normal_()
        if model.W_skip is not None:
            model.W_skip.normal_()
    x = torch.randn(2, 5, D_IN)
    idx = torch.stack([torch.randperm(N_LATENTS)[:6] for _ in range(10)]).reshape(2, 5, 6)
    vals = torch.rand(2, 5, 6, requires_grad=True)
    skip_in = x if mode != "sae" else None
    upstream = torch.randn(2, 5, model.cfg.d_out)

    sparse = model.decode_sparse(idx, vals, skip_in)
    (sparse * upstream).sum().backward()
    grads_sparse = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grad_vals_sparse = vals.grad.clone()
    model.zero_grad()
    vals.grad = None

    dense_z = torch.zeros(2, 5, N_LATENTS).scatter(-1, idx, vals)
    dense = model.decode(dense_z, skip_in)
    (dense * upstream).sum().backward()

    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_vals_sparse, vals.grad, atol=1e-5, rtol=1e-5)
    assert set(grads_sparse) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_sparse[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)
    assert grads_sparse["W_dec"].abs().sum() > 0


def test_topk_forward_reconstruction_equals_dense_decode_of_its_latents():
    torch.manual_seed(0)
    model = dl.build(make_cfg("topk"))
    x = torch.randn(16, D_IN)
    out = model(x)
    torch.testing.assert_close(out.x_hat, model.decode(out.latents), atol=1e-5, rtol=1e-5)
    assert ((out.latents != 0).sum(-1) <= model.cfg.k).all()


def test_decode_sparse_rejects_mismatched_shapes():
    model = dl.build(make_cfg("topk"))
    with pytest.raises(ValueError, match="differ"):
        model.decode_sparse(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 5))


# ---- AuxK -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_trains_only_dead_latents(arch):
    torch.manual_seed(0)
    model = dl.build(make_cfg(arch, k_aux=8))
    x = torch.randn(32, D_IN)
    dead = torch.zeros(N_LATENTS, dtype=torch.bool)
    dead[:40] = True
    pre = model.pre_activation(x)
    residual = torch.randn(32, D_IN)
    aux = model.auxk_loss(pre, residual, dead)
    assert aux > 0
    aux.backward()
    enc_grad_per_latent = model.W_enc.grad.abs().sum(0)
    dec_grad_per_latent = model.W_dec.grad.abs().sum(1)
    assert (enc_grad_per_latent[~dead] == 0).all() and (dec_grad_per_latent[~dead] == 0).all()
    assert enc_grad_per_latent[dead].sum() > 0 and dec_grad_per_latent[dead].sum() > 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_is_zero_without_dead_latents(arch):
    model = dl.build(make_cfg(arch))
    x = torch.randn(8, D_IN)
    assert model(x).auxk_loss == 0
    assert model(x, dead_mask=torch.zeros(N_LATENTS, dtype=torch.bool)).auxk_loss == 0


def test_auxk_value_matches_definition():
    torch.manual_seed(1)
    model = dl.build(make_cfg("topk", k_aux=3, aux_coeff=0.5))
    pre = torch.randn(10, N_LATENTS)
    e = torch.randn(10, D_IN)
    dead = torch.zeros(N_LATENTS, dtype=torch.bool)
    dead[5:25] = True
    z_aux = torch.zeros_like(pre)
    masked = pre.masked_fill(~dead, -math.inf)
    vals, idx = masked.topk(3, dim=-1)
    z_aux.scatter_(-1, idx, vals.relu())
    e_hat = z_aux @ model.W_dec
    expected = 0.5 * (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    torch.testing.assert_close(model.auxk_loss(pre, e, dead), expected)


# ---- BatchTopK --------------------------------------------------------------------------


@torch.no_grad()
def test_batchtopk_selects_k_per_token_on_average_and_learns_threshold():
    torch.manual_seed(0)
    model = dl.build(make_cfg("batchtopk", k=4, threshold_momentum=0.5))
    assert float(model.threshold) < 0  # unset
    x = torch.randn(64, D_IN)
    pre = model.pre_activation(x).relu()
    z = model.encode(x)  # training mode: batch top-k
    assert int((z != 0).sum()) == 4 * 64
    per_token = (z != 0).sum(-1)
    assert per_token.min() != per_token.max()  # tokens differ in how many latents they use
    first = float(model.threshold)
    assert first == pytest.approx(float(z[z > 0].min()))
    torch.testing.assert_close(z[z != 0], pre[z != 0])

    z2 = model.encode(torch.randn(64, D_IN))
    second_min = float(z2[z2 > 0].min())
    assert float(model.threshold) == pytest.approx(0.5 * first + 0.5 * second_min)

    model.eval()
    x3 = torch.randn(64, D_IN)
    before = float(model.threshold)
    z3 = model.encode(x3)
    assert float(model.threshold) == before  # eval does not update the threshold
    pre3 = model.pre_activation(x3).relu()
    torch.testing.assert_close(z3, pre3 * (pre3 > before))


def test_batchtopk_eval_before_training_falls_back_to_per_token_topk():
    model = dl.build(make_cfg("batchtopk", k=3)).eval()
    z = model.encode(torch.randn(7, D_IN))
    assert ((z != 0).sum(-1) <= 3).all()


# ---- JumpReLU ---------------------------------------------------------------------------


def test_jumprelu_forward_and_straight_through_gradients():
    eps = 0.2
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    pre = torch.tensor([[0.95, 2.5], [1.5, 1.95], [0.5, 2.05]], requires_grad=True)
    out = jumprelu(pre, theta, eps)
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.5], [1.5, 0.0], [0.0, 2.05]]))
    out.sum().backward()
    # d/dpre = H(pre - theta); d/dtheta = -(theta/eps) * sum 1[|pre - theta| < eps/2]
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(theta.grad, torch.tensor([-(1.0 / eps) * 1, -(2.0 / eps) * 2]))

    theta.grad = None
    pre.grad = None
    s = step(pre, theta, eps)
    torch.testing.assert_close(s, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    s.sum().backward()
    torch.testing.assert_close(pre.grad, torch.zeros_like(pre))
    torch.testing.assert_close(theta.grad, torch.tensor([-(1.0 / eps) * 1, -(1.0 / eps) * 2]))


def test_jumprelu_l0_penalty_pushes_thresholds_up():
    torch.manual_seed(0)
    model = dl.build(make_cfg("jumprelu", l0_coeff=1.0, bandwidth=0.5, initial_threshold=0.5))
    x = torch.randn(256, D_IN)
    out = model(x)
    assert out.sparsity_loss.item() == pytest.approx(out.l0.item())
    out.sparsity_loss.backward()
    g = model.log_threshold.grad
    assert (g <= 0).all() and (g < 0).any()  # descending raises thresholds
    assert model.W_enc.grad is None or model.W_enc.grad.abs().sum() == 0


def test_relu_sparsity_is_decoder_norm_weighted_l1():
    torch.manual_seed(0)
    model = dl.build(make_cfg("relu", l1_coeff=2.0))
    with torch.no_grad():
        model.W_dec.mul_(torch.linspace(0.5, 2.0, N_LATENTS)[:, None])
    x = torch.randn(9, D_IN)
    out = model(x)
    expected = 2.0 * (out.latents * model.W_dec.norm(dim=-1)).sum(-1).mean()
    torch.testing.assert_close(out.sparsity_loss, expected)
