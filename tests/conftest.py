"""Shared fixtures: a tiny random-weight Llama (real SmolLM2 tokenizer) and the real embedded model.

Unit tests run on the tiny model; tests marked ``real_model`` run the embedded SmolLM2-135M
(fetched once into the user cache by ``make test``'s set-up).
"""

from __future__ import annotations

import pytest
import torch

import autointerp  # noqa: F401  (sets offline mode before transformers is imported)

from helpers import make_tiny_model


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def real_model():
    from autointerp.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The real SmolLM2 tokenizer (from the embedded model's converted folder)."""
    from autointerp.models import resolve

    return resolve("smollm2-135m")[0]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from autointerp.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture
def text_corpus(tmp_path):
    """A small folder of plain-text documents with known content."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(6):
        (d / f"doc{i}.txt").write_text(
            f"Document {i}. " + " ".join(f"The quick brown fox {j} jumps over the lazy dog." for j in range(40)))
    return d


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The base URL (``http://127.0.0.1:PORT/v1``) of a real llama.cpp server (llama-cpp-python)
    serving the embedded SmolLM2 GGUF, for the tests marked ``server``. Skips when its venv is
    missing (``make servers``), except under ``AUTOINTERP_REQUIRE_SERVER=1`` (``make test-servers``),
    where that fails."""
    import os

    from llama_server import LlamaServer, venv_ready

    from autointerp.models.embedded import SMOLLM2_GGUF

    if not venv_ready():
        message = "llama-cpp-python venv missing: run `make servers`"
        if os.environ.get("AUTOINTERP_REQUIRE_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with LlamaServer(SMOLLM2_GGUF.ensure(), log=log) as url:
        yield url
