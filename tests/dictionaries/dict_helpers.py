"""Helpers shared by the dictionaries tests (``conftest.py`` puts this directory on ``sys.path``)."""

from __future__ import annotations

import torch

import dictionaries as dl

ARCHS = ["relu", "topk", "batchtopk", "jumprelu"]
MODES = ["sae", "transcoder", "transcoder+skip"]

D_IN = 32
D_OUT = 24
N_ATOMS = 64
N_LATENTS = 128

# Per-architecture hyper-parameters that make the synthetic problem train well in a few hundred
# steps on the normalised scale (E||x|| = sqrt(32)).
ARCH_KWARGS = {
    "relu": dict(l1_coeff=0.3),
    "topk": dict(k=4),
    "batchtopk": dict(k=4),
    "jumprelu": dict(l0_coeff=0.5, bandwidth=0.05, initial_threshold=0.1),
}


class Synthetic:
    """``x = codes @ atoms`` with random unit atoms ``[64, 32]`` and sparse non-negative codes
    (each atom active with probability 3/64, magnitude U(0.5, 2)); ``y = x @ A`` is a linear
    read-out ``[.., 24]`` used as the transcoder target."""

    def __init__(self, n: int = 16384, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.atoms = torch.randn(N_ATOMS, D_IN, generator=g)
        self.atoms /= self.atoms.norm(dim=-1, keepdim=True)
        active = torch.rand(n, N_ATOMS, generator=g) < 3 / N_ATOMS
        codes = active * (torch.rand(n, N_ATOMS, generator=g) * 1.5 + 0.5)
        self.x = codes @ self.atoms
        self.A = torch.randn(D_IN, D_OUT, generator=g) / D_IN**0.5
        self.y = self.x @ self.A

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": self.x, "y": self.y}


def make_cfg(arch: str, mode: str = "sae", **overrides) -> dl.DictionaryConfig:
    kwargs = dict(ARCH_KWARGS[arch])
    if mode != "sae":
        kwargs["d_out"] = D_OUT
    if mode == "transcoder+skip":
        kwargs["skip_connection"] = True
    kwargs.update(overrides)
    return dl.DictionaryConfig(arch, d_in=D_IN, n_latents=N_LATENTS, **kwargs)


def make_spec(arch: str, mode: str = "sae", name: str | None = None, **overrides) -> dl.DictionarySpec:
    cfg = make_cfg(arch, mode, **overrides)
    target = None if mode == "sae" else "y"
    return dl.DictionarySpec(name or f"{arch}-{mode}", cfg, input_key="x", target_key=target)


def quick_train_cfg(steps: int, **overrides) -> dl.TrainConfig:
    # one learning rate for encoder and decoder: the synthetic problems here were tuned for it
    kwargs = dict(steps=steps, lr=3e-3, encoder_lr_scale=1.0, warmup_steps=max(steps // 20, 1), progress=False,
                  dead_after_tokens=256 * 50)
    kwargs.update(overrides)
    return dl.TrainConfig(**kwargs)
