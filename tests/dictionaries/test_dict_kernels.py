"""The sparse training path (dictionaries.kernels) against plain autograd through dense
pre-activations: same values, same gradients, same training trajectory, bounded memory."""

from __future__ import annotations

import pytest
import torch

import dictionaries as dl
from dictionaries.kernels import Selection, decode_selected, selected_pre_activations
from dict_helpers import D_IN, MODES, N_LATENTS, make_cfg, make_spec, quick_train_cfg


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _selections(pre_NF: torch.Tensor, k: int) -> dict[str, Selection]:
    n, f = pre_NF.shape
    _, idx_NK = pre_NF.topk(k, dim=-1, sorted=False)
    flat = pre_NF.reshape(-1).topk(k * n).indices.sort().values
    return {"per_token": Selection.per_token(idx_NK, f), "flat": Selection.from_flat(flat, n, f)}


@pytest.mark.parametrize("layout", ["per_token", "flat"])
def test_selected_pre_activations_value_and_gradients_equal_autograd(layout):
    torch.manual_seed(0)
    n, d, f, k = 37, 20, 90, 6
    x0, W0, b0 = torch.randn(n, d), torch.randn(d, f), torch.randn(f)
    sel = _selections(torch.addmm(b0, x0, W0), k)[layout]
    upstream_M = torch.randn(sel.latent_M.shape[0])

    x, W, b = _leaf(x0), _leaf(W0), _leaf(b0)
    ref_M = (x @ W + b)[sel.token_M, sel.latent_M]
    (ref_M * upstream_M).sum().backward()
    ref_grads = [t.grad for t in (x, W, b)]

    x, W, b = _leaf(x0), _leaf(W0), _leaf(b0)
    with torch.no_grad():
        values_M = torch.addmm(b, x, W)[sel.token_M, sel.latent_M]
    out_M = selected_pre_activations(values_M, x, W, b, sel)
    (out_M * upstream_M).sum().backward()

    torch.testing.assert_close(out_M, ref_M, atol=1e-5, rtol=1e-5)
    for name, ref, t in zip(("x", "W_enc", "b_enc"), ref_grads, (x, W, b)):
        torch.testing.assert_close(t.grad, ref, atol=1e-5, rtol=1e-5, msg=name)
        assert t.grad.stride() == t.stride(), name


def test_selected_pre_activations_skips_unneeded_gradients():
    torch.manual_seed(0)
    x, W, b = torch.randn(8, 5), _leaf(torch.randn(5, 12)), _leaf(torch.randn(12))
    sel = _selections(torch.addmm(b, x, W).detach(), 3)["per_token"]
    out = selected_pre_activations(torch.addmm(b, x, W).detach()[sel.token_M, sel.latent_M], x, W, b, sel)
    out.sum().backward()
    assert x.grad is None and W.grad is not None and b.grad is not None


def test_selection_layouts_agree():
    torch.manual_seed(0)
    idx_NK = torch.stack([torch.randperm(N_LATENTS)[:4].sort().values for _ in range(6)])
    per_token = Selection.per_token(idx_NK, N_LATENTS)
    flat = Selection.from_flat((torch.arange(6)[:, None] * N_LATENTS + idx_NK).reshape(-1), 6, N_LATENTS)
    for field in ("token_M", "latent_M", "offsets_N"):
        assert torch.equal(getattr(per_token, field), getattr(flat, field)), field
    values_M = torch.rand(24)
    dense = per_token.to_dense(values_M)
    assert torch.equal(dense, torch.zeros(6, N_LATENTS).scatter(-1, idx_NK, values_M.reshape(6, 4)))
    W_dec = torch.randn(N_LATENTS, 7)
    torch.testing.assert_close(decode_selected(values_M, W_dec, per_token), dense @ W_dec)
    assert torch.equal(per_token.fired(values_M), (dense != 0).any(0))


def _forward_and_grads(model: dl.Dictionary, sparse: bool, x, y, dead, **kwargs):
    model.use_sparse_kernels = sparse
    model.zero_grad(set_to_none=True)
    out = model(x, y, dead_mask=dead, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("mode", MODES)
def test_sparse_forward_and_gradients_equal_reference(arch, mode, synthetic):
    torch.manual_seed(0)
    model = dl.build(make_cfg(arch, mode, k_aux=8))
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1)  # some selected pre-activations negative: ReLU masks them
        if model.W_skip is not None:
            model.W_skip.normal_(0, 0.1)
    x = synthetic.x[:48].reshape(4, 12, D_IN)
    y = None if mode == "sae" else synthetic.y[:48].reshape(4, 12, -1)
    dead = torch.zeros(N_LATENTS, dtype=torch.bool)
    dead[::3] = True
    ref, ref_grads = _forward_and_grads(model, False, x, y, dead)
    if arch == "batchtopk":
        model.threshold.fill_(-1.0)  # the reference step updated it; start the sparse one equal
    out, grads = _forward_and_grads(model, True, x, y, dead)

    assert out.auxk_loss > 0
    for name in dl.DictionaryOutput._fields:
        a, b = getattr(out, name), getattr(ref, name)
        if a.dtype == torch.bool:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_dense_latents_false_drops_only_the_latents(arch, synthetic):
    torch.manual_seed(0)
    model = dl.build(make_cfg(arch))
    x = synthetic.x[:32]
    full = model(x)
    lean = model(x, dense_latents=False)
    assert lean.latents is None
    for name in dl.DictionaryOutput._fields:
        if name != "latents":
            assert torch.equal(getattr(full, name), getattr(lean, name)), name
    assert torch.equal(full.fired, (full.latents != 0).any(0))
    assert float(full.l0) == pytest.approx(float((full.latents != 0).sum(-1).float().mean()))


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_architectures_without_selection_keep_dense_latents(arch, synthetic):
    out = dl.build(make_cfg(arch))(synthetic.x[:16], dense_latents=False)
    assert out.latents is not None and out.latents.shape == (16, N_LATENTS)


@pytest.mark.parametrize("arch,mode", [("topk", "sae"), ("topk", "transcoder+skip"), ("batchtopk", "sae")])
def test_training_trajectory_equals_reference(arch, mode, synthetic, tmp_path, monkeypatch):
    """Twelve Trainer steps, with dead latents (hence AuxK) on most steps: the sparse path
    follows the reference's losses and ends at the same weights, to float rounding."""
    runs = {}
    for sparse in (False, True):
        monkeypatch.setattr(dl.Dictionary, "use_sparse_kernels", sparse)
        losses: list[float] = []
        aux: list[float] = []

        def record(info: dl.StepInfo) -> None:
            losses.append(info.outputs["d"].loss.item())
            aux.append(info.outputs["d"].auxk_loss.item())

        cfg = quick_train_cfg(12, dead_after_tokens=256)
        res = dl.Trainer([make_spec(arch, mode, name="d")], cfg, tmp_path / str(sparse)).train(
            dl.TensorBatchSource(synthetic.tensors(), 256), on_step=record)
        runs[sparse] = (torch.tensor(losses), torch.tensor(aux), res["d"].dictionary.state_dict())
    (loss_ref, aux_ref, sd_ref), (loss, aux, sd) = runs[False], runs[True]
    assert (aux_ref > 0).sum() >= 6  # AuxK really ran on most steps
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, aux_ref, atol=1e-5, rtol=1e-5)
    for key in sd_ref:
        torch.testing.assert_close(sd[key], sd_ref[key], atol=1e-4, rtol=1e-4, msg=key)


def test_sparse_step_allocates_nothing_of_size_n_k_d():
    """At a benchmark-like size no single allocation reaches ``N * k * d_in`` floats (what
    gathering a [N, k, d] tensor would take); the largest ones are [N, F] and [d, F]."""
    torch.manual_seed(0)
    n, d, f, k = 1024, 576, 4608, 32
    model = dl.build(dl.DictionaryConfig("topk", d_in=d, n_latents=f, k=k))
    x = torch.randn(n, d)
    dead = torch.zeros(f, dtype=torch.bool)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x, dead_mask=dead, dense_latents=False)
        out.loss.backward()
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert biggest <= 4 * max(n * f, d * f) < 4 * n * k * d, biggest


@pytest.mark.parametrize("private_op", [True, False])
def test_decode_selected_value_and_gradients_equal_autograd(private_op, monkeypatch):
    """Both ways of computing ``grad acts`` (ATen's per-sample-weight kernel, chunked gathers)."""
    import dictionaries.kernels as kernels

    if not private_op:
        monkeypatch.setattr(kernels, "_PER_SAMPLE_WEIGHTS_BACKWARD", None)
        monkeypatch.setattr(kernels, "_CHUNK", 7)  # several chunks, a ragged last one
    torch.manual_seed(0)
    n, f, o, k = 9, 30, 11, 4
    idx_NK = torch.stack([torch.randperm(f)[:k] for _ in range(n)])
    sel = Selection.per_token(idx_NK, f)
    acts0, W0, upstream = torch.rand(n * k), torch.randn(f, o), torch.randn(n, o)

    acts, W = _leaf(acts0), _leaf(W0)
    ref = torch.zeros(n, f).scatter(-1, idx_NK, acts.reshape(n, k)) @ W
    (ref * upstream).sum().backward()
    ref_grads = (acts.grad, W.grad)

    acts, W = _leaf(acts0), _leaf(W0)
    out = decode_selected(acts, W, sel)
    (out * upstream).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts.grad, ref_grads[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(W.grad, ref_grads[1], atol=1e-5, rtol=1e-5)
