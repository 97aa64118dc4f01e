"""The stages of ``autointerp run`` (:mod:`autointerp.pipeline` runs them): what each reads from
the config, which stages it builds on, how it runs on the :class:`RunContext` the stages share,
and how its output is cleared before a redo."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp.config import RunConfig
from autointerp.runfolder import RunFolder

log = logging.getLogger("autointerp.run")


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
    record = read_json(ctx.run.stage_record("cache"))
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
    from autointerp.dictionary_folder import dictionary_name
    from autointerp.interpret import prepare_features

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
    from autointerp.selection import FeatureSelection
    from autointerp.featuredb import FeatureDB

    x = ctx.cfg.explain
    for folder in ctx.dictionaries():
        for name in x.explainers:
            baseline = name == interpret.BASELINE_EXPLAINER
            count = x.features if baseline else x.llm_features
            counts = interpret.explain(ctx.run.db, folder, name, client=None if baseline else ctx.client(),
                                       features=FeatureSelection(count=count) if count else None,
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


def read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a record torn by a kill counts as absent: the stage runs again


def remove_path(path: Path) -> None:
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
        remove_path(path)


STAGES: tuple[Stage, ...] = (
    Stage("cache", ("model", "cache", "train.dictionary", "train.dictionary_hookpoint"), (), _run_cache,
          lambda ctx: remove_path(ctx.run.activations)),
    Stage("train", ("train",), ("cache",), _run_train, lambda ctx: remove_path(ctx.run.dictionaries)),
    Stage("evaluate", ("evaluate",), ("train",), _run_evaluate, _clear_evaluation),
    Stage("examples", ("examples",), ("train",), _run_examples, lambda ctx: remove_path(ctx.run.db)),
    Stage("explain", ("explain",), ("examples",), _run_explain,
          lambda ctx: _clear_db_rows(ctx, ("scores", "explanations"))),
    Stage("score", ("score", "explain.client"), ("explain",), _run_score, lambda ctx: _clear_db_rows(ctx, ("scores",))),
    Stage("report", ("report",), ("evaluate", "score"), _run_report, _clear_report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
