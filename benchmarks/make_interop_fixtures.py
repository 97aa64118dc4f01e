"""Write the interop fixtures: tiny random-weight dictionaries saved by SAE Lens and sparsify.

Run with a peer venv's python (made by ``benchmarks/peers/setup_peers.sh``); the script imports
only that peer package, torch, safetensors and the standard library::

    benchmarks/_venvs/saelens/bin/python  benchmarks/make_interop_fixtures.py --package saelens
    benchmarks/_venvs/sparsify/bin/python benchmarks/make_interop_fixtures.py --package sparsify

For each dictionary it writes ``tests/fixtures/interop/<package>/<name>/``: the files that the
package's own save method writes (SAE Lens ``save_model``: ``cfg.json`` + ``sae_weights.safetensors``;
sparsify ``save_to_disk``: ``cfg.json`` + ``sae.safetensors``) plus ``reference.safetensors``
holding a fixed input ``x [8, d_in]`` and the package's own outputs for it::

    latents         [8, F]      the package's feature activations (dense)
    reconstruction  [8, d_out]  the package's reconstruction (skip path included)

and one ``tests/fixtures/interop/<package>/versions.json`` naming the versions used.

Weights are random but deliberately awkward: non-zero biases, decoder rows of unequal norm,
so that a loader which ignores ``b_dec`` subtraction, decoder-norm rescaling or the skip
path fails the comparison.

``--check-export DIR`` (SAE Lens venv) instead loads a folder written by our
``dictionaries.interop.export_saelens`` with ``SAE.load_from_disk`` and checks that SAE Lens
reproduces ``DIR/reference.safetensors`` (written next to it by our library); exits 1 if not.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "interop"
D_IN = 16
N_TOKENS = 8


def _randomise(params: dict[str, torch.Tensor], gen: torch.Generator) -> None:
    """Fill encoder/decoder weights and biases in place with seeded, awkward random values."""
    with torch.no_grad():
        for name, p in params.items():
            if name in ("W_enc", "encoder.weight"):
                fan_in = D_IN
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif name == "W_dec":  # rows = latents in both packages; give them unequal norms
                rows = torch.randn(p.shape, generator=gen)
                rows /= rows.norm(dim=-1, keepdim=True)
                p.copy_(rows * (0.5 + 1.5 * torch.rand(p.shape[0], 1, generator=gen)))
            elif name == "W_skip":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name in ("b_enc", "encoder.bias", "b_dec"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def _write_reference(out: Path, x: torch.Tensor, latents: torch.Tensor, recon: torch.Tensor) -> None:
    save_file(
        {
            "x": x.contiguous(),
            "latents": latents.detach().contiguous(),
            "reconstruction": recon.detach().contiguous(),
        },
        str(out / "reference.safetensors"),
    )
    print(f"wrote {out}: latents {tuple(latents.shape)}, "
          f"L0 {(latents != 0).sum(-1).float().mean():.2f}")


# ------------------------------------------------------------------------------------------
# SAE Lens
# ------------------------------------------------------------------------------------------


def make_saelens(root: Path = FIXTURES) -> None:
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(N_TOKENS, D_IN, generator=gen)
    saes = {
        # ReLU; b_dec subtracted from the input (SAE Lens default)
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=48)),
        # TopK whose selection and decoding rescale by decoder norms
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=48, k=6, rescale_acts_by_decoder_norm=True)),
        # JumpReLU without b_dec subtraction
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=32, apply_b_dec_to_input=False)),
    }
    for name, sae in saes.items():
        _randomise(dict(sae.named_parameters()), gen)
        if name == "jumprelu":
            with torch.no_grad():
                sae.threshold.copy_(0.05 + 0.5 * torch.rand(sae.threshold.shape, generator=gen))
        out = root / "saelens" / name
        sae.save_model(out)
        with torch.no_grad():
            latents = sae.encode(x)
            recon = sae.decode(latents)
            assert torch.allclose(recon, sae(x)), "SAE Lens forward != decode(encode)"
        _write_reference(out, x, latents, recon)
    _write_versions(root, "saelens", "sae-lens")


def check_export(folder: Path) -> int:
    """Load our exported ``folder`` with SAE Lens and compare against ``reference.safetensors``."""
    from sae_lens import SAE

    ref = load_file(str(folder / "reference.safetensors"))
    sae = SAE.load_from_disk(folder)
    with torch.no_grad():
        latents = sae.encode(ref["x"])
        recon = sae(ref["x"])  # forward: a skip transcoder adds its skip path only here
    d_lat = (latents - ref["latents"]).abs().max().item()
    d_rec = (recon - ref["reconstruction"]).abs().max().item()
    ok = d_lat <= 1e-5 and d_rec <= 1e-5
    print(json.dumps({
        "folder": str(folder),
        "sae_lens_class": type(sae).__name__,
        "sae_lens_version": version("sae-lens"),
        "max_abs_diff_latents": d_lat,
        "max_abs_diff_reconstruction": d_rec,
        "ok": ok,
    }))
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------
# sparsify
# ------------------------------------------------------------------------------------------


def make_sparsify(root: Path = FIXTURES) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    gen = torch.Generator().manual_seed(4321)
    x = torch.randn(N_TOKENS, D_IN, generator=gen)
    coders = {
        "topk": SparseCoder(D_IN, SparseCoderConfig(num_latents=64, k=8)),
        "skip_transcoder": SparseCoder(
            D_IN, SparseCoderConfig(num_latents=32, k=4, transcode=True, skip_connection=True)
        ),
    }
    for name, coder in coders.items():
        _randomise(dict(coder.named_parameters()), gen)
        out = root / "sparsify" / name
        coder.save_to_disk(out)
        with torch.no_grad():
            top_acts, top_indices, _ = coder.encode(x)
            latents = torch.zeros(N_TOKENS, coder.num_latents).scatter(-1, top_indices, top_acts)
            recon = coder(x).sae_out  # forward adds the skip path, decode alone does not
        _write_reference(out, x, latents, recon)
    _write_versions(root, "sparsify", "eai-sparsify")


def _write_versions(root: Path, package_dir: str, dist_name: str) -> None:
    versions = {"package": dist_name, "version": version(dist_name), "torch": torch.__version__,
                "safetensors": version("safetensors")}
    (root / package_dir / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(versions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", choices=["saelens", "sparsify"])
    parser.add_argument("--check-export", type=Path, metavar="DIR",
                        help="load DIR (our export_saelens output) with SAE Lens and compare")
    parser.add_argument("--out", type=Path, default=FIXTURES,
                        help="where --package writes its folders (default: the test fixtures)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check_export is not None:
        return check_export(args.check_export)
    if args.package == "saelens":
        make_saelens(args.out)
    elif args.package == "sparsify":
        make_sparsify(args.out)
    else:
        parser.error("give --package or --check-export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
