"""SAE Lens / sparsify interop of :mod:`dictionaries.interop`.

The fixtures in ``tests/fixtures/interop/<package>/<name>/`` were written by the packages
themselves (``benchmarks/make_interop_fixtures.py``, run in the peer venvs; versions in
``<package>/versions.json``), with ``reference.safetensors`` holding an input ``x`` and the
package's own latents and reconstruction for it. Tolerance: ``atol = rtol = 1e-5`` (float32
weights; our conversion folds biases and norms in float64, so results differ by rounding only).

The tests marked ``peers`` run the real packages in their own virtual envs (``make peers``:
``benchmarks/peers/setup_peers.sh``): the packages write their files now, in this run, and load
ours. ``make test-slow`` runs them with ``AUTOINTERP_REQUIRE_PEERS=1``: a missing env fails there
instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dictionaries as dl
from dictionaries.interop import detect_format, export_saelens, load_any, load_saelens, load_sparsify

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "interop"
VENVS = ROOT / "benchmarks" / "_venvs"
SCRIPT = ROOT / "benchmarks" / "make_interop_fixtures.py"
TOL = dict(atol=1e-5, rtol=1e-5)

FIXTURE_ARCH = {
    "saelens/standard": ("relu", False),
    "saelens/topk": ("topk", False),
    "saelens/jumprelu": ("jumprelu", False),
    "sparsify/topk": ("topk", False),
    "sparsify/skip_transcoder": ("topk", True),
}


def _outputs(d: dl.Dictionary, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = d(x, target=torch.zeros(*x.shape[:-1], d.cfg.d_out))
    return out.latents, out.x_hat


def peer_python(package: str) -> Path:
    """The python of the peer package's virtual env; skip (or fail, with
    ``AUTOINTERP_REQUIRE_PEERS=1``) when it is missing."""
    python = VENVS / package / "bin" / "python"
    if not python.exists():
        msg = f"{package} venv missing ({python}): run `make peers`"
        if os.environ.get("AUTOINTERP_REQUIRE_PEERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return python


def _copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name.replace("/", "_")
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


# ---- the packages' own outputs ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURE_ARCH))
def test_loaded_fixture_reproduces_the_package(name):
    ref = load_file(str(FIXTURES / name / "reference.safetensors"))
    d = load_any(FIXTURES / name)
    arch, skip = FIXTURE_ARCH[name]
    assert (d.cfg.arch, d.cfg.skip_connection) == (arch, skip)
    assert not d.training
    latents, x_hat = _outputs(d, ref["x"])
    torch.testing.assert_close(latents, ref["latents"], **TOL)
    torch.testing.assert_close(x_hat, ref["reconstruction"], **TOL)
    assert torch.equal(latents != 0, ref["latents"] != 0)  # same active set, not just close values


def test_fixture_versions_are_recorded():
    assert json.loads((FIXTURES / "saelens" / "versions.json").read_text())["package"] == "sae-lens"
    assert json.loads((FIXTURES / "sparsify" / "versions.json").read_text())["package"] == "eai-sparsify"


@pytest.mark.parametrize(
    "name, cfg_change",
    [
        ("saelens/standard", {"apply_b_dec_to_input": False}),
        ("saelens/topk", {"rescale_acts_by_decoder_norm": False}),
        ("saelens/jumprelu", {"apply_b_dec_to_input": True}),
        ("sparsify/topk", {"transcode": True}),
    ],
)
def test_fixtures_exercise_each_conversion(name, cfg_change, tmp_path):
    """Flipping a setting that the loader converts must break the match: the fixtures are
    awkward enough (non-zero biases, unequal decoder norms) that a loader ignoring it fails."""
    folder = _copy_fixture(name, tmp_path)
    _edit_json(folder / "cfg.json", **cfg_change)
    ref = load_file(str(folder / "reference.safetensors"))
    latents, x_hat = _outputs(load_any(folder), ref["x"])
    assert not torch.allclose(x_hat, ref["reconstruction"], **TOL)


def test_sparsify_skip_path_matters(tmp_path):
    folder = _copy_fixture("sparsify/skip_transcoder", tmp_path)
    ref = load_file(str(folder / "reference.safetensors"))
    d = load_sparsify(folder)
    with torch.no_grad():
        d.W_skip.zero_()
    _, x_hat = _outputs(d, ref["x"])
    assert not torch.allclose(x_hat, ref["reconstruction"], **TOL)


def test_detect_format(tmp_path):
    assert detect_format(FIXTURES / "saelens" / "topk") == "saelens"
    assert detect_format(FIXTURES / "sparsify" / "topk") == "sparsify"
    ours = dl.save(dl.build(dl.DictionaryConfig("topk", d_in=8, n_latents=16, k=4)), tmp_path / "ours")
    assert detect_format(ours) == "dictionaries"
    assert isinstance(load_any(ours), dl.TopKDictionary)
    with pytest.raises(ValueError, match="not a dictionaries, SAE Lens or sparsify folder"):
        detect_format(tmp_path)


# ---- normalize_activations ------------------------------------------------------------------


@pytest.mark.parametrize("via", ["argument", "activation_scaler.json"])
def test_expected_average_only_in_is_folded(via, tmp_path):
    """An SAE trained on ``x * s``: our loaded dictionary takes raw ``x`` and returns raw-scale
    reconstructions, i.e. latents(x) = sae(x * s) and x_hat(x) = sae_x_hat(x * s) / s."""
    s = 2.5
    folder = _copy_fixture("saelens/standard", tmp_path)
    _edit_json(folder / "cfg.json", normalize_activations="expected_average_only_in")
    if via == "argument":
        d = load_saelens(folder, norm_scaling_factor=s)
    else:
        (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))
        d = load_saelens(folder)
    plain = load_saelens(FIXTURES / "saelens" / "standard")
    x = torch.randn(16, plain.cfg.d_in)
    latents, x_hat = _outputs(d, x)
    latents_s, x_hat_s = _outputs(plain, x * s)
    torch.testing.assert_close(latents, latents_s, **TOL)
    torch.testing.assert_close(x_hat, x_hat_s / s, **TOL)
    assert float(d.folded_in_scale) == s


# ---- unsupported settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cfg_change, message",
    [
        ("saelens/standard", {"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ("saelens/standard", {"normalize_activations": "constant_norm_rescale"}, "'constant_norm_rescale'"),
        ("saelens/topk", {"normalize_activations": "covariance_whitening"}, "'covariance_whitening'"),
        ("saelens/standard", {"normalize_activations": "expected_average_only_in"}, "norm_scaling_factor"),
        ("saelens/standard", {"architecture": "gated"}, "architecture 'gated' is not supported"),
        ("saelens/standard", {"reshape_activations": "weird"}, "reshape_activations='weird'"),
        ("sparsify/topk", {"activation": "groupmax"}, "activation='groupmax'"),
        ("sparsify/topk", {"signed": True}, "signed=True"),
    ],
)
def test_unsupported_setting_raises_naming_it(name, cfg_change, message, tmp_path):
    folder = _copy_fixture(name, tmp_path)
    _edit_json(folder / "cfg.json", **cfg_change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_any(folder)


def test_jumprelu_thresholds_of_mixed_sign_raise(tmp_path):
    folder = _copy_fixture("saelens/jumprelu", tmp_path)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["threshold"][:3] = torch.tensor([0.0, -0.1, 0.0])
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="3 JumpReLU thresholds are <= 0"):
        load_saelens(folder)


def test_jumprelu_all_zero_thresholds_load_as_relu(tmp_path):
    folder = _copy_fixture("saelens/jumprelu", tmp_path)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["threshold"].zero_()
    save_file(weights, str(folder / "sae_weights.safetensors"))
    d = load_saelens(folder)
    assert d.cfg.arch == "relu"
    x = load_file(str(folder / "reference.safetensors"))["x"]
    pre = x @ weights["W_enc"] + weights["b_enc"]  # this fixture has apply_b_dec_to_input=False
    torch.testing.assert_close(_outputs(d, x)[0], torch.relu(pre), **TOL)


# ---- export_saelens ----------------------------------------------------------------------


def _random_dictionary(arch: str, seed: int, **kwargs) -> dl.Dictionary:
    torch.manual_seed(seed)
    cfg = dl.DictionaryConfig(arch, d_in=16, n_latents=48, k=6, **kwargs)
    d = dl.build(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "jumprelu":
            d.log_threshold.copy_(torch.empty(48).uniform_(-3.0, 0.0))
    d.fold_scale(1.7, 0.6 if kwargs.get("d_out") else None)  # scale buffers must round-trip too
    return d.eval()


ROUND_TRIP = {
    "relu": dict(),
    "topk": dict(),
    "jumprelu": dict(),
    "relu-skip-transcoder": dict(d_out=12, skip_connection=True),
    "jumprelu-transcoder": dict(d_out=12),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIP))
def test_export_then_load_saelens_round_trips(case, tmp_path):
    arch = case.split("-")[0]
    d = _random_dictionary(arch, seed=len(case), **ROUND_TRIP[case])
    back = load_saelens(export_saelens(d, tmp_path / case))
    assert back.cfg == d.cfg
    theirs, ours = back.state_dict(), d.state_dict()
    assert theirs.keys() == ours.keys()
    for name, value in ours.items():
        if name == "log_threshold":
            # SAE Lens stores threshold = exp(log_threshold) in float32; log of that is not
            # always the same float32 (several log values share one threshold), but the
            # threshold itself comes back to within one float32 ulp.
            torch.testing.assert_close(theirs[name].exp(), value.exp(), atol=0, rtol=2.4e-7)
        else:
            assert torch.equal(theirs[name], value), name
    x = torch.randn(64, 16)
    for a, b in zip(_outputs(back, x), _outputs(d, x)):
        assert torch.equal(a, b)


def test_batchtopk_exports_as_jumprelu_with_its_threshold(tmp_path):
    d = _random_dictionary("batchtopk", seed=3)
    with pytest.raises(ValueError, match="no inference threshold yet"):
        export_saelens(d, tmp_path / "untrained")
    d.threshold.fill_(0.05)
    back = load_saelens(export_saelens(d, tmp_path / "btk"))
    assert back.cfg.arch == "jumprelu"
    x = torch.randn(64, 16)
    for a, b in zip(_outputs(back, x), _outputs(d, x)):
        torch.testing.assert_close(a, b, **TOL)


def test_topk_transcoder_cannot_be_exported(tmp_path):
    d = dl.build(dl.DictionaryConfig("topk", d_in=16, n_latents=48, k=6, d_out=12))
    with pytest.raises(ValueError, match="SAE Lens has no TopK transcoder"):
        export_saelens(d, tmp_path / "tc")


@pytest.mark.peers
@pytest.mark.parametrize("case", ["relu", "topk", "jumprelu", "relu-skip-transcoder"])
def test_saelens_itself_loads_our_export(case, tmp_path):
    """Runs ``make_interop_fixtures.py --check-export`` in the SAE Lens venv: SAE Lens's own
    ``SAE.load_from_disk`` must reproduce our latents and reconstruction."""
    arch = case.split("-")[0]
    d = _random_dictionary(arch, seed=11, **ROUND_TRIP[case])
    folder = export_saelens(d, tmp_path / case)
    x = torch.randn(8, 16)
    latents, x_hat = _outputs(d, x)
    save_file({"x": x, "latents": latents, "reconstruction": x_hat}, str(folder / "reference.safetensors"))
    proc = subprocess.run(
        [str(peer_python("saelens")), str(SCRIPT), "--check-export", str(folder)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True


@pytest.mark.peers
@pytest.mark.parametrize("package", ["saelens", "sparsify"])
def test_files_the_package_writes_now_load_with_its_outputs(package, tmp_path):
    """The real package (its env's version) saves its dictionaries in this run, with its own outputs
    on a fixed input; our loader must reproduce them (not only the stored fixtures)."""
    proc = subprocess.run([str(peer_python(package)), str(SCRIPT), "--package", package, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [n for n in FIXTURE_ARCH if n.startswith(package + "/")]
    for name in names:
        ref = load_file(str(tmp_path / name / "reference.safetensors"))
        d = load_any(tmp_path / name)
        assert (d.cfg.arch, d.cfg.skip_connection) == FIXTURE_ARCH[name]
        latents, x_hat = _outputs(d, ref["x"])
        torch.testing.assert_close(latents, ref["latents"], **TOL)
        torch.testing.assert_close(x_hat, ref["reconstruction"], **TOL)
        assert torch.equal(latents != 0, ref["latents"] != 0)
    written = json.loads((tmp_path / package / "versions.json").read_text())
    assert written["package"] == {"saelens": "sae-lens", "sparsify": "eai-sparsify"}[package]
