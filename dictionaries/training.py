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
dictionary is written to ``<out>/<name>/{cfg.json, weights.safetensors, metrics.json}``. Checkpoints and
resuming: :mod:`dictionaries.run_state`.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed as ddp
from .base import Dictionary, DictionaryOutput
from .config import build
from .data import BatchSource
from .io import save, write_json_atomic
from .run_state import Checkpoints, RunState
from .train_config import DictionarySpec, StepInfo, TrainConfig, TrainedDictionary, TrainingDivergedError

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
        self.checkpoints = Checkpoints(self.out_dir, cfg, self.world)

    @property
    def last_checkpoint(self) -> dict[str, Path]:
        """each dictionary's latest checkpoint written or resumed from."""
        return self.checkpoints.last

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
            step, tokens = self.checkpoints.resume(runs, source)
        else:
            self.checkpoints.refuse_existing([s.name for s in self.specs])

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
                    self.checkpoints.save(runs, step, tokens, source)
        finally:
            bar.close()
        return self._finish(runs, step, tokens, warnings)

    # ---- setup ----------------------------------------------------------------------

    def _new_run(self, spec: DictionarySpec) -> RunState:
        model = build(spec.cfg).to(self.cfg.device)
        peak_lr = self.cfg.lr_for(spec.cfg.n_latents)
        # Not fused=True: it is faster on CPU but broke bit-identical resume in
        # test_resume_is_bit_identical (cause not yet found).
        encoder = [model.W_enc, model.b_enc]
        decoder = [p for p in model.parameters() if all(p is not q for q in encoder)]
        groups = [{"params": encoder, "lr_scale": self.cfg.encoder_lr_scale},
                  {"params": decoder, "lr_scale": 1.0}]
        optimizer = torch.optim.Adam(groups, lr=peak_lr, betas=self.cfg.betas, eps=self.cfg.eps)
        return RunState(spec=spec, model=model, optimizer=optimizer, peak_lr=peak_lr,
                    tokens_since_fired_F=torch.zeros(spec.cfg.n_latents, dtype=torch.int64,
                                                     device=self.cfg.device))

    def _inputs(self, run: RunState, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
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
    def _initialise(self, run: RunState, batch: dict[str, Tensor]) -> None:
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

    def _step(self, run: RunState, batch: dict[str, Tensor], step: int, n_tokens: int) -> DictionaryOutput:
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

    def _postfix(self, runs: list[RunState]) -> dict[str, str]:
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

    # ---- the end --------------------------------------------------------------------

    def _finish(self, runs: list[RunState], step: int, tokens: int,
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

    def _final_metrics(self, run: RunState, step: int, tokens: int, warnings: list[str]) -> dict[str, Any]:
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

