"""What to train and how (:class:`DictionarySpec`, :class:`TrainConfig`), and what training gives
back (:class:`TrainedDictionary`, :class:`StepInfo`, :class:`TrainingDivergedError`); the loop
itself is :class:`dictionaries.training.Trainer`."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from .base import Dictionary, DictionaryOutput
from .config import DictionaryConfig

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")



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
