"""The sharded on-disk activation cache: writing it crash-safely, and reading it back.

Layout, one folder per hook point::

    <out>/<hookpoint>/cache.json             the identity of the cache being written
    <out>/<hookpoint>/shard-00000.safetensors
    <out>/<hookpoint>/manifest.json          written last: the cache is complete

A shard holds the activations of ``shard_contexts`` consecutive contexts at their kept
positions (``activations [rows, d]``) plus, per row, the token id, the document index,
the token position in the document, the character offset, the global context index and
the position in the context; and the token ids of its contexts (``contexts [n, ctx_len]``),
so that a window around any activation can be shown as text.

Crash safety: every shard is written to a temporary name, fsynced and renamed; the
manifest is written last in the same way. A job killed at any moment and started again
with the same command recomputes only the shards that are missing, and since a shard is
always computed from the same batches, the result is byte-identical to an uninterrupted
run. Under ``torchrun`` shard ``s`` is computed by rank ``s % world_size`` (the shards are
the same as in a single-process run); rank 0 writes the manifest after a barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor
from tqdm.auto import tqdm

from autointerp import __version__
from autointerp.data import ContextConfig, Contexts, make_contexts, open_corpus
from autointerp.distributed import barrier, rank_and_world
from autointerp.models import DTYPES, LoadedModel, capture, load_model, validate_hookpoints
from autointerp.models.embedded import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PENDING = "cache.json"
FORMAT_VERSION = 1


class CacheError(RuntimeError):
    """A cache that is corrupt, incomplete, or of another config."""


@dataclass
class CacheConfig:
    """One activation-caching job."""

    model: str = "smollm2-135m"
    """model spec: alias, .gguf file, local folder, or hub id in the local HF cache."""
    hookpoints: list[str] = field(default_factory=lambda: ["blocks.15.hook_out"])
    """TransformerLens hook point names; one forward pass serves all of them."""
    corpus: str = "python-stdlib"
    """corpus spec (see ``autointerp.data``)."""
    tokens: int = 1_000_000
    """activation rows to cache per hook point (kept tokens, after exclusions)."""
    context: ContextConfig = field(default_factory=ContextConfig)
    batch_size: int = 16
    """contexts per forward pass."""
    shard_contexts: int = 256
    """contexts per shard (a multiple of batch_size; 256 x 128 tokens ~ 75 MB at d=576 float32)."""
    dtype: str = "float32"
    """storage dtype of the activations: float32, float16 or bfloat16."""
    model_dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.tokens <= 0:
            raise ValueError(f"tokens must be positive, got {self.tokens}")
        if self.batch_size <= 0 or self.shard_contexts <= 0 or self.shard_contexts % self.batch_size:
            raise ValueError(f"shard_contexts ({self.shard_contexts}) must be a positive multiple of "
                             f"batch_size ({self.batch_size})")
        if not self.hookpoints:
            raise ValueError("at least one hook point is needed")
        if len(set(self.hookpoints)) != len(self.hookpoints):
            raise ValueError(f"duplicate hook points in {self.hookpoints}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CacheError(f"cannot write the cache to {out}: {exc.strerror or exc}") from exc


class CacheWriter:
    """Computes and writes the shards of one cache config (all hook points at once)."""

    def __init__(self, cfg: CacheConfig, out: Path, model: LoadedModel | None = None,
                 overwrite: bool = False, progress: bool = True) -> None:
        self.cfg, self.out, self.overwrite, self.progress = cfg, Path(out), overwrite, progress
        _check_writable(self.out)
        self.model = model or load_model(cfg.model, device=cfg.device, dtype=cfg.model_dtype)
        validate_hookpoints(self.model, cfg.hookpoints)
        source = open_corpus(cfg.corpus, cfg.context.text_field, self.model.tokenizer)
        self.contexts: Contexts = make_contexts(source, self.model.tokenizer, cfg.context, cfg.tokens)
        if self.contexts.exhausted:
            log.warning("corpus %r has only %d usable tokens, fewer than the %d asked for: caching %d",
                        cfg.corpus, self.contexts.n_kept, cfg.tokens, self.contexts.n_kept)
        self.n_shards = math.ceil(len(self.contexts.tokens) / cfg.shard_contexts)
        self.identity = self._identity()

    def _identity(self) -> dict:
        """Everything that determines the bytes of the cache; its hash is the fingerprint."""
        ident = {
            "format": FORMAT_VERSION,
            "model": {k: v for k, v in self.model.describe().items() if k != "source"},
            "corpus": {"spec": self.cfg.corpus, "contexts_sha256": self.contexts.sha256()},
            "context": self.cfg.context.to_dict(),
            "tokens_requested": self.cfg.tokens,
            "batch_size": self.cfg.batch_size,
            "shard_contexts": self.cfg.shard_contexts,
            "dtype": self.cfg.dtype,
        }
        ident["fingerprint"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        return ident

    def hook_dir(self, hookpoint: str) -> Path:
        return self.out / hookpoint

    def shard_span(self, s: int) -> tuple[int, int]:
        """[lo, hi) global context indices of shard ``s``."""
        return s * self.cfg.shard_contexts, min((s + 1) * self.cfg.shard_contexts, len(self.contexts.tokens))

    def shard_rows(self, s: int) -> int:
        lo, hi = self.shard_span(s)
        return int(self.contexts.keep[lo:hi].sum())

    # -- state of an existing folder ---------------------------------------------------
    def _prepare(self, hookpoint: str) -> bool:
        """Check ``hookpoint``'s folder; return True when its cache is already complete."""
        d = self.hook_dir(hookpoint)
        pending = {**self.identity, "hookpoint": hookpoint}
        if rank_and_world()[0] == 0:
            for stale in d.glob(".*.tmp-*"):  # half-written files of a killed run
                stale.unlink()
        for name in (MANIFEST, PENDING):
            f = d / name
            if not f.exists():
                continue
            try:
                found = json.loads(f.read_text())
            except json.JSONDecodeError as exc:
                raise CacheError(f"{f} is not valid JSON ({exc.msg}); remove the folder or pass --overwrite") from exc
            same = found.get("fingerprint") == self.identity["fingerprint"] and found.get("hookpoint") == hookpoint
            if same and name == MANIFEST:
                return True
            if same:
                return False  # a partial cache of this config: resume
            raise CacheError(
                f"{d} holds a cache of a different config (fingerprint {found.get('fingerprint', '?')[:12]}, "
                f"this job {self.identity['fingerprint'][:12]}); pass --overwrite to replace it or choose "
                "another --out")
        if any(d.glob("shard-*.safetensors")):
            raise CacheError(f"{d} holds shards but no {PENDING} or {MANIFEST}: not a cache this tool wrote; "
                             "pass --overwrite to replace it")
        d.mkdir(parents=True, exist_ok=True)
        if rank_and_world()[0] == 0:
            _atomic_write(d / PENDING, _json_bytes(pending))
        return False

    # -- computing ---------------------------------------------------------------------
    def _shard_tensors(self, s: int) -> dict[str, dict[str, Tensor]]:
        cfg, c = self.cfg, self.contexts
        lo, hi = self.shard_span(s)
        acts: dict[str, list[Tensor]] = {h: [] for h in cfg.hookpoints}
        for b in range(lo, hi, cfg.batch_size):
            ids = c.tokens[b:min(b + cfg.batch_size, hi)].to(self.model.device)
            out = capture(self.model, ids, cfg.hookpoints)
            keep = c.keep[b:b + len(ids)]
            for h in cfg.hookpoints:
                acts[h].append(out[h][keep.to(ids.device)].to("cpu", DTYPES[cfg.dtype]))
        keep = c.keep[lo:hi]
        ctx_idx, ctx_pos = torch.nonzero(keep, as_tuple=True)
        meta = {
            "token_ids": c.tokens[lo:hi][keep].to(torch.int32),
            "doc": c.doc[lo:hi][keep].to(torch.int32),
            "pos": c.pos[lo:hi][keep].to(torch.int32),
            "offset": c.offset[lo:hi][keep].to(torch.int32),
            "ctx": (ctx_idx + lo).to(torch.int32),
            "ctx_pos": ctx_pos.to(torch.int32),
            "contexts": c.tokens[lo:hi].to(torch.int32).contiguous(),
        }
        return {h: {"activations": torch.cat(acts[h]).contiguous(), **meta} for h in cfg.hookpoints}

    def run(self) -> dict[str, Path]:
        """Write every missing shard and the manifests; return {hookpoint: folder}."""
        rank, world = rank_and_world()
        if self.overwrite and rank == 0:
            for h in self.cfg.hookpoints:
                if self.hook_dir(h).exists():
                    shutil.rmtree(self.hook_dir(h))
        barrier()
        complete = {h: self._prepare(h) for h in self.cfg.hookpoints}
        todo_hooks = [h for h in self.cfg.hookpoints if not complete[h]]
        barrier()
        mine = [s for s in range(self.n_shards) if s % world == rank]
        missing = [s for s in mine
                   if any(not (self.hook_dir(h) / shard_name(s)).exists() for h in todo_hooks)]
        rows_total = self.contexts.n_kept
        bar = tqdm(total=sum(self.shard_rows(s) for s in mine),
                   unit="tok", unit_scale=True, desc=f"cache[{rank}]" if world > 1 else "cache",
                   disable=not self.progress or not todo_hooks, smoothing=0.1)
        for s in mine:
            if s in missing:
                for h, tensors in self._shard_tensors(s).items():
                    if h in todo_hooks:
                        # one metadata key: safetensors writes several keys in no fixed order,
                        # which would break byte-identical resumes
                        meta = {"autointerp": json.dumps({"hookpoint": h, "shard": s,
                                                          "fingerprint": self.identity["fingerprint"]},
                                                         sort_keys=True)}
                        _atomic_write(self.hook_dir(h) / shard_name(s), st_save(tensors, metadata=meta))
            bar.update(self.shard_rows(s))
        bar.close()
        barrier()
        if rank == 0:
            for h in todo_hooks:
                self._write_manifest(h, rows_total)
        barrier()
        return {h: self.hook_dir(h) for h in self.cfg.hookpoints}

    def _write_manifest(self, hookpoint: str, rows_total: int) -> None:
        d = self.hook_dir(hookpoint)
        shards = []
        for s in range(self.n_shards):
            f = d / shard_name(s)
            shards.append({"file": f.name, "rows": self.shard_rows(s), "sha256": sha256_file(f),
                           "contexts": list(self.shard_span(s))})
        with safe_open(d / shard_name(0), framework="pt") as f:
            d_act = f.get_slice("activations").get_shape()[1]
        manifest = {
            **self.identity,
            "hookpoint": hookpoint,
            "d": int(d_act),
            "tokens": rows_total,
            "n_contexts": len(self.contexts.tokens),
            "corpus_exhausted": self.contexts.exhausted,
            "exclusions": {"rules": asdict(self.cfg.context.exclude), "dropped": self.contexts.excluded},
            "documents": self.contexts.doc_names,
            "shards": shards,
            "autointerp_version": __version__,
        }
        _atomic_write(d / MANIFEST, _json_bytes(manifest))
        (d / PENDING).unlink(missing_ok=True)


def cache_activations(cfg: CacheConfig, out: str | Path, model: LoadedModel | None = None,
                      overwrite: bool = False, progress: bool = True) -> dict[str, Path]:
    """Cache ``cfg.hookpoints`` activations under ``out/<hookpoint>/``; resume if interrupted."""
    return CacheWriter(cfg, Path(out), model=model, overwrite=overwrite, progress=progress).run()


# --------------------------------------------------------------------------------------
# Reading


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete cache folder; a clear ``CacheError`` otherwise."""
    folder = Path(folder)
    f = folder / MANIFEST
    if not f.exists():
        hint = " (a partial cache: run the same cache command again to finish it)" if (folder / PENDING).exists() else ""
        raise CacheError(f"{folder} is not a complete activation cache: no {MANIFEST}{hint}")
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{f} is corrupt: {exc.msg}") from exc
    if not manifest.get("shards"):
        raise CacheError(f"{f} lists no shards: the cache is empty")
    return manifest


def load_shard(folder: Path, entry: dict, verify: bool = True) -> dict[str, Tensor]:
    """Read one shard, checking its sha256 against the manifest entry."""
    path = Path(folder) / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CacheError(f"shard missing: {path}") from exc
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CacheError(f"shard {path} is corrupt: its sha256 does not match the manifest")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CacheError(f"shard {path} cannot be read: {exc}") from exc
    if tensors["activations"].shape[0] != entry["rows"]:
        raise CacheError(f"shard {path} holds {tensors['activations'].shape[0]} rows, manifest says {entry['rows']}")
    return tensors


def iter_shards(folder: str | Path, verify: bool = True) -> Iterator[dict[str, Tensor]]:
    folder = Path(folder)
    for entry in read_manifest(folder)["shards"]:
        yield load_shard(folder, entry, verify)
