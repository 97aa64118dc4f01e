"""``autointerp run``: the stages of the main job, resumable, in one run folder.

Stages, in order (``STAGES``)::

    cache -> train -> evaluate -> examples -> explain -> score -> report

Each stage has a *fingerprint*: a hash of the config fields it reads and of the fingerprints of
the stages it reads from (``Stage.fields`` and ``Stage.upstream``). A finished stage writes
``stages/<name>.json`` (fingerprint, seconds, figures); a started one first writes
``stages/<name>.started.json``. Running a job again:

- a stage whose record holds the current fingerprint is skipped;
- a stage that was started but not finished (the job was killed) runs again *without* clearing
  its output: every stage's own work is resumable (cache shards, training checkpoints, rows of
  features.db), so nothing done is lost and nothing is duplicated;
- a stage whose record or start marker holds another fingerprint (its config fields or an
  upstream stage changed) has its output cleared, then runs; so changing ``explain.llm_features``
  redoes explain, score and report, and leaves cache, train, evaluate and examples alone;
- ``from_stage`` redoes that stage and every later one.

A run folder made with a different config is never changed silently: unless ``update`` is
given, :func:`run` refuses with the list of changed fields and the finished stages they would
redo. Fields that change no result (``device``, ``threads``) are in no fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autointerp.config import RunConfig, diff_configs, dump_config, load_config, to_dict
from autointerp.run_stages import STAGE_NAMES, STAGES, RunContext, RunError, Stage  # noqa: F401  (re-exported)
from autointerp.run_stages import read_json, remove_path
from autointerp.runfolder import RunFolder

log = logging.getLogger("autointerp.run")

RUN_FORMAT = 1
"""version of the run folder layout; a folder of another version is refused."""


# ------------------------------------------------------------------------------ bookkeeping
def _get(cfg: dict, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node


ADDED_FIELDS = ("train.dictionary", "train.dictionary_hookpoint", "explain.client.endpoint_tokenizer")
"""config fields added after run folders of this format existed: left out of every fingerprint
while unset (None), so that a run made before them stays finished (not stale)."""
OPERATIONAL_FIELDS = ("explain.client.timeout_s", "explain.client.retries", "explain.client.deadline_s")
"""config fields that bound how long a stage may take, never what it computes: in no fingerprint."""


def _pop(data: dict, path: str) -> None:
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[key]


def _has(data: dict, path: str) -> bool:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def fingerprints(cfg: RunConfig) -> dict[str, str]:
    """Each stage's fingerprint under ``cfg`` (module docstring)."""
    data = to_dict(cfg)
    for path in ADDED_FIELDS:
        if _has(data, path) and _get(data, path) is None:
            _pop(data, path)
    for path in OPERATIONAL_FIELDS:
        if _has(data, path):
            _pop(data, path)
    out: dict[str, str] = {}
    for stage in STAGES:
        payload = {"fields": {p: _get(data, p) for p in stage.fields if _has(data, p)},
                   "upstream": {u: out[u] for u in stage.upstream}, "format": RUN_FORMAT}
        out[stage.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return out


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def stage_status(root: str | Path, cfg: RunConfig | None = None) -> dict[str, str]:
    """``{stage: "done" | "stale" | "started" | "todo"}`` of a run folder (under ``cfg``, default: its own)."""
    run = RunFolder(root)
    cfg = cfg if cfg is not None else load_config(run.config)
    fps = fingerprints(cfg)
    out = {}
    for stage in STAGES:
        rec = read_json(run.stage_record(stage.name))
        started = read_json(run.stage_record(f"{stage.name}.started"))
        if rec is not None:
            out[stage.name] = "done" if rec["fingerprint"] == fps[stage.name] else "stale"
        else:
            out[stage.name] = "started" if started is not None else "todo"
    return out


def _check_folder(run: RunFolder, cfg: RunConfig, update: bool) -> None:
    """Refuse a folder that is not a run of this format, or one made with another config (unless ``update``)."""
    if not run.root.exists() or not any(p != run.audit for p in run.root.iterdir()):
        return  # new, empty, or holding only the audit that runs this job (autointerp audit)
    meta = read_json(run.stages / "run.json")
    if not run.config.exists() or meta is None:
        raise RunError(f"{run.root} exists and is not an autointerp run folder (no config.yaml / stages/run.json); "
                       "choose an empty or new folder")
    if meta.get("format") != RUN_FORMAT:
        raise RunError(f"{run.root} is a run folder of format {meta.get('format')}, this autointerp writes format "
                       f"{RUN_FORMAT}; start a new run folder (nothing was changed)")
    old = load_config(run.config)
    changed = diff_configs(to_dict(old), to_dict(cfg))
    if not changed:
        return
    status = stage_status(run.root, cfg)
    redo = [s for s, st in status.items() if st == "stale"]
    if redo and not update:
        raise RunError(f"{run.root} was made with a different config (changed: {', '.join(changed)}); it would redo "
                       f"the finished stages {', '.join(redo)}. Pass --update to redo them there, or choose "
                       "another run folder (nothing was changed)")


# ------------------------------------------------------------------------------------- run
@contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    """``run.log`` receives the autointerp loggers' INFO records for the duration; the logger's
    own level is restored afterwards (a run inside a notebook or a test leaves no trace)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("autointerp")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run(cfg: RunConfig, root: str | Path, *, from_stage: str | None = None, until: str | None = None,
        update: bool = False, progress: bool = True) -> dict[str, dict]:
    """Run the job of ``cfg`` in run folder ``root`` (module docstring); returns each stage's figures."""
    for name in (from_stage, until):
        if name is not None and name not in STAGE_NAMES:
            raise RunError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    run_folder = RunFolder(root)
    _check_folder(run_folder, cfg, update)
    run_folder.root.mkdir(parents=True, exist_ok=True)
    _write_json(run_folder.stages / "run.json", {"format": RUN_FORMAT})
    run_folder.config.write_text(dump_config(cfg))
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    ctx = RunContext(cfg, run_folder, progress=progress)
    fps = fingerprints(cfg)
    redo_from = STAGE_NAMES.index(from_stage) if from_stage else len(STAGES)
    last = STAGE_NAMES.index(until) if until else len(STAGES) - 1
    figures: dict[str, dict] = {}
    with _log_to_file(run_folder.log):
        log.info("run %s: stages %s", run_folder.root, ", ".join(STAGE_NAMES[:last + 1]))
        for i, stage in enumerate(STAGES[:last + 1]):
            figures[stage.name] = _run_stage(ctx, stage, fps[stage.name], force=i >= redo_from)
    return figures


def _run_stage(ctx: RunContext, stage: Stage, fingerprint: str, force: bool) -> dict:
    record_path = ctx.run.stage_record(stage.name)
    started_path = ctx.run.stage_record(f"{stage.name}.started")
    record, started = read_json(record_path), read_json(started_path)
    if not force and record is not None and record["fingerprint"] == fingerprint:
        log.info("stage %s: done already (%.1fs), skipped", stage.name, record["seconds"])
        return record["figures"]
    stale = force or (record is not None and record["fingerprint"] != fingerprint) or \
        (started is not None and started["fingerprint"] != fingerprint)
    remove_path(record_path)
    if stale:
        log.info("stage %s: clearing the output of an earlier config", stage.name)
        stage.clear(ctx)
    elif started is not None:
        log.info("stage %s: resuming an unfinished run", stage.name)
    _write_json(started_path, {"fingerprint": fingerprint})
    print(f"== stage {stage.name}", flush=True)
    t0 = time.time()
    try:
        figures = stage.run(ctx)
    except RunError as exc:  # the stage stopped itself (a deadline): its message says what to do
        log.error("stage %s stopped after %.1fs: %s", stage.name, time.time() - t0, exc)
        raise
    except ValueError as exc:  # bad input met by the stage: one clear message, no traceback
        log.error("stage %s failed after %.1fs: %s", stage.name, time.time() - t0, exc)
        raise RunError(f"stage {stage.name}: {exc} (the run resumes from here once fixed)") from exc
    except Exception:
        log.exception("stage %s failed after %.1fs", stage.name, time.time() - t0)
        raise
    seconds = time.time() - t0
    _write_json(record_path, {"fingerprint": fingerprint, "seconds": round(seconds, 2), "figures": figures})
    remove_path(started_path)
    log.info("stage %s: finished in %.1fs: %s", stage.name, seconds, json.dumps(figures, sort_keys=True))
    return figures


# ---------------------------------------------------------------------------------- summary
def summary_line(root: str | Path) -> str:
    """One line on a finished run: features alive, FVU, CE recovered, median score vs control, report."""
    from autointerp.featuredb import FeatureDB
    from autointerp.interpret import summary

    run = RunFolder(root)
    parts = []
    with FeatureDB(run.db) as db:
        feats = db.features()
    parts.append(f"{sum(not f['dead'] for f in feats):,}/{len(feats):,} features alive")
    for folder in run.dictionary_dirs():
        ev = json.loads((folder / "metrics.json").read_text()).get("evaluation", {})
        item = f"{folder.name}: FVU {ev['fvu']:.3f}" if "fvu" in ev else f"{folder.name}: not evaluated"
        if "ce_recovered_zero" in ev:
            item += f", CE recovered {ev['ce_recovered_zero']:.3f}"
        parts.append(item)
    for scorer, by_control in summary(run.db).items():
        med = {c: by_control[c]["median"] for c in by_control}
        fmt = {c: "n/a" if v is None else f"{v:.3f}" for c, v in med.items()}
        parts.append(f"{scorer} median {fmt['none']} (n={by_control['none']['n']}) vs random-explanation control "
                     f"{fmt['random_explanation']}")
    parts.append(f"report: {run.report}")
    return "; ".join(parts)
