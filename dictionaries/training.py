"""Train several dictionaries from one stream of activation batches.

Usage::

    specs = [DictionarySpec("l15", DictionaryConfig("topk", d_in=768, n_latents=16384, k=32),
                            input_key="blocks.15.hook_out")]
    trainer = Trainer(specs, TrainConfig(steps=10_000, checkpoint_every=1000), out_dir="runs/x/dictionaries")
    results = trainer.train(source)           # source: a BatchSource of dict[str, Tensor[B, d]]
    results["l15"].dictionary, results["l15"].metrics

Each step, for each dictionary, on normalised activations ``x * s_in`` (target ``y * s_out``):

1. ``loss = recon + sparsity + auxk`` (see :class:`DictionaryOutput`), backward;
2. gradients averaged over ranks if ``torch.distributed`` is initialised;
3. non-finite loss or gradient: raise :class:`TrainingDivergedError` (before any weight changes);
4. decoder gradient made orthogonal to each unit decoder row, Adam step at the scheduled LR,
   decoder rows renormalised (when ``cfg.normalize_decoder``);
5. per-latent "tokens since last fired" counters updated; a latent is dead once its counter
   reaches ``dead_after_tokens`` (the mask feeds the next step's AuxK loss).

The first batch sets the input scale ``s = sqrt(d) / mean ||x||`` and ``b_dec`` (geometric median
or mean of the normalised target); ``b_enc = -center(x) @ W_enc`` so pre-activations start
centred. At the end the scale is folded into the weights (:meth:`Dictionary.fold_scale`) and each
dictionary is written to ``<out>/<name>/{cfg.json, weights.safetensors, metrics.json}``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed as ddp
from .base import Dictionary, DictionaryConfig, DictionaryOutput, build
from .checkpoint import (
    complete_checkpoints,
    load_optimizer_state,
    load_tensors,
    publish,
    read_json,
    step_dir_name,
    write_checkpoint_files,
)
from .data import BatchSource
from .io import save, write_json_atomic

__all__ = [
    "DictionarySpec",
    "StepInfo",
    "TrainConfig",
    "TrainedDictionary",
    "Trainer",
    "TrainingDivergedError",
    "geometric_median",
]

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


@dataclass
class DictionarySpec:
    """One dictionary to train and which batch entries it reads."""

    name: str
    """Label and output sub-directory (letters, digits, ``_ . -``; e.g. ``"blocks.15.hook_out"``)."""

    cfg: DictionaryConfig
    """Architecture and sizes."""

    input_key: str
    """Batch key of the input activations ``x`` (``[B, d_in]``)."""

    target_key: str | None = None
    """Batch key of the target (``[B, d_out]``); ``None`` means ``input_key`` (an SAE). Set it for a
    transcoder, e.g. the MLP output for the MLP input."""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"dictionary name {self.name!r} must match {_NAME_RE.pattern}")
        if self.target_key is None:
            self.target_key = self.input_key
        if self.target_key == self.input_key and self.cfg.d_out != self.cfg.d_in:
            raise ValueError(
                f"{self.name}: d_out={self.cfg.d_out} != d_in={self.cfg.d_in} needs a target_key "
                f"different from input_key={self.input_key!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cfg": self.cfg.to_dict(), "input_key": self.input_key,
                "target_key": self.target_key}


# Fields that change how often things are written or shown, not the maths: a checkpoint written
# under different values of these may be resumed.
_RESUME_NEUTRAL_FIELDS = frozenset({"checkpoint_every", "keep_checkpoints", "progress", "log_every", "device"})


@dataclass
class TrainConfig:
    """Optimisation, schedule, bookkeeping. Batch size is the data source's business (the trainer
    counts the rows it receives), so it is not repeated here."""

    steps: int
    """Number of optimizer steps (one batch each)."""

    lr: float | None = None
    """Peak Adam learning rate of the decoder (``W_dec``, ``b_dec``, ``W_skip``); ``None`` means
    ``3e-3 / sqrt(n_latents / 16384)`` per dictionary. This is 15x Gao et al.'s 2e-4 (tuned for
    billions of tokens): measured on SmolLM2 layer-15 activations (``benchmarks/RESULTS.md``) it
    gives a far lower FVU after one to three passes over 300k tokens, and with the encoder at a
    third of it (``encoder_lr_scale``) no more dead latents."""

    encoder_lr_scale: float = 1 / 3
    """The encoder (``W_enc``, ``b_enc``) learns at ``lr * encoder_lr_scale``. A fast encoder lets
    the latents that win early grow and starve the others (dead latents); a slower encoder keeps
    the competition open while the decoder fits quickly (measured: at lr 6e-3, scale 1/3 gives
    0.7% dead latents against 10%+ at scale 1)."""

    warmup_steps: int | None = None
    """Linear LR warm-up from 0 over this many steps; ``None``: ``min(1000, max(1, steps // 10))``."""

    decay_fraction: float = 0.2
    """Linear LR decay to 0 over this final fraction of ``steps``."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""

    eps: float = 6.25e-10
    """Adam epsilon (Gao et al.)."""

    checkpoint_every: int | None = None
    """Write a checkpoint every this many steps; ``None``: never."""

    keep_checkpoints: int | None = None
    """Keep only this many most recent checkpoints per dictionary (``None``: keep all). At least 2,
    so that a kill while dictionaries are being checkpointed one after another still leaves a
    step that all of them share."""

    dead_after_tokens: int = 1_000_000
    """A latent is dead once it has not fired for this many tokens (summed over ranks)."""

    dead_warn_fraction: float = 0.1
    """Warn (log + ``metrics.json``) when more than this fraction of latents is dead at the end.
    10%: a healthy TopK run keeps dead latents to a few percent; far more means wasted capacity."""

    b_dec_init: Literal["geometric_median", "mean"] = "geometric_median"
    """How ``b_dec`` is initialised from the first batch's (normalised) target."""

    geometric_median_iters: int = 100
    """Maximum Weiszfeld iterations for ``b_dec_init="geometric_median"``."""

    seed: int = 0
    """Seed of ``torch.manual_seed`` before the dictionaries are initialised."""

    metrics_window: int = 50
    """Final loss / FVU / L0 in ``metrics.json`` are means over this many last steps (rank 0's batches)."""

    log_every: int = 10
    """Refresh the progress bar's postfix every this many steps."""

    progress: bool = True
    """Show a tqdm progress bar (rank 0 only)."""

    device: str = "cpu"
    """Where the dictionaries live and batches are moved ("cpu", "cuda", "cuda:1"). Under
    ``torch.distributed`` with NCCL, call ``torch.cuda.set_device(local_rank)`` and pass "cuda".
    Exact resume is only promised on CPU; a checkpoint may be resumed on another device."""

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0 or None, got {self.lr}")
        if self.warmup_steps is None:
            self.warmup_steps = min(1000, max(1, self.steps // 10))
        if not self.encoder_lr_scale > 0:
            raise ValueError(f"encoder_lr_scale must be > 0, got {self.encoder_lr_scale}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.checkpoint_every is not None and self.checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be > 0 or None, got {self.checkpoint_every}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 2:
            raise ValueError(f"keep_checkpoints must be >= 2 or None, got {self.keep_checkpoints}")
        if self.dead_after_tokens <= 0:
            raise ValueError(f"dead_after_tokens must be > 0, got {self.dead_after_tokens}")
        if not 0 <= self.dead_warn_fraction <= 1:
            raise ValueError(f"dead_warn_fraction must be in [0, 1], got {self.dead_warn_fraction}")
        if self.b_dec_init not in ("geometric_median", "mean"):
            raise ValueError(f"b_dec_init must be 'geometric_median' or 'mean', got {self.b_dec_init!r}")
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"device {self.device!r} is not a torch device: {e}") from None
        for name in ("geometric_median_iters", "metrics_window", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def lr_for(self, n_latents: int) -> float:
        """Peak learning rate of a dictionary with ``n_latents`` latents."""
        return self.lr if self.lr is not None else 3e-3 / math.sqrt(n_latents / 16384)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak LR for the step taken from ``step`` (0-based) completed steps:
        ``min(warm-up ramp, final linear decay)``; the last step's factor is ``1 / n_decay > 0``."""
        warm = 1.0 if self.warmup_steps == 0 else min(1.0, (step + 1) / self.warmup_steps)
        n_decay = round(self.decay_fraction * self.steps)
        decay = 1.0 if n_decay == 0 else min(1.0, (self.steps - step) / n_decay)
        return min(warm, decay)

    def resume_fields(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed."""
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return {k: v for k, v in d.items() if k not in _RESUME_NEUTRAL_FIELDS}


# --------------------------------------------------------------------------------------
# Results and errors
# --------------------------------------------------------------------------------------


class TrainingDivergedError(RuntimeError):
    """A loss or gradient became NaN/inf. ``step`` is the 1-based step that failed."""

    def __init__(self, step: int, name: str, last_checkpoint: Path | None, what: str):
        where = (f"last good checkpoint: {last_checkpoint}" if last_checkpoint is not None
                 else "no checkpoint was written before it")
        super().__init__(
            f"training diverged at step {step}: dictionary {name!r} has a non-finite {what}; {where}"
        )
        self.step = step
        self.name = name
        self.last_checkpoint = last_checkpoint


class StepInfo(NamedTuple):
    """Passed to ``on_step`` after every step (on every rank)."""

    step: int
    """Completed steps so far (1 after the first step)."""
    tokens: int
    """Tokens consumed so far, all ranks together."""
    outputs: dict[str, DictionaryOutput]
    """This rank's forward outputs of the step, by dictionary name."""
    dictionaries: dict[str, Dictionary]
    """The dictionaries being trained (normalised scale, not folded)."""


class TrainedDictionary(NamedTuple):
    """One entry of :meth:`Trainer.train`'s result."""

    dictionary: Dictionary
    """Scale-folded dictionary for raw activations, in eval mode."""
    metrics: dict[str, Any]
    """What ``metrics.json`` holds."""
    path: Path
    """``<out>/<name>``, holding ``cfg.json``, ``weights.safetensors`` and ``metrics.json``."""


# --------------------------------------------------------------------------------------
# Initialisation helpers
# --------------------------------------------------------------------------------------


@torch.no_grad()
def geometric_median(points_ND: Tensor, max_iters: int = 100, rel_tol: float = 1e-7) -> Tensor:
    """Point minimising ``sum_n ||points_n - m||`` (Weiszfeld's iterations from the mean, in
    float64): ``m <- sum_n w_n points_n / sum_n w_n`` with ``w_n = 1 / ||points_n - m||``.
    ``points_ND: [N, D] -> [D]`` in the input dtype."""
    pts = points_ND.double()
    m = pts.mean(0)
    for _ in range(max_iters):
        w_N = 1.0 / (pts - m).norm(dim=-1).clamp_min(1e-12)
        new = (w_N[:, None] * pts).sum(0) / w_N.sum()
        converged = (new - m).norm() <= rel_tol * new.norm().clamp_min(1e-12)
        m = new
        if converged:
            break
    return m.to(points_ND.dtype)


def _mean_norm(x_ND: Tensor) -> float:
    return float(ddp.mean_(x_ND.norm(dim=-1).mean().double().reshape(1))[0])


# --------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Training state of one dictionary."""

    spec: DictionarySpec
    model: Dictionary
    optimizer: torch.optim.Adam
    peak_lr: float
    tokens_since_fired_F: Tensor
    in_scale: float = float("nan")
    out_scale: float = float("nan")
    history: deque = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.spec.name


class Trainer:
    """Trains several dictionaries, each on its own key(s) of a shared batch stream.

    Args:
        specs: what to train; names must be unique.
        cfg: optimisation and bookkeeping.
        out_dir: ``<out>``; dictionary ``name`` writes to ``<out>/<name>/``.
    """

    def __init__(self, specs: Sequence[DictionarySpec], cfg: TrainConfig, out_dir: str | Path):
        if not specs:
            raise ValueError("no dictionaries to train")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"dictionary names must be unique, got {names}")
        self.specs = list(specs)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.world = ddp.current_world()
        self.last_checkpoint: dict[str, Path] = {}

    # ---- public ---------------------------------------------------------------------

    def train(
        self,
        source: BatchSource,
        resume: bool = False,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> dict[str, TrainedDictionary]:
        """Run to ``cfg.steps`` and write the outputs (see module docstring).

        ``resume=True`` continues from the latest step that every dictionary has a complete
        checkpoint for (bit-identically on CPU: weights, Adam state, RNG, dead counters, data
        position), or starts afresh if there is none. ``resume=False`` refuses to run over
        existing checkpoints. Raises :class:`TrainingDivergedError` on NaN/inf. Seeds the global
        torch RNG with ``cfg.seed`` (dictionaries are initialised from it).

        Under ``torch.distributed`` every rank must call this with its own shard's source and
        the same number of batches; checkpoints assume ``out_dir`` is a shared filesystem.
        """
        torch.manual_seed(self.cfg.seed)
        runs = [self._new_run(spec) for spec in self.specs]
        step, tokens = 0, 0
        if resume:
            step, tokens = self._resume(runs, source)
        else:
            self._refuse_existing_checkpoints()

        warnings: list[str] = []
        batches = iter(source)
        bar = tqdm(total=self.cfg.steps, initial=step, desc="dictionaries",
                   disable=not (self.cfg.progress and self.world.is_main))
        try:
            while step < self.cfg.steps:
                batch = next(batches, None)
                if batch is None:
                    warnings.append(f"data source ran out after {step} of {self.cfg.steps} steps")
                    logger.warning(warnings[-1])
                    break
                if step == 0:
                    for run in runs:
                        self._initialise(run, batch)
                n_tokens = ddp.sum_int(self._batch_rows(batch))
                outputs = {run.name: self._step(run, batch, step, n_tokens) for run in runs}
                step += 1
                tokens += n_tokens
                for run in runs:
                    out = outputs[run.name]
                    run.history.append((out.loss.item(), out.fvu.item(), out.l0.item()))
                    while len(run.history) > self.cfg.metrics_window:
                        run.history.popleft()
                bar.update(1)
                if step % self.cfg.log_every == 0 or step == self.cfg.steps:
                    bar.set_postfix(self._postfix(runs), refresh=False)
                if on_step is not None:
                    on_step(StepInfo(step, tokens, outputs, {r.name: r.model for r in runs}))
                if self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0:
                    self._checkpoint(runs, step, tokens, source)
        finally:
            bar.close()
        return self._finish(runs, step, tokens, warnings)

    # ---- setup ----------------------------------------------------------------------

    def _new_run(self, spec: DictionarySpec) -> _Run:
        model = build(spec.cfg).to(self.cfg.device)
        peak_lr = self.cfg.lr_for(spec.cfg.n_latents)
        # Not fused=True: it is faster on CPU but broke bit-identical resume in
        # test_resume_is_bit_identical (cause not yet found).
        encoder = [model.W_enc, model.b_enc]
        decoder = [p for p in model.parameters() if all(p is not q for q in encoder)]
        groups = [{"params": encoder, "lr_scale": self.cfg.encoder_lr_scale},
                  {"params": decoder, "lr_scale": 1.0}]
        optimizer = torch.optim.Adam(groups, lr=peak_lr, betas=self.cfg.betas, eps=self.cfg.eps)
        return _Run(spec=spec, model=model, optimizer=optimizer, peak_lr=peak_lr,
                    tokens_since_fired_F=torch.zeros(spec.cfg.n_latents, dtype=torch.int64,
                                                     device=self.cfg.device))

    def _inputs(self, run: _Run, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Raw ``(x [B, d_in], y [B, d_out])`` of ``run`` from ``batch``, as float32."""
        for key in (run.spec.input_key, run.spec.target_key):
            if key not in batch:
                raise ValueError(
                    f"dictionary {run.name!r} reads batch key {key!r}; batch has {sorted(batch)}"
                )
        device = self.cfg.device
        x = batch[run.spec.input_key].to(device=device, dtype=torch.float32)
        y = batch[run.spec.target_key].to(device=device, dtype=torch.float32)  # type: ignore[index]
        return x, y

    @staticmethod
    def _batch_rows(batch: dict[str, Tensor]) -> int:
        return next(iter(batch.values())).shape[0]

    @torch.no_grad()
    def _initialise(self, run: _Run, batch: dict[str, Tensor]) -> None:
        """Scales from the first batch (averaged over ranks); biases from rank 0's first batch."""
        cfg, model = run.spec.cfg, run.model
        x, y = self._inputs(run, batch)
        run.in_scale = math.sqrt(cfg.d_in) / _mean_norm(x)
        is_sae = run.spec.target_key == run.spec.input_key
        d_out: int = cfg.d_out  # type: ignore[assignment]
        run.out_scale = run.in_scale if is_sae else math.sqrt(d_out) / _mean_norm(y)
        center = self._center
        y_center = center(y * run.out_scale)
        x_center = y_center if is_sae else center(x * run.in_scale)
        model.b_dec.copy_(y_center)
        model.b_enc.copy_(-(x_center @ model.W_enc))
        ddp.broadcast_module_(model)  # rank 0's initialisation everywhere

    def _center(self, points_ND: Tensor) -> Tensor:
        if self.cfg.b_dec_init == "mean":
            return points_ND.mean(0)
        return geometric_median(points_ND, self.cfg.geometric_median_iters)

    # ---- one step -------------------------------------------------------------------

    def _step(self, run: _Run, batch: dict[str, Tensor], step: int, n_tokens: int) -> DictionaryOutput:
        model, opt = run.model, run.optimizer
        x, y = self._inputs(run, batch)
        x = x * run.in_scale
        y = x if run.spec.target_key == run.spec.input_key else y * run.out_scale
        dead_mask_F = run.tokens_since_fired_F >= self.cfg.dead_after_tokens

        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x, y, dead_mask=dead_mask_F, dense_latents=False)
        out.loss.backward()
        ddp.average_gradients_(model)
        bad = self._non_finite(out.loss, model)
        if not ddp.all_true(bad is None):
            raise TrainingDivergedError(step + 1, run.name, self.last_checkpoint.get(run.name),
                                        bad or "value on another rank")

        if run.spec.cfg.normalize_decoder:
            model.remove_parallel_decoder_grad_()
        for group in opt.param_groups:
            group["lr"] = run.peak_lr * self.cfg.lr_factor(step) * group.get("lr_scale", 1.0)
        opt.step()
        if run.spec.cfg.normalize_decoder:
            model.set_decoder_norm_to_unit_()
        # Buffers are running statistics (e.g. the BatchTopK threshold) estimated from each
        # rank's own batch; rank 0's copy is kept so that ranks stay identical.
        ddp.broadcast_buffers_(model)

        with torch.no_grad():
            fired_F = ddp.logical_or_(out.fired.clone())
            run.tokens_since_fired_F += n_tokens
            run.tokens_since_fired_F[fired_F] = 0
        return out

    @staticmethod
    def _non_finite(loss: Tensor, model: Dictionary) -> str | None:
        if not torch.isfinite(loss).all():
            return "loss"
        for name, p in model.named_parameters():
            # min and max are both finite iff every entry is (NaN propagates): one cheap pass
            # instead of isfinite's [numel] bool temporary.
            if p.grad is not None and not torch.isfinite(torch.stack(torch.aminmax(p.grad))).all():
                return f"gradient of {name}"
        return None

    def _postfix(self, runs: list[_Run]) -> dict[str, str]:
        last = [r.history[-1] for r in runs if r.history]
        if not last:
            return {}
        dead = [float((r.tokens_since_fired_F >= self.cfg.dead_after_tokens).float().mean()) for r in runs]
        n = len(last)
        return {
            "loss": f"{sum(h[0] for h in last) / n:.4g}",
            "fvu": f"{sum(h[1] for h in last) / n:.3f}",
            "l0": f"{sum(h[2] for h in last) / n:.1f}",
            "dead": f"{sum(dead) / len(dead):.1%}",
        }

    # ---- checkpoints ----------------------------------------------------------------

    def _checkpoints_dir(self, name: str) -> Path:
        return self.out_dir / name / "checkpoints"

    def _identity(self, run: _Run) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this trainer."""
        return {"spec": run.spec.to_dict(), "train": self.cfg.resume_fields(), "world_size": self.world.size}

    def _checkpoint(self, runs: list[_Run], step: int, tokens: int, source: BatchSource) -> None:
        for run in runs:
            ckpt_dir = self._checkpoints_dir(run.name)
            final = ckpt_dir / step_dir_name(step)
            tmp = ckpt_dir / f".tmp-{step_dir_name(step)}"
            if self.world.is_main:
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "tokens": tokens,
                    "in_scale": run.in_scale,
                    "out_scale": run.out_scale,
                    "history": [list(h) for h in run.history],
                    "identity": self._identity(run),
                }
                trainer_tensors = {
                    "tokens_since_fired": run.tokens_since_fired_F,
                    "rng_state": torch.get_rng_state(),
                }
                write_checkpoint_files(tmp, run.model, run.optimizer, trainer_tensors, state)
            ddp.barrier()
            write_json_atomic(source.state_dict(), tmp / f"source-rank{self.world.rank}.json")
            ddp.barrier()
            if self.world.is_main:
                publish(tmp, final)
                self._prune_checkpoints(ckpt_dir)
            ddp.barrier()
            self.last_checkpoint[run.name] = final

    def _prune_checkpoints(self, ckpt_dir: Path) -> None:
        if self.cfg.keep_checkpoints is None:
            return
        existing = complete_checkpoints(ckpt_dir)
        for old in sorted(existing)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(existing[old])

    def _refuse_existing_checkpoints(self) -> None:
        for spec in self.specs:
            existing = complete_checkpoints(self._checkpoints_dir(spec.name))
            if existing:
                raise ValueError(
                    f"{self._checkpoints_dir(spec.name)} already holds checkpoints "
                    f"(steps {sorted(existing)}); "
                    "pass resume=True to continue them or choose another out_dir"
                )

    def _resume(self, runs: list[_Run], source: BatchSource) -> tuple[int, int]:
        per_run = {r.name: complete_checkpoints(self._checkpoints_dir(r.name)) for r in runs}
        common = set.intersection(*(set(c) for c in per_run.values()))
        if not common:
            logger.info("resume=True but no common complete checkpoint: starting from scratch")
            return 0, 0
        step = max(common)
        tokens = None
        for run in runs:
            path = per_run[run.name][step]
            state = read_json(path / "state.json")
            self._check_identity(path, state, run)
            run.model.load_state_dict(load_tensors(path / "model.safetensors"), strict=True)
            load_optimizer_state(run.optimizer, load_tensors(path / "optimizer.safetensors"),
                                 read_json(path / "optimizer.json"))
            trainer_tensors = load_tensors(path / "trainer.safetensors")
            run.tokens_since_fired_F = trainer_tensors["tokens_since_fired"].to(self.cfg.device)
            rng_state = trainer_tensors["rng_state"]
            run.in_scale, run.out_scale = float(state["in_scale"]), float(state["out_scale"])
            run.history = deque(tuple(h) for h in state["history"])
            tokens = int(state["tokens"])
            self.last_checkpoint[run.name] = path
        torch.set_rng_state(rng_state)
        source.load_state_dict(read_json(per_run[runs[0].name][step] / f"source-rank{self.world.rank}.json"))
        logger.info("resumed from step %d (%d tokens)", step, tokens)
        assert tokens is not None
        return step, tokens

    def _check_identity(self, path: Path, state: dict[str, Any], run: _Run) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}"
            )
        saved, now = state["identity"], self._identity(run)
        diffs = _diff(saved, now)
        if diffs:
            raise ValueError(
                f"checkpoint {path} was written with a different configuration and cannot be resumed: "
                + "; ".join(diffs)
            )

    # ---- the end --------------------------------------------------------------------

    def _finish(self, runs: list[_Run], step: int, tokens: int,
                warnings: list[str]) -> dict[str, TrainedDictionary]:
        results: dict[str, TrainedDictionary] = {}
        for run in runs:
            metrics = self._final_metrics(run, step, tokens, list(warnings))
            final = copy.deepcopy(run.model)
            if step > 0:
                final.fold_scale(run.in_scale, run.out_scale)
            final.eval()
            path = self.out_dir / run.name
            if self.world.is_main:
                save(final, path)
                write_json_atomic(metrics, path / "metrics.json")
            results[run.name] = TrainedDictionary(final, metrics, path)
        ddp.barrier()
        return results

    def _final_metrics(self, run: _Run, step: int, tokens: int, warnings: list[str]) -> dict[str, Any]:
        dead_fraction = float((run.tokens_since_fired_F >= self.cfg.dead_after_tokens).double().mean())
        if tokens < self.cfg.dead_after_tokens:
            warnings.append(
                f"trained on {tokens} tokens < dead_after_tokens={self.cfg.dead_after_tokens}: "
                "no latent can have been counted dead, dead_fraction is 0 by construction"
            )
        if dead_fraction > self.cfg.dead_warn_fraction:
            msg = (f"{run.name}: {dead_fraction:.1%} of latents are dead (no activation in the last "
                   f"{self.cfg.dead_after_tokens} tokens), above "
                   f"dead_warn_fraction={self.cfg.dead_warn_fraction:.1%}")
            warnings.append(msg)
            logger.warning("!!! DEAD LATENTS !!! %s", msg)
        n = len(run.history)

        def mean(i: int) -> float | None:  # None (JSON null) rather than NaN when nothing ran
            return sum(h[i] for h in run.history) / n if n else None

        return {
            "name": run.name,
            "arch": run.spec.cfg.arch,
            "steps": step,
            "tokens": tokens,
            "loss": mean(0),
            "fvu": mean(1),
            "l0": mean(2),
            "metrics_window_steps": n,
            "dead_fraction": dead_fraction,
            "dead_after_tokens": self.cfg.dead_after_tokens,
            "in_scale": run.in_scale if math.isfinite(run.in_scale) else None,
            "out_scale": run.out_scale if math.isfinite(run.out_scale) else None,
            "peak_lr": run.peak_lr,
            "warnings": warnings,
        }


def _diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now)):
            out += _diff(saved.get(key, "<missing>"), now.get(key, "<missing>"), f"{prefix}{key}.")
        return out
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        saved, now = list(saved), list(now)
    return [] if saved == now else [f"{prefix.rstrip('.')}: checkpoint {saved!r} != now {now!r}"]
