"""Examples of every latent of a trained dictionary, from one pass over its held-out shards.

For latent ``f`` and held-out context ``c`` the *peak* is ``a_f(c) = max_t z_f(c, t)`` over the
context's positions ``t``, where ``z = dictionary.encode(x)`` at the positions the cache kept and
``z = 0`` at the positions it excluded. One streaming pass keeps, for all latents at once:

* ``top``: the ``n_top`` contexts with the largest peaks (only contexts with a peak > 0);
* ``quantile``: a uniform sample of ``n_quantile_bins * n_per_quantile`` activating contexts
  (peak > 0), sorted by peak and cut into ``n_quantile_bins`` equal-rank bins at the end, so the
  examples span the distribution of peaks rather than its top; contexts already in ``top`` are
  dropped from it (a latent firing in few contexts has fewer quantile examples);
* ``random``: a uniform sample of ``n_random`` contexts where the latent is 0 everywhere;
* ``density = #{held-out tokens with z_f > 0} / #{held-out tokens}``.

Only the dictionary's held-out shards (``heldout_shards`` of ``autointerp.json``) are read,
never its training shards.

Sampling is "keep the K largest keys": the top examples use the peak as key, the two samples a
fresh U(0, 1) key per (context, latent), which is reservoir sampling without replacement
(Efraimidis-Spirakis with equal weights). So one ``torch.topk`` merge of the kept K with the
chunk's candidates serves all three, for every latent at once. The draws come from one
generator seeded by ``seed``: the result is deterministic for a given ``(seed, batch)``.

Memory is bounded independently of the number of held-out tokens (except for the held-out
contexts' token ids, int32 ``n_heldout_contexts x ctx_len``, kept to cut windows from):

* kept state: ``F x (n_top + n_q + n_random)`` keys and indices plus float32 window activations
  ``F x (n_top + n_q) x W`` (``n_q = n_quantile_bins * n_per_quantile``, ``W`` the window length);
* one chunk's working set: ``O(max(batch, ctx_len) x F)`` floats (its latents, laid out densely
  over its contexts' positions) plus ``F x max(n_top, n_q, n_random) x W`` for the candidates'
  windows. Never ``[tokens x F]`` nor ``[contexts x F]``.

A window is ``W = before + 1 + after`` tokens around the peak, shifted to stay inside the context
(every window of a cache has the same length; ``W = ctx_len`` if the context is shorter).

Explain/score split: within each latent and kind, a permutation seeded by ``(seed, latent, kind)``
puts the first ``ceil(n * explain_fraction)`` examples in ``"explain"`` and the rest in
``"score"``. Examples shown to an explainer are never used to score its explanation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

import dictionaries as dl
from autointerp.activations import load_shard, read_manifest
from autointerp.dictionary_folder import provenance

Split = Literal["explain", "score"]
Kind = Literal["top", "quantile", "random"]


@dataclass
class ExamplesConfig:
    """What ``collect_examples`` keeps per latent."""

    n_top: int = 20
    """top-activating contexts (largest peak)."""
    n_quantile_bins: int = 5
    """equal-rank bins of the sampled activating contexts' peaks."""
    n_per_quantile: int = 4
    """examples per bin."""
    n_random: int = 20
    """contexts where the latent never fires."""
    window: tuple[int, int] = (16, 8)
    """tokens kept (before, after) the peak; an int ``n`` means ``(n, n)``."""
    explain_fraction: float = 0.5
    """share of each kind's examples given to the explainer; the rest are for scoring."""
    seed: int = 0
    batch: int = 4096
    """activation rows encoded at a time (whole contexts; at least one context)."""

    def __post_init__(self) -> None:
        if isinstance(self.window, int):
            self.window = (self.window, self.window)
        self.window = tuple(self.window)
        if len(self.window) != 2 or min(self.window) < 0:
            raise ValueError(f"window must be (before, after) with both >= 0, got {self.window}")
        for name in ("n_top", "n_quantile_bins", "n_per_quantile", "n_random"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.explain_fraction <= 1.0:
            raise ValueError(f"explain_fraction must be in [0, 1], got {self.explain_fraction}")
        if self.batch <= 0:
            raise ValueError(f"batch must be positive, got {self.batch}")

    @property
    def n_quantile(self) -> int:
        return self.n_quantile_bins * self.n_per_quantile


@dataclass
class Example:
    """One window of one held-out context."""

    context_index: int
    """global context index in the activation cache (the shards' ``ctx``)."""
    start: int
    """position in the context of ``tokens[0]``."""
    tokens: list[int]
    activations: list[float]
    """the latent's activation at each token of the window (0 where the cache excluded the position)."""
    peak_position: int
    """index into ``tokens`` of the peak (for ``random`` examples: of a random position)."""
    kind: Kind
    split: Split
    quantile: int | None = None
    """bin of a ``quantile`` example (0 = lowest peaks), else None."""

    @property
    def peak(self) -> float:
        return self.activations[self.peak_position]


@dataclass
class LatentRecord:
    """The held-out statistics and examples of one latent."""

    latent: int
    density: float
    """fraction of held-out tokens where the latent is > 0."""
    max_activation: float
    top: list[Example] = field(default_factory=list)
    """by decreasing peak."""
    quantiles: list[Example] = field(default_factory=list)
    """by increasing bin, then peak."""
    random: list[Example] = field(default_factory=list)

    @property
    def dead(self) -> bool:
        """Never fired on the held-out set: no examples, not to be explained."""
        return self.density == 0.0

    @property
    def examples(self) -> list[Example]:
        return [*self.top, *self.quantiles, *self.random]

    def split(self, split: Split) -> list[Example]:
        return [e for e in self.examples if e.split == split]


class _Kept:
    """Per latent, the ``K`` candidates with the largest keys (all latents at once).

    State ``[F, K]``: ``key`` (-inf = empty slot), ``value`` (the peak), ``ctx`` (global context
    index), ``start`` (window start), ``centre`` (peak position in the context); ``acts [F, K, W]``.
    """

    def __init__(self, n_latents: int, k: int, window: tuple[int, int], with_acts: bool, device: torch.device):
        self.k, (self.before, self.after), self.with_acts = k, window, with_acts
        self.key = torch.full((n_latents, k), -math.inf, device=device)
        self.value = torch.zeros(n_latents, k, device=device)
        self.ctx = torch.full((n_latents, k), -1, dtype=torch.long, device=device)
        self.start = torch.zeros(n_latents, k, dtype=torch.long, device=device)
        self.centre = torch.zeros(n_latents, k, dtype=torch.long, device=device)
        self.acts: Tensor | None = None

    def offer(self, key_FC: Float[Tensor, "F C"], value_FC: Float[Tensor, "F C"], centre_FC: Int[Tensor, "F C"],
              dense_CLF: Float[Tensor, "C L F"], ctx0: int) -> None:
        """Merge one chunk's candidates (its ``C`` contexts, local indices, ``ctx0`` the first's global index)."""
        if self.k == 0:
            return
        n_latents, n_ctx = key_FC.shape
        seq_len = dense_CLF.shape[1]
        width = min(self.before + 1 + self.after, seq_len)
        key_FK, cidx_FK = key_FC.topk(min(self.k, n_ctx), dim=1)  # the chunk's best: windows only for these
        centre_FK = centre_FC.gather(1, cidx_FK)
        start_FK = (centre_FK - self.before).clamp(0, seq_len - width)
        parts = {"key": key_FK, "value": value_FC.gather(1, cidx_FK), "ctx": cidx_FK + ctx0,
                 "start": start_FK, "centre": centre_FK}
        if self.with_acts:
            pos_FKW = start_FK[..., None] + torch.arange(width, device=start_FK.device)
            f_idx = torch.arange(n_latents, device=start_FK.device)[:, None, None]
            parts["acts"] = dense_CLF[cidx_FK[..., None], pos_FKW, f_idx]
            if self.acts is None:
                self.acts = torch.zeros(n_latents, self.k, width, device=start_FK.device)
        key_all = torch.cat([self.key, parts["key"]], dim=1)
        self.key, idx_FK = key_all.topk(self.k, dim=1)
        for name in ("value", "ctx", "start", "centre"):
            setattr(self, name, torch.cat([getattr(self, name), parts[name]], dim=1).gather(1, idx_FK))
        if self.with_acts:
            acts_all = torch.cat([self.acts, parts["acts"]], dim=1)
            self.acts = acts_all.gather(1, idx_FK[..., None].expand(-1, -1, acts_all.shape[2]))

    def rows(self) -> list[list[tuple]]:
        """Per latent, the filled slots as ``(key, value, ctx, start, centre, acts|None)``, best key first."""
        cols = [t.tolist() for t in (self.key, self.value, self.ctx, self.start, self.centre)]
        acts = self.acts.tolist() if self.acts is not None else None
        out = []
        for f in range(self.key.shape[0]):
            out.append([(cols[0][f][j], cols[1][f][j], cols[2][f][j], cols[3][f][j], cols[4][f][j],
                         acts[f][j] if acts is not None else None)
                        for j in range(self.k) if cols[0][f][j] > -math.inf])
        return out


@dataclass
class _Source:
    """Where the held-out activations of a dictionary are."""

    dictionary: dl.Dictionary
    folder: Path
    manifest: dict
    heldout_shards: list[int]


def _open_source(dictionary_dir: str | Path, device: str) -> _Source:
    path = Path(dictionary_dir)
    prov = provenance(path)
    cache = prov["caches"][prov["input_hookpoint"]]
    folder = Path(cache["folder"])
    manifest = read_manifest(folder)
    if manifest["fingerprint"] != cache["fingerprint"]:
        raise ValueError(f"cache {folder} changed since training (fingerprint {manifest['fingerprint'][:12]}, "
                         f"trained on {cache['fingerprint'][:12]}): held-out split no longer valid")
    if not prov["heldout_shards"]:
        raise ValueError(f"{path} was trained with no held-out shards: no examples can be drawn")
    return _Source(dl.load(path, device=device), folder, manifest, list(prov["heldout_shards"]))


class _ExamplePass:
    """The state of one pass: kept candidates, firing counts and the held-out contexts' tokens."""

    def __init__(self, cfg: ExamplesConfig, n_latents: int, device: torch.device):
        self.cfg, self.device = cfg, device
        self.top = _Kept(n_latents, cfg.n_top, cfg.window, True, device)
        self.quantile = _Kept(n_latents, cfg.n_quantile, cfg.window, True, device)
        self.random = _Kept(n_latents, cfg.n_random, cfg.window, False, device)
        self.fired = torch.zeros(n_latents, dtype=torch.long, device=device)
        self.n_tokens = 0
        self.contexts: dict[int, Tensor] = {}  # first global context index of a shard -> its token ids
        self.gen = torch.Generator().manual_seed(cfg.seed)  # CPU: same draws on every device

    def add_shard(self, dictionary: dl.Dictionary, t: dict[str, Tensor], ctx_range: tuple[int, int]) -> Iterator[int]:
        """Encode one shard chunk by chunk; yields the rows done per chunk (for the progress bar)."""
        lo, hi = ctx_range
        tokens_NL = t["contexts"]
        self.contexts[lo] = tokens_NL
        seq_len = tokens_NL.shape[1]
        ctx_R = (t["ctx"].long() - lo).to(self.device)  # rows are sorted by context
        pos_R = t["ctx_pos"].long().to(self.device)
        per_chunk = max(1, self.cfg.batch // seq_len)
        for c0 in range(0, hi - lo, per_chunk):
            c1 = min(c0 + per_chunk, hi - lo)
            r0, r1 = (int(torch.searchsorted(ctx_R, c)) for c in (c0, c1))
            with torch.inference_mode():
                x = t["activations"][r0:r1].to(self.device, torch.float32)
                z_RF = dictionary.encode(x)
            self.fired += (z_RF > 0).sum(0)
            self.n_tokens += r1 - r0
            dense_CLF = torch.zeros(c1 - c0, seq_len, z_RF.shape[1], device=self.device)
            dense_CLF[ctx_R[r0:r1] - c0, pos_R[r0:r1]] = z_RF
            del z_RF
            has_rows_C = torch.zeros(c1 - c0, dtype=torch.bool, device=self.device)
            has_rows_C[ctx_R[r0:r1] - c0] = True
            self._offer(dense_CLF, has_rows_C, lo + c0)
            yield r1 - r0

    def _offer(self, dense_CLF: Float[Tensor, "C L F"], has_rows_C: Bool[Tensor, " C"], ctx0: int) -> None:
        n_ctx, seq_len, n_latents = dense_CLF.shape
        peak_CF, arg_CF = dense_CLF.max(dim=1)
        peak_FC, arg_FC = peak_CF.T, arg_CF.T
        fires_FC = peak_FC > 0
        self.top.offer(peak_FC.masked_fill(~fires_FC, -math.inf), peak_FC, arg_FC, dense_CLF, ctx0)
        u_FC = torch.rand(n_latents, n_ctx, generator=self.gen).to(self.device)
        self.quantile.offer(u_FC.masked_fill(~fires_FC, -math.inf), peak_FC, arg_FC, dense_CLF, ctx0)
        u_FC = torch.rand(n_latents, n_ctx, generator=self.gen).to(self.device)
        centre_FC = torch.randint(seq_len, (n_latents, n_ctx), generator=self.gen).to(self.device)
        silent_FC = ~fires_FC & has_rows_C[None, :]
        self.random.offer(u_FC.masked_fill(~silent_FC, -math.inf), torch.zeros_like(peak_FC), centre_FC,
                          dense_CLF, ctx0)

    def _tokens(self, ctx: int) -> Tensor:
        lo = max(k for k in self.contexts if k <= ctx)
        return self.contexts[lo][ctx - lo]

    def _example(self, row: tuple, kind: Kind, width: int, quantile: int | None = None) -> Example:
        _, _, ctx, start, centre, acts = row
        return Example(context_index=ctx, start=start, tokens=self._tokens(ctx)[start:start + width].tolist(),
                       activations=acts if acts is not None else [0.0] * width, peak_position=centre - start,
                       kind=kind, split="explain", quantile=quantile)

    def _split(self, examples: list[Example], latent: int, kind: Kind) -> None:
        rng = random.Random(f"{self.cfg.seed}:{latent}:{kind}")  # str seeds hash stably (sha512)
        order = rng.sample(range(len(examples)), len(examples))
        n_explain = math.ceil(len(examples) * self.cfg.explain_fraction)
        for rank, i in enumerate(order):
            examples[i].split = "explain" if rank < n_explain else "score"

    def records(self) -> Iterator[LatentRecord]:
        if self.n_tokens == 0:
            raise ValueError("the held-out shards hold no tokens")
        seq_len = next(iter(self.contexts.values())).shape[1]
        width = min(self.cfg.window[0] + 1 + self.cfg.window[1], seq_len)
        density = (self.fired.double() / self.n_tokens).tolist()
        top, quantile, rand = self.top.rows(), self.quantile.rows(), self.random.rows()
        for f, dens in enumerate(density):
            if dens == 0.0:
                yield LatentRecord(latent=f, density=0.0, max_activation=0.0)
                continue
            rec = LatentRecord(latent=f, density=dens, max_activation=top[f][0][1] if top[f] else 0.0)
            rec.top = [self._example(r, "top", width) for r in top[f]]
            in_top = {e.context_index for e in rec.top}
            sample = sorted((r for r in quantile[f] if r[2] not in in_top), key=lambda r: (r[1], r[2]))
            bins = self.cfg.n_quantile_bins
            for b in range(bins):  # equal-rank bins of the sorted sample
                chunk = sample[b * len(sample) // bins:(b + 1) * len(sample) // bins]
                rec.quantiles += [self._example(r, "quantile", width, b) for r in chunk[:self.cfg.n_per_quantile]]
            rec.random = sorted((self._example(r, "random", width) for r in rand[f]),
                                key=lambda e: e.context_index)
            for kind, examples in (("top", rec.top), ("quantile", rec.quantiles), ("random", rec.random)):
                self._split(examples, f, kind)
            yield rec


def iter_latent_records(dictionary_dir: str | Path, cfg: ExamplesConfig | None = None, *, progress: bool = True,
                        device: str = "cpu", **fields) -> Iterator[LatentRecord]:
    """Like :func:`collect_examples`, yielding the records one latent at a time (after the pass)."""
    cfg = replace(cfg or ExamplesConfig(), **fields)
    src = _open_source(dictionary_dir, device)
    state = _ExamplePass(cfg, src.dictionary.cfg.n_latents, torch.device(device))
    entries = [src.manifest["shards"][s] for s in src.heldout_shards]
    with tqdm(total=sum(e["rows"] for e in entries), unit="tok", unit_scale=True, desc="examples",
              disable=not progress) as bar:
        for entry in entries:
            t = load_shard(src.folder, entry)
            for rows in state.add_shard(src.dictionary, t, tuple(entry["contexts"])):
                bar.update(rows)
    yield from state.records()


def collect_examples(dictionary_dir: str | Path, cfg: ExamplesConfig | None = None, *, progress: bool = True,
                     device: str = "cpu", **fields) -> dict[int, LatentRecord]:
    """Top, quantile and random examples and firing density of every latent of the dictionary
    at ``dictionary_dir``, from one pass over its held-out shards (module docstring: what is kept,
    the memory bound, the explain/score split).

    ``fields`` override ``cfg``'s (``collect_examples(d, n_top=10, window=(8, 4))``). Dead latents
    (never fired on the held-out set) come back with density 0 and no examples.
    """
    return {r.latent: r for r in iter_latent_records(dictionary_dir, cfg, progress=progress, device=device, **fields)}
