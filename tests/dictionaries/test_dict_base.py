"""Config validation, registry, bad inputs and files of :mod:`dictionaries.config`,
:mod:`dictionaries.base` and :mod:`dictionaries.io`."""

from __future__ import annotations

import json

import pytest
import torch

import dictionaries as dl
from dictionaries.base import Latents
from dict_helpers import ARCHS, D_IN, D_OUT, N_LATENTS, make_cfg


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        dl.DictionaryConfig("gated", d_in=8, n_latents=16)
    msg = str(err.value)
    assert "'gated'" in msg
    for arch in ARCHS:
        assert arch in msg


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_k_larger_than_n_latents_is_rejected(arch):
    with pytest.raises(ValueError, match=r"k=17 must be <= n_latents=16"):
        dl.DictionaryConfig(arch, d_in=8, n_latents=16, k=17)
    dl.DictionaryConfig(arch, d_in=8, n_latents=16, k=16)


def test_k_is_irrelevant_for_architectures_without_k():
    dl.DictionaryConfig("relu", d_in=8, n_latents=16, k=32)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(d_in=0, n_latents=16), "d_in"),
        (dict(d_in=8, n_latents=-1), "n_latents"),
        (dict(d_in=8, n_latents=16, d_out=0), "d_out"),
        (dict(d_in=8, n_latents=16, k=0), "k"),
        (dict(d_in=8.0, n_latents=16), "d_in"),
        (dict(d_in=8, n_latents=16, k_aux=0), "k_aux"),
        (dict(d_in=8, n_latents=16, bandwidth=0.0), "bandwidth"),
        (dict(d_in=8, n_latents=16, initial_threshold=-1.0), "initial_threshold"),
        (dict(d_in=8, n_latents=16, threshold_momentum=1.0), "threshold_momentum"),
        (dict(d_in=8, n_latents=16, l1_coeff=-1.0), "l1_coeff"),
    ],
)
def test_invalid_sizes_and_coefficients_are_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        dl.DictionaryConfig("topk", **kwargs)


def test_config_defaults_and_dict_round_trip():
    cfg = dl.DictionaryConfig("topk", d_in=8, n_latents=16, k=4)
    assert cfg.d_out == 8
    assert cfg.aux_k == 4  # d_in // 2
    assert dl.DictionaryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown DictionaryConfig fields"):
        dl.DictionaryConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("arch", ARCHS)
def test_wrong_width_says_expected_and_got(arch):
    model = dl.build(make_cfg(arch))
    expected = rf"x: expected last dimension {D_IN}, got tensor of shape \(4, 31\)"
    with pytest.raises(ValueError, match=expected):
        model(torch.randn(4, 31))
    with pytest.raises(ValueError, match=rf"expected last dimension {D_IN}"):
        model.encode(torch.randn(4, D_IN + 1))
    with pytest.raises(ValueError, match=rf"z: expected last dimension {N_LATENTS}"):
        model.decode(torch.randn(4, N_LATENTS - 1))
    with pytest.raises(ValueError, match=rf"target: expected last dimension {D_IN}"):
        model(torch.randn(4, D_IN), torch.randn(4, D_IN + 2))
    with pytest.raises(ValueError, match="leading dims"):
        model(torch.randn(4, D_IN), torch.randn(5, D_IN))
    with pytest.raises(ValueError, match="dead_mask"):
        model(torch.randn(4, D_IN), dead_mask=torch.zeros(3, dtype=torch.bool))


def test_transcoder_needs_a_target_and_skip_decode_needs_x():
    model = dl.build(make_cfg("topk", "transcoder+skip"))
    with pytest.raises(ValueError, match="needs a target"):
        model(torch.randn(4, D_IN))
    z = model.encode(torch.randn(4, D_IN))
    with pytest.raises(ValueError, match="skip connection"):
        model.decode(z)
    assert model.decode(z, torch.randn(4, D_IN)).shape == (4, D_OUT)


def test_registry_extension_point_and_duplicate_names():
    @dl.register("test-identity-relu")
    class Plain(dl.Dictionary):
        def activation(self, pre_BF):
            return Latents(dense=pre_BF.relu())

    try:
        cfg = dl.DictionaryConfig("test-identity-relu", d_in=4, n_latents=8)
        model = dl.build(cfg)
        assert isinstance(model, Plain) and model.arch == "test-identity-relu"
        assert model(torch.randn(3, 4)).sparsity_loss == 0
        with pytest.raises(ValueError, match="already registered"):
            dl.register("test-identity-relu")(type("Other", (Plain,), {}))
    finally:
        del dl.REGISTRY["test-identity-relu"]


def test_load_does_not_touch_global_rng_and_files_are_plain(tmp_path):
    model = dl.build(make_cfg("jumprelu"))
    dl.save(model, tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert cfg["arch"] == "jumprelu" and cfg["format_version"] == 1
    state = torch.get_rng_state()
    loaded = dl.load(tmp_path / "d")
    assert torch.equal(state, torch.get_rng_state())
    assert not loaded.training
    assert torch.equal(loaded.log_threshold, model.log_threshold)


def test_fold_scale_rejects_bad_scales():
    model = dl.build(make_cfg("relu"))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scales"):
            model.fold_scale(bad)
