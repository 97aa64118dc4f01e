"""A real llama.cpp server for the tests: llama-cpp-python's OpenAI-compatible ``llama_cpp.server``,
serving the embedded SmolLM2 GGUF on a free loopback port.

It runs from its own venv (``make servers``: ``benchmarks/_venvs/llamacpp``, built from source).
Tests marked ``server`` use it through the ``llama_server`` fixture; ``make test-servers`` runs them
with ``AUTOINTERP_REQUIRE_SERVER=1``, where a missing venv fails instead of skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / "benchmarks" / "_venvs" / "llamacpp" / "bin" / "python"
ALIAS = "smollm2-135m"
"""the model name the server answers to."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``with LlamaServer(gguf) as url:`` starts the server, waits until it answers, stops it after."""

    def __init__(self, gguf: Path, *, n_ctx: int = 4096, threads: int = 2, startup_s: float = 180.0,
                 log: Path | None = None):
        self.gguf, self.n_ctx, self.threads, self.startup_s = gguf, n_ctx, threads, startup_s
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        # all-position logits (--logits_all) for the echoed prompt log-probabilities of teacher forcing
        cmd = [str(VENV_PYTHON), "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.threads), "--logits_all", "true", "--seed", "0", "--verbose", "false"]
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode} before answering "
                                   f"(log: {self.log})")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"llama_cpp.server did not answer within {self.startup_s}s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def venv_ready() -> bool:
    return VENV_PYTHON.exists()


if __name__ == "__main__":  # manual use: python tests/llama_server.py GGUF  (serves until interrupted)
    with LlamaServer(Path(sys.argv[1])) as url:
        print(url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
