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
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp.config import RunConfig, diff_configs, dump_config, load_config, to_dict
from autointerp.runfolder import RunFolder

log = logging.getLogger("autointerp.run")

RUN_FORMAT = 1
"""version of the run folder layout; a folder of another version is refused."""


class RunError(RuntimeError):
    """A run that cannot go on as asked (different config, foreign folder, failed stage)."""


# ---------------------------------------------------------------------------------- context
@dataclass
class RunContext:
    """What the stages share: the config, the folder, and models loaded once per job."""

    cfg: RunConfig
    run: RunFolder
    progress: bool = True
    _models: dict[str, Any] = field(default_factory=dict)

    def model(self):
        """The subject model as a TransformerBridge (loaded on first use)."""
        if "subject" not in self._models:
            from autointerp.models import load_model

            self._models["subject"] = load_model(self.cfg.model, device=self.cfg.device)
        return self._models["subject"]

    def client(self):
        """The LLM client of ``explain.client`` (loaded on first use)."""
        if "client" not in self._models:
            c = self.cfg.explain.client
            if c.endpoint:
                from autointerp.llm import OpenAICompatibleClient

                self._models["client"] = OpenAICompatibleClient(
                    c.endpoint, c.endpoint_model, api_key_env=c.api_key_env, concurrency=self.cfg.explain.concurrency,
                    timeout_s=c.timeout_s, max_retries=c.retries, tokenizer=c.endpoint_tokenizer)
            else:
                from autointerp.llm import LocalClient

                self._models["client"] = LocalClient(c.model or self.cfg.model, device=self.cfg.device,
                                                     batch_size=self.cfg.explain.concurrency)
        return self._models["client"]

    def dictionaries(self) -> list[Path]:
        dirs = self.run.dictionary_dirs()
        if not dirs:
            raise RunError(f"{self.run.dictionaries} holds no trained dictionary: stage train has not run")
        return dirs


# ----------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One stage: ``run(ctx) -> figures`` (a JSON-able dict) and ``clear(ctx)`` of its output."""

    name: str
    fields: tuple[str, ...]
    """config paths whose values the stage's output depends on."""
    upstream: tuple[str, ...]
    run: Callable[[RunContext], dict]
    clear: Callable[[RunContext], None]


def _resolve_hookpoints(names: list[str], n_layers: int) -> list[str]:
    return [f"blocks.{n_layers // 2}.hook_out" if h == "mid" else h for h in names]


def _run_cache(ctx: RunContext) -> dict:
    from autointerp.activations import cache_activations, read_manifest

    c, t = ctx.cfg.cache, ctx.cfg.train
    model = ctx.model()
    hookpoints = _resolve_hookpoints(c.hookpoints, model.n_layers)
    if t.dictionary:  # a published dictionary: its hook point, checked before anything is cached
        from autointerp.published import model_hookpoint

        hookpoints = [model_hookpoint(t.dictionary, model, ctx.cfg.model, t.dictionary_hookpoint)]
    cache_cfg = c.job(ctx.cfg.model, ctx.cfg.device, hookpoints)
    folders = cache_activations(cache_cfg, ctx.run.activations, model=model)
    figures = {}
    for hp, folder in folders.items():
        m = read_manifest(folder)
        figures[hp] = {"tokens": m["tokens"], "shards": len(m["shards"]), "corpus_exhausted": m["corpus_exhausted"]}
        if m["corpus_exhausted"]:
            log.warning("cache: the corpus ran out at %d tokens (asked for %d)", m["tokens"], c.tokens)
    return {"hookpoints": figures}


def _cache_folders(ctx: RunContext) -> list[str]:
    record = _read_json(ctx.run.stage_record("cache"))
    if record is None:
        raise RunError("stage cache has not finished")
    return [str(ctx.run.activations / hp) for hp in record["figures"]["hookpoints"]]


def _run_train(ctx: RunContext) -> dict:
    from autointerp.training import train_from_cache

    if ctx.cfg.train.dictionary:
        from autointerp.published import import_dictionary

        folder = import_dictionary(ctx.cfg.train.dictionary, _cache_folders(ctx)[0], ctx.run.dictionaries)
        return {"dictionaries": {folder.name: {"imported_from": ctx.cfg.train.dictionary}}}
    job = ctx.cfg.train.job(_cache_folders(ctx), str(ctx.run.dictionaries))
    trained = train_from_cache(job, resume=True, progress=ctx.progress)
    out = {}
    for name, tr in trained.items():
        m = tr.metrics
        out[name] = {k: m.get(k) for k in ("fvu", "l0", "dead_fraction", "steps", "tokens")}
        for w in m.get("warnings", []):
            log.warning("train %s: %s", name, w)
    return {"dictionaries": out}


def _run_evaluate(ctx: RunContext) -> dict:
    from autointerp.evaluate import evaluate_dictionary

    e = ctx.cfg.evaluate
    model = ctx.model() if e.downstream else None
    out = {}
    for folder in ctx.dictionaries():
        m = evaluate_dictionary(folder, model=model, downstream_contexts=e.contexts)
        out[folder.name] = {k: m.get(k) for k in ("fvu", "l0", "dead_fraction", "dense_fraction",
                                                    "ce_recovered_zero", "ce_recovered_mean", "kl_clean_to_dict")}
    return {"dictionaries": out}


def _run_examples(ctx: RunContext) -> dict:
    from autointerp.featuredb import FeatureDB
    from autointerp.interpret import dictionary_name, prepare_features

    ecfg = ctx.cfg.examples.job()
    out = {}
    for folder in ctx.dictionaries():
        prepare_features(folder, ctx.run.db, ecfg, progress=ctx.progress, device=ctx.cfg.device)
        with FeatureDB(ctx.run.db) as db:
            rows = db.features(dictionary_name(folder))
        out[folder.name] = {"features": len(rows), "alive": sum(not r["dead"] for r in rows)}
    return {"dictionaries": out}


def _check_deadline(stage: str, counts, deadline: float | None) -> None:
    """A stage whose deadline stopped requests does not finish: its rows are stored as ``timeout``
    and the next ``autointerp run`` redoes them."""
    if deadline is not None and counts.deadline_passed and counts.failed:
        raise RunError(f"stage {stage}: its deadline of {deadline:g}s passed with {counts.failed} item(s) stored "
                       f"as failed (timeout). Run again to finish them (nothing done is redone)")


def _run_explain(ctx: RunContext) -> dict:
    from autointerp import interpret
    from autointerp.featuredb import FeatureDB

    x = ctx.cfg.explain
    for folder in ctx.dictionaries():
        for name in x.explainers:
            baseline = name == interpret.BASELINE_EXPLAINER
            count = x.features if baseline else x.llm_features
            counts = interpret.explain(ctx.run.db, folder, name, client=None if baseline else ctx.client(),
                                       features=interpret.FeatureSelection(count=count) if count else None,
                                       concurrency=x.concurrency, progress=ctx.progress,
                                       deadline=None if baseline else x.client.deadline_s)
            _check_deadline("explain", counts, None if baseline else x.client.deadline_s)
            if counts.failed:
                log.warning("explain %s/%s: %d explanations failed (stored with their status)",
                            folder.name, name, counts.failed)
    with FeatureDB(ctx.run.db) as db:  # what the store holds, this call's work and a resumed one's alike
        rows = db.con.execute("SELECT explainer, status, COUNT(*) FROM explanations GROUP BY explainer, status")
        out: dict[str, dict] = {}
        for explainer, status, n in rows:
            out.setdefault(explainer, {})[status] = n
    return {"explanations": out}


def _run_score(ctx: RunContext) -> dict:
    from autointerp import interpret

    s = ctx.cfg.score
    for folder in ctx.dictionaries():
        for name in s.scorers:
            client = None if name == "embedding" else ctx.client()
            deadline = None if client is None else ctx.cfg.explain.client.deadline_s
            counts = interpret.score(ctx.run.db, folder, name, client=client, seed=s.seed, progress=ctx.progress,
                                     deadline=deadline)
            _check_deadline("score", counts, deadline)
            if counts.failed:
                log.warning("score %s/%s: %d scores failed (stored with their status)", folder.name, name,
                            counts.failed)
    return {"summary": interpret.summary(ctx.run.db)}


def _run_report(ctx: RunContext) -> dict:
    from autointerp.report import build_report

    pages = ctx.cfg.report.feature_pages
    path = build_report(ctx.run.root, progress=ctx.progress, feature_pages=int(pages) if pages.isdigit() else pages)
    n_pages = len(list(ctx.run.feature_pages.glob("*.html"))) if ctx.run.feature_pages.is_dir() else 0
    return {"report": str(path), "feature_pages": n_pages}


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _clear_db_rows(ctx: RunContext, tables: tuple[str, ...]) -> None:
    from autointerp.featuredb import FeatureDB

    if ctx.run.db.exists():
        with FeatureDB(ctx.run.db) as db, db.transaction():
            for table in tables:
                db.con.execute(f"DELETE FROM {table}")


def _clear_evaluation(ctx: RunContext) -> None:
    for folder in ctx.run.dictionary_dirs():
        metrics = folder / "metrics.json"
        if metrics.exists():
            data = json.loads(metrics.read_text())
            data.pop("evaluation", None)
            metrics.write_text(json.dumps(data, indent=2, sort_keys=True))


def _clear_report(ctx: RunContext) -> None:
    for path in (ctx.run.report, ctx.run.feature_pages, ctx.run.assets):
        _rm(path)


STAGES: tuple[Stage, ...] = (
    Stage("cache", ("model", "cache", "train.dictionary", "train.dictionary_hookpoint"), (), _run_cache,
          lambda ctx: _rm(ctx.run.activations)),
    Stage("train", ("train",), ("cache",), _run_train, lambda ctx: _rm(ctx.run.dictionaries)),
    Stage("evaluate", ("evaluate",), ("train",), _run_evaluate, _clear_evaluation),
    Stage("examples", ("examples",), ("train",), _run_examples, lambda ctx: _rm(ctx.run.db)),
    Stage("explain", ("explain",), ("examples",), _run_explain,
          lambda ctx: _clear_db_rows(ctx, ("scores", "explanations"))),
    Stage("score", ("score", "explain.client"), ("explain",), _run_score, lambda ctx: _clear_db_rows(ctx, ("scores",))),
    Stage("report", ("report",), ("evaluate", "score"), _run_report, _clear_report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


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


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a record torn by a kill counts as absent: the stage runs again


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
        rec = _read_json(run.stage_record(stage.name))
        started = _read_json(run.stage_record(f"{stage.name}.started"))
        if rec is not None:
            out[stage.name] = "done" if rec["fingerprint"] == fps[stage.name] else "stale"
        else:
            out[stage.name] = "started" if started is not None else "todo"
    return out


def _check_folder(run: RunFolder, cfg: RunConfig, update: bool) -> None:
    """Refuse a folder that is not a run of this format, or one made with another config (unless ``update``)."""
    if not run.root.exists() or not any(p != run.audit for p in run.root.iterdir()):
        return  # new, empty, or holding only the audit that runs this job (autointerp audit)
    meta = _read_json(run.stages / "run.json")
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
    record, started = _read_json(record_path), _read_json(started_path)
    if not force and record is not None and record["fingerprint"] == fingerprint:
        log.info("stage %s: done already (%.1fs), skipped", stage.name, record["seconds"])
        return record["figures"]
    stale = force or (record is not None and record["fingerprint"] != fingerprint) or \
        (started is not None and started["fingerprint"] != fingerprint)
    _rm(record_path)
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
    _rm(started_path)
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
