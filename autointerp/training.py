"""Drive ``dictionaries`` training from the activation cache.

One read of the cache feeds every dictionary: the batches of an ``ActivationStore`` over
several hook-point folders are ``{hookpoint: acts}``, and each ``DictionarySpec`` names the
keys it reads (``input_key``; ``target_key`` for a transcoder). The trailing shards of
the cache (at least ``heldout_tokens`` rows) are never trained on; they are the held-out set
of ``evaluate``. Provenance (model, hook points, cache fingerprints, split) goes to
``<dictionary>/autointerp.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dictionaries as dl
from autointerp.activations import read_manifest
from autointerp.distributed import rank_and_world
from autointerp.store import ActivationStore, split_shards

log = logging.getLogger(__name__)

PROVENANCE = "autointerp.json"


@dataclass
class TrainJob:
    """One training job: dictionaries over cached activations."""

    activations: list[str]
    """cache folders, one per hook point (``runs/x/activations/blocks.15.hook_out``)."""
    out: str
    """dictionaries root: each dictionary goes to ``<out>/<name>/``."""
    arch: str = "topk"
    latents: list[int] = field(default_factory=lambda: [4608])
    """dictionary sizes; several sizes x several k train side by side from one read."""
    k: list[int] = field(default_factory=lambda: [32])
    target: str | None = None
    """cache folder of the target hook point: trains transcoders from each input to it."""
    skip_connection: bool = False
    batch_size: int = 4096
    epochs: int = 1
    heldout_tokens: int = 30_000
    buffer_size: int = 2 ** 18
    seed: int = 0
    checkpoint_every: int | None = None
    """steps between checkpoints (the two most recent are kept); with ``resume`` a killed job
    continues from the last one, bit-identically on CPU."""
    lr: float | None = None
    extra: dict = field(default_factory=dict)
    """further ``DictionaryConfig`` fields (l1_coeff, l0_coeff, bandwidth, ...)."""

    def __post_init__(self) -> None:
        if not self.activations:
            raise ValueError("at least one activations folder is needed")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")


def _specs(job: TrainJob, manifests: dict[str, dict]) -> list[dl.DictionarySpec]:
    specs = []
    target = read_manifest(job.target)["hookpoint"] if job.target else None
    for hp, m in manifests.items():
        if hp == target:
            continue
        d_out = manifests[target]["d"] if target else None
        for n_latents in job.latents:
            for k in job.k:
                cfg = dl.DictionaryConfig(arch=job.arch, d_in=int(m["d"]), d_out=d_out, n_latents=n_latents, k=k,
                                          skip_connection=job.skip_connection, **job.extra)
                name = f"{hp}-to-{target}" if target else hp
                if len(job.latents) * len(job.k) > 1:
                    name += f".{job.arch}-{n_latents}-k{k}"
                specs.append(dl.DictionarySpec(name=name, cfg=cfg, input_key=hp, target_key=target))
    return specs


def train_from_cache(job: TrainJob, resume: bool = False, progress: bool = True) -> dict[str, dl.TrainedDictionary]:
    """Train every dictionary of ``job`` in one pass over the cache; return them by name."""
    folders = [*job.activations, *([job.target] if job.target and job.target not in job.activations else [])]
    manifests = {read_manifest(f)["hookpoint"]: read_manifest(f) for f in folders}
    by_name = {read_manifest(f)["hookpoint"]: Path(f) for f in folders}
    first = next(iter(manifests.values()))
    train_shards, held = split_shards(first, job.heldout_tokens)
    rank, world = rank_and_world()
    store = ActivationStore(by_name, batch_size=job.batch_size, buffer_size=max(job.buffer_size, job.batch_size),
                            seed=job.seed, epochs=job.epochs, shards=train_shards, rank=rank, world_size=world)
    steps = len(store) * job.epochs
    if steps == 0:
        raise ValueError(f"the training split holds {store.n_tokens} tokens, fewer than one batch of {job.batch_size}")
    cfg = dl.TrainConfig(steps=steps, seed=job.seed, lr=job.lr, checkpoint_every=job.checkpoint_every,
                         keep_checkpoints=2 if job.checkpoint_every else None, progress=progress)
    specs = _specs(job, manifests)
    trained = dl.Trainer(specs, cfg, job.out).train(store, resume=resume)
    for spec in specs if rank == 0 else []:
        provenance = {
            "job": asdict(job),
            "input_hookpoint": spec.input_key, "target_hookpoint": spec.target_key,
            "model": first["model"], "context": first["context"],
            "caches": {hp: {"folder": str(by_name[hp].resolve()), "fingerprint": manifests[hp]["fingerprint"]}
                       for hp in {spec.input_key, spec.target_key}},
            "train_shards": train_shards, "heldout_shards": held,
            "train_tokens": store.n_tokens, "steps": steps,
        }
        (Path(job.out) / spec.name / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return trained
