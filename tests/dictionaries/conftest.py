"""Fixtures for the dictionaries tests.

Torch runs on one thread: the test machine is shared. The parent ``tests/conftest.py`` sets two
threads in an autouse fixture, so ours (more local, hence run after it) sets one again.

The project runs pytest with ``--import-mode=importlib`` and only ``tests/`` on ``sys.path``, so
this directory is added to make ``dict_helpers`` importable from the test modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from dict_helpers import Synthetic  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def synthetic() -> Synthetic:
    return Synthetic()
