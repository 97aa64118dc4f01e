"""The shape and hyper-parameters of one dictionary (:class:`DictionaryConfig`, serialised as
``cfg.json``) and the architecture registry that a config names: an architecture module registers
its class with ``@register("name")``; :func:`build` turns a config into a freshly initialised
instance of the class it names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from .base import Dictionary

__all__ = ["REGISTRY", "DictionaryConfig", "build", "register"]


REGISTRY: dict[str, type["Dictionary"]] = {}
"""Architecture name -> class. Filled by ``@register`` when an architecture module is imported
(the package ``__init__`` imports the built-in ones)."""

_D = TypeVar("_D", bound=type["Dictionary"])


def register(name: str) -> Callable[[_D], _D]:
    """Class decorator: make ``cls`` buildable as ``DictionaryConfig(arch=name, ...)``."""

    def decorate(cls: _D) -> _D:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} is already registered to {REGISTRY[name]!r}")
        REGISTRY[name] = cls
        cls.arch = name
        return cls

    return decorate


def build(cfg: "DictionaryConfig") -> "Dictionary":
    """Instantiate the architecture named by ``cfg.arch`` (freshly initialised weights)."""
    return REGISTRY[cfg.arch](cfg)


@dataclass
class DictionaryConfig:
    """Shape and hyper-parameters of one dictionary. Serialised as ``cfg.json``."""

    arch: str
    """Registered architecture name: one of ``REGISTRY`` ("relu", "topk", "batchtopk", "jumprelu")."""

    d_in: int
    """Width of the input activations ``x``."""

    n_latents: int
    """Number of latents ``F`` (dictionary size)."""

    d_out: int | None = None
    """Width of the reconstruction target. ``None`` means ``d_in`` (an SAE); a transcoder may differ."""

    k: int = 32
    """TopK / BatchTopK: active latents per token (BatchTopK: on average, ``k * batch`` per batch)."""

    k_aux: int | None = None
    """TopK / BatchTopK: dead latents used by the AuxK loss. ``None`` means ``d_in // 2`` (Gao et al.)."""

    aux_coeff: float = 1 / 32
    """TopK / BatchTopK: weight of the AuxK loss (Gao et al. use 1/32)."""

    l1_coeff: float = 5.0
    """ReLU: weight of ``sum_i |z_i| * ||W_dec_i||`` (on the normalised scale ``E||x|| = sqrt(d_in)``)."""

    l0_coeff: float = 1.0
    """JumpReLU: weight of the (straight-through) L0 penalty, on the same scale as ``recon_loss``."""

    bandwidth: float = 1e-3
    """JumpReLU: width ``eps`` of the rectangle kernel of the threshold's pseudo-derivative."""

    initial_threshold: float = 1e-3
    """JumpReLU: initial value of every threshold ``theta`` (must be > 0; stored as ``log theta``)."""

    threshold_momentum: float = 0.99
    """BatchTopK: EMA momentum of the learned inference threshold (0 = last batch only)."""

    skip_connection: bool = False
    """Add a learned linear path ``x @ W_skip`` to the reconstruction (skip transcoder)."""

    normalize_decoder: bool = True
    """Keep decoder rows at unit norm during training (the trainer projects gradients and renormalises)."""

    def __post_init__(self) -> None:
        if self.arch not in REGISTRY:
            raise ValueError(f"unknown arch {self.arch!r}; valid architectures: {sorted(REGISTRY)}")
        if self.d_out is None:
            self.d_out = self.d_in
        for name in ("d_in", "d_out", "n_latents", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.k_aux is not None and (not isinstance(self.k_aux, int) or self.k_aux <= 0):
            raise ValueError(f"k_aux must be a positive integer or None, got {self.k_aux!r}")
        for name in ("aux_coeff", "l1_coeff", "l0_coeff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth!r}")
        if self.initial_threshold <= 0:
            raise ValueError(f"initial_threshold must be > 0, got {self.initial_threshold!r}")
        if not 0 <= self.threshold_momentum < 1:
            raise ValueError(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum!r}")
        REGISTRY[self.arch].validate_config(self)

    @property
    def aux_k(self) -> int:
        """The resolved ``k_aux`` (``d_in // 2`` by default, at least 1, at most ``n_latents``)."""
        k_aux = self.k_aux if self.k_aux is not None else max(self.d_in // 2, 1)
        return min(k_aux, self.n_latents)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``DictionaryConfig(**cfg.to_dict()) == cfg``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DictionaryConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DictionaryConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)
