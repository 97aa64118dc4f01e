"""``autointerp audit SUSPECT --base BASE``: find what a fine-tune planted, knowing neither trigger
nor behaviour.

Stages, in order (each resumable; a finished stage is skipped on a rerun)::

    check ─► run ─► base ─► diff ─► behaviour ─► triggers ─► describe ─► flag ─► verdict ─► report

* ``check``: the model pair (architecture, tokenizer, identical weights, parameter distance) and
  the corpus (size; the shared prefix to exclude) (:mod:`autointerp.audit.checks`);
* ``run``: ``autointerp run`` of the suspect up to ``explain`` in ``OUT`` (cache, dictionary,
  evaluation, examples, no-LLM explanations);
* ``base``: the base model's activations on the same contexts (``OUT/audit/base``);
* ``diff``: the activation diff (:func:`autointerp.diff.diff_run`);
* ``behaviour``: the behaviour diff, its explaining features and their causal check
  (:func:`autointerp.behaviour.behaviour_diff`);
* ``triggers``: trigger discovery from the models alone, its confirmation by generation, and
  the features that fire on the confirmed trigger (:mod:`autointerp.audit.triggers`);
* ``describe``: what changed, in words: the suspect's answers with and without each suspicious
  feature steered in, their token contrast, and the watchlist's concept closest to every change
  (the behaviour's outlying answers, a confirmed trigger's, each steered feature's): a second
  opinion, the verdict needs no concept (:mod:`autointerp.audit.describe`);
* ``flag`` (off by default: ``flag_features=0``): the watchlist's feature-level flags
  (:func:`autointerp.flagging.flag_run`, causal probes per concept) over the most-changed and the
  behaviour-explaining features: ~20 min of 2 cores on a 135M pair, for a second opinion the
  ``describe`` stage gives in seconds;
* ``verdict``: the signals combined (:mod:`autointerp.audit.verdict`) into ``OUT/audit/audit.json``;
* ``report``: ``OUT/report.html`` with its "Audit" section.

A finished stage writes ``OUT/audit/stages/<stage>.json``. An audit folder made with other settings
or other models is refused (``force`` starts over).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from autointerp.audit.checks import AuditError

__all__ = ["AuditError", "AuditSettings", "STAGES", "audit", "default_corpus", "load_audit"]
log = logging.getLogger(__name__)
STAGES = ("check", "run", "base", "diff", "behaviour", "triggers", "describe", "flag", "verdict", "report")


def default_corpus() -> str:
    """The generic chat corpus shipped with the package (``benchmarks/make_chat_corpus.py``)."""
    return str(resources.files("autointerp.audit") / "chat_corpus.jsonl")


@dataclass
class AuditSettings:
    corpus: str | None = None
    """the audit corpus (default: :func:`default_corpus`)."""
    hookpoint: str = "mid"
    """the dictionary's hook point (``mid``: the residual stream after the middle layer)."""
    latents: int = 2048
    k: int = 32
    epochs: int = 10
    ctx_len: int = 128
    behaviour_tokens: int = 8
    batch_size: int = 64
    causal: int = 3
    null: int = 8
    triggers: bool = True
    scan_layer: int | None = None
    grow_anchors: int = 1
    """best tokens of the weight scan each grown into a trigger candidate (0: no growth search)."""
    grow_top: int = 8
    """neighbours on each side screened at every growth step."""
    grow_max_len: int = 6
    """longest grown candidate, in tokens (a multi-byte character is 2-3 byte-level tokens)."""
    grow_min_gain: float = 0.1
    """least relative rise of the screen's divergence that keeps a growth step."""
    grow_companions: int = 8
    """the weight scan's best tokens screened as neighbours at every growth step, beside the
    reading scan's (0: none)."""
    grow_null: bool = True
    """a growth step is kept only when its best string also beats as many random one-token
    extensions (:func:`~autointerp.audit.triggers.grow`)."""
    grow_shortlist: int = 2048
    """each growth step reads only the best tokens of the weight and token scans, this many of
    each, beside the byte fragments and a random reference draw (0: the whole vocabulary; a
    tenth of the cost; :class:`~autointerp.audit.scans.Shortlist`)."""
    pool: int = 16
    beam: int = 4
    max_len: int = 3
    gcg_steps: int = 16
    """steps of the gradient-guided search, run only when no candidate of growth and the beam search
    is confirmed (0: never)."""
    screen_prompts: int = 6
    confirm_prompts: int = 32
    confirm: int = 4
    controls: int = 8
    describe: int = 3
    """suspicious features steered into ordinary prompts to show what they make the suspect say (the
    flagged ones first, then the best explaining ones)."""
    describe_prompts: int = 16
    describe_tokens: int = 16
    flag_features: int = 0
    """most-changed features given the watchlist's feature-level flag (0: that stage is skipped)."""
    watchlist: str | None = "default"
    """the watchlist of the ``describe`` and ``flag`` stages: ``default`` (the built-in one), a YAML
    file, or None (no concepts: the second opinion is skipped)."""
    device: str = "cpu"
    threads: int | None = None

    def fingerprint(self) -> dict:
        """The settings that change a result (device and threads do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "threads")}


@dataclass
class AuditContext:
    suspect: str
    base: str
    out: Path
    settings: AuditSettings
    progress: bool = True
    _pair: object = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        from autointerp.runfolder import RunFolder

        return RunFolder(self.out).audit

    @property
    def corpus(self) -> str:
        return self.settings.corpus or default_corpus()

    def record(self, stage: str) -> dict | None:
        path = self.folder / "stages" / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def pair(self):
        if self._pair is None:
            from autointerp.behaviour.divergence import ModelPair

            self._pair = ModelPair.load(self.suspect, self.base, device=self.settings.device)
        return self._pair


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    tmp.replace(path)


def _identity(suspect: str, base: str, settings: AuditSettings) -> dict:
    from autointerp.models import resolve

    return {"suspect": resolve(suspect)[1], "base": resolve(base)[1], "settings": settings.fingerprint()}


def audit(suspect: str, base: str, out: str | Path, settings: AuditSettings | None = None, *,
          until: str | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the audit of ``suspect`` against ``base`` in folder ``out``; returns the
    verdict (``OUT/audit/audit.json``) once the ``verdict`` stage has run, else the stage figures."""
    import shutil

    from autointerp.audit import stages

    settings = settings or AuditSettings()
    if until is not None and until not in STAGES:
        raise AuditError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    ctx = AuditContext(suspect, base, Path(out), settings, progress)
    ident = _identity(suspect, base, settings)
    id_path = ctx.folder / "identity.json"
    if id_path.is_file():
        before = json.loads(id_path.read_text())
        if before != ident:
            if not force:
                changed = [k for k in ("suspect", "base") if before.get(k) != ident[k]]
                changed += [f"settings.{k}" for k, v in ident["settings"].items()
                            if before.get("settings", {}).get(k) != v]
                raise AuditError(f"{ctx.out} holds an audit with other models or settings ({', '.join(changed)}); "
                                 f"--force starts it over")
            shutil.rmtree(ctx.out)
    elif ctx.out.exists() and any(ctx.out.iterdir()) and not force:
        raise AuditError(f"{ctx.out} exists and holds no audit: choose another --out (or --force to replace it)")
    elif ctx.out.exists() and force:
        shutil.rmtree(ctx.out)
    _write(id_path, ident)
    figures = {}
    last = STAGES.index(until) if until else len(STAGES) - 1
    for name in STAGES[:last + 1]:
        rec = ctx.record(name)
        if rec is not None:
            figures[name] = rec["figures"]
            continue
        print(f"== audit stage {name}", flush=True)
        t = time.time()
        figures[name] = getattr(stages, f"stage_{name}")(ctx)
        _write(ctx.folder / "stages" / f"{name}.json",
               {"seconds": round(time.time() - t, 1), "figures": figures[name]})
    return load_audit(ctx.out) if (ctx.folder / "audit.json").is_file() else figures


def load_audit(out: str | Path) -> dict:
    """The verdict of a finished audit (``OUT/audit/audit.json``)."""
    path = Path(out) / "audit" / "audit.json"
    if not path.is_file():
        raise AuditError(f"{out} holds no finished audit ({path} missing)")
    return json.loads(path.read_text())

