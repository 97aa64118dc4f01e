"""Standalone sparse dictionary library: sparse autoencoders and transcoders.

Depends only on torch, einops, safetensors and tqdm (plotly optionally, for
:func:`metrics.density_histogram_figure`); never on ``autointerp`` or TransformerLens.

* :mod:`.config` - :class:`DictionaryConfig` and the architecture registry (:func:`register`,
  :func:`build`);
* :mod:`.base` - :class:`Dictionary` (``encode`` / ``decode`` / ``forward -> DictionaryOutput``).
* Architectures, one file each: :mod:`.relu`, :mod:`.topk`, :mod:`.batchtopk`, :mod:`.jumprelu`.
* :mod:`.train_config` - :class:`DictionarySpec`, :class:`TrainConfig` and the results and errors
  of training;
* :mod:`.training` - :class:`Trainer` for several dictionaries over one batch stream, with
  checkpoints, exact resume, dead-latent tracking and data parallelism.
* :mod:`.data` - the :class:`BatchSource` protocol and :class:`TensorBatchSource`.
* :mod:`.io` - :func:`save` / :func:`load` (``cfg.json`` + ``weights.safetensors``).
* :mod:`.metrics` - FVU, L0, firing densities, density histogram.
"""

from . import batchtopk, jumprelu, relu, topk  # noqa: F401  (register the built-in architectures)
from .base import Dictionary, DictionaryOutput, Latents
from .config import REGISTRY, DictionaryConfig, build, register
from .batchtopk import BatchTopKDictionary
from .data import BatchSource, TensorBatchSource
from .io import load, save
from .jumprelu import JumpReLUDictionary
from .metrics import (
    FVUAccumulator,
    dead_fraction,
    dense_fraction,
    density_histogram_figure,
    firing_density,
    fvu,
    l0,
)
from .relu import ReLUDictionary
from .topk import TopKDictionary
from .train_config import (
    DictionarySpec,
    StepInfo,
    TrainConfig,
    TrainedDictionary,
    TrainingDivergedError,
)
from .training import Trainer, geometric_median

__all__ = [
    "REGISTRY",
    "BatchSource",
    "BatchTopKDictionary",
    "Dictionary",
    "DictionaryConfig",
    "DictionaryOutput",
    "DictionarySpec",
    "FVUAccumulator",
    "JumpReLUDictionary",
    "Latents",
    "ReLUDictionary",
    "StepInfo",
    "TensorBatchSource",
    "TopKDictionary",
    "TrainConfig",
    "TrainedDictionary",
    "Trainer",
    "TrainingDivergedError",
    "build",
    "dead_fraction",
    "dense_fraction",
    "density_histogram_figure",
    "firing_density",
    "fvu",
    "geometric_median",
    "l0",
    "load",
    "register",
    "save",
]
