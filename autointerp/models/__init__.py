"""Model loading (offline), embedded assets and TransformerLens hook points."""

from autointerp.models.embedded import ASSETS, MODEL_ALIASES, cache_root
from autointerp.models.hookpoints import (
    HookPointError, capture, hookpoint_layer, hookpoint_names, hookpoint_shapes, validate_hookpoints)
from autointerp.models.loader import DTYPES, LoadedModel, ModelNotFoundError, load_model, resolve

__all__ = [
    "ASSETS", "DTYPES", "MODEL_ALIASES", "HookPointError", "LoadedModel", "ModelNotFoundError",
    "cache_root", "capture", "hookpoint_layer", "hookpoint_names", "hookpoint_shapes", "load_model",
    "resolve", "validate_hookpoints",
]
