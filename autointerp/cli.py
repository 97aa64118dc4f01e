"""The ``autointerp`` command line. Each subcommand is a function registered with ``@command``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> exit code`` as subcommand ``name`` with its argument set-up."""
    def deco(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (configure, fn)
        return fn
    return deco


_OVERRIDABLE = ("run", "config")
"""commands that take ``--section.field VALUE`` config overrides after their own flags."""


class UserError(Exception):
    """An error caused by the user's input: printed as one clear message, exit code 2."""


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------- fetch
def _fetch_args(p: argparse.ArgumentParser) -> None:
    from autointerp.models import ASSETS

    p.add_argument("assets", nargs="*", default=sorted(ASSETS), help=f"assets to fetch (default: all of {sorted(ASSETS)})")


@command("fetch", _fetch_args)
def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch the embedded assets (default model, embedding model) into the user cache, once."""
    from autointerp.models import ASSETS, MODEL_ALIASES, resolve

    for name in args.assets:
        if name not in ASSETS:
            raise UserError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
        t = time.time()
        path = resolve(name)[0] if name in MODEL_ALIASES else ASSETS[name].ensure()
        print(f"{name}: {path} ({time.time() - t:.1f}s)")
    return 0


# ----------------------------------------------------------------------------------- hookpoints
def _hookpoints_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model spec (alias, .gguf, folder, cached hub id)")
    p.add_argument("--filter", default=None, help="only names containing this substring")
    p.add_argument("--device", default="cpu")


@command("hookpoints", _hookpoints_args)
def cmd_hookpoints(args: argparse.Namespace) -> int:
    """List the model's TransformerLens hook points with the shapes they produce (batch 1, 4 tokens)."""
    from autointerp.models import hookpoint_shapes, load_model

    model = load_model(args.model, device=args.device)
    rows = [(n, s) for n, s in hookpoint_shapes(model) if args.filter is None or args.filter in n]
    width = max((len(n) for n, _ in rows), default=10)
    for name, shape in rows:
        print(f"{name:<{width}}  {list(shape)}")
    print(f"# {len(rows)} hook points; model {args.model}: {model.n_layers} layers, d_model {model.d_model}")
    return 0


# ---------------------------------------------------------------------------------------- cache
def _cache_args(p: argparse.ArgumentParser) -> None:
    from autointerp.activations import CacheConfig
    from autointerp.data import ContextConfig, ExclusionRules

    d, c, e = CacheConfig(), ContextConfig(), ExclusionRules()
    p.add_argument("--model", default=d.model, help="model spec (alias, .gguf, folder, cached hub id)")
    p.add_argument("--hookpoints", default=",".join(d.hookpoints), help="comma-separated hook point names")
    p.add_argument("--corpus", default=d.corpus, help="python-stdlib, a .txt/.jsonl/.parquet file, or a folder")
    p.add_argument("--text-field", default=c.text_field, help="text field/column of JSONL, Parquet, datasets corpora")
    p.add_argument("--tokens", type=int, default=d.tokens, help="activation rows to cache (after exclusions)")
    p.add_argument("--out", required=True, help="output folder; one sub-folder per hook point")
    p.add_argument("--ctx-len", type=int, default=c.ctx_len, help="tokens per context")
    p.add_argument("--packing", choices=["packed", "document"], default=c.packing)
    p.add_argument("--no-bos", action="store_true", help="do not start contexts with BOS")
    p.add_argument("--exclude-first", type=int, default=e.first_positions,
                   help="drop the first N positions of every context (attention sinks)")
    p.add_argument("--keep-special", action="store_true", help="keep special tokens (BOS, separators, padding)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="contexts per forward pass")
    p.add_argument("--shard-contexts", type=int, default=d.shard_contexts, help="contexts per shard")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=d.dtype, help="storage dtype")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache of another config")


@command("cache", _cache_args)
def cmd_cache(args: argparse.Namespace) -> int:
    """Cache activations at hook points into sharded safetensors; resumes where a killed run stopped."""
    from autointerp.activations import CacheConfig, cache_activations, read_manifest
    from autointerp.data import ContextConfig, ExclusionRules
    from autointerp.distributed import init_from_env

    _threads(args.threads)
    rank, world = init_from_env()
    try:
        cfg = CacheConfig(
            model=args.model, hookpoints=[h.strip() for h in args.hookpoints.split(",") if h.strip()],
            corpus=args.corpus, tokens=args.tokens, batch_size=args.batch_size, shard_contexts=args.shard_contexts,
            dtype=args.dtype, device=args.device,
            context=ContextConfig(ctx_len=args.ctx_len, packing=args.packing, prepend_bos=not args.no_bos,
                                  text_field=args.text_field,
                                  exclude=ExclusionRules(special_tokens=not args.keep_special,
                                                         first_positions=args.exclude_first)))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    t = time.time()
    folders = cache_activations(cfg, args.out)
    if rank == 0:
        for hp, folder in folders.items():
            m = read_manifest(folder)
            note = f" (corpus exhausted: asked for {cfg.tokens})" if m["corpus_exhausted"] else ""
            print(f"{hp}: {m['tokens']:,} tokens x d={m['d']} in {len(m['shards'])} shards -> {folder}{note}")
        print(f"done in {time.time() - t:.1f}s")
    return 0


# ---------------------------------------------------------------------------------------- train
def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _train_args(p: argparse.ArgumentParser) -> None:
    from autointerp.training import TrainJob

    d = TrainJob(activations=["x"], out="x")
    p.add_argument("--activations", required=True, action="append",
                   help="cache folder of a hook point (repeat, or comma-separate, for several)")
    p.add_argument("--out", required=True, help="dictionaries root; each dictionary goes to OUT/<hookpoint>/")
    p.add_argument("--arch", default=d.arch, help="relu, topk, batchtopk, jumprelu (or a registered name)")
    p.add_argument("--latents", type=_int_list, default=d.latents, help="dictionary size(s), e.g. 4608 or 4608,9216")
    p.add_argument("--k", type=_int_list, default=d.k, help="active latents per token (TopK family), e.g. 32 or 16,32")
    p.add_argument("--target", default=None, help="cache folder of a target hook point: train transcoders")
    p.add_argument("--skip", action="store_true", help="transcoder with a linear skip connection")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--heldout-tokens", type=int, default=d.heldout_tokens, help="trailing cache tokens never trained on")
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(latents / 16384)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--threads", type=int, default=None)


@command("train", _train_args)
def cmd_train(args: argparse.Namespace) -> int:
    """Train sparse dictionaries (SAEs or transcoders) on cached activations, all from one read."""
    from autointerp.distributed import init_from_env
    from autointerp.training import TrainJob, train_from_cache

    _threads(args.threads)
    init_from_env()
    folders = [f.strip() for a in args.activations for f in a.split(",") if f.strip()]
    try:
        job = TrainJob(activations=folders, out=args.out, arch=args.arch, latents=args.latents, k=args.k,
                       target=args.target, skip_connection=args.skip, batch_size=args.batch_size,
                       epochs=args.epochs, heldout_tokens=args.heldout_tokens, lr=args.lr, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)
        trained = train_from_cache(job, resume=args.resume)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    for name, t in trained.items():
        m = t.metrics
        print(f"{name}: fvu {m.get('fvu', float('nan')):.4f}  l0 {m.get('l0', float('nan')):.1f}  "
              f"dead {m.get('dead_fraction', float('nan')):.2%} -> {t.path}")
        for w in m.get("warnings", []):
            print(f"  WARNING: {w}")
    return 0


# ------------------------------------------------------------------------------------- evaluate
def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dictionaries", nargs="+", help="dictionary folders written by `autointerp train`")
    p.add_argument("--no-downstream", action="store_true", help="skip the model-based CE/KL metrics")
    p.add_argument("--contexts", type=int, default=64, help="held-out contexts for the downstream metrics")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)


@command("evaluate", _evaluate_args)
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Held-out FVU, L0, dead/dense fractions and CE-loss recovered; writes metrics.json beside each dictionary."""
    import json

    from autointerp.evaluate import evaluate_dictionary
    from autointerp.models import load_model

    _threads(args.threads)
    models: dict[str, object] = {}
    for folder in args.dictionaries:
        model = None
        if not args.no_downstream:
            spec = json.loads((Path(folder) / "autointerp.json").read_text())["model"]["spec"]
            model = models.setdefault(spec, load_model(spec, device=args.device))
        m = evaluate_dictionary(folder, model=model, downstream_contexts=args.contexts)
        line = f"{folder}: fvu {m['fvu']:.4f}  l0 {m['l0']:.1f}  dead {m['dead_fraction']:.2%}"
        if "ce_recovered_zero" in m:
            line += (f"  CE clean {m['ce_clean']:.3f} dict {m['ce_dict']:.3f}  recovered (zero) "
                     f"{m['ce_recovered_zero']:.3f} (mean) {m['ce_recovered_mean']:.3f}  KL {m['kl_clean_to_dict']:.3f}")
        print(line)
    return 0


# ------------------------------------------------------------------------------ explain / score
def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dictionary", help="dictionary folder written by `autointerp train`")
    p.add_argument("--db", default=None, help="feature store (default: DICTIONARY/features.db)")
    p.add_argument("--model", default=None,
                   help="local model spec for the LLM client (default: the dictionary's model)")
    p.add_argument("--endpoint", default=None, help="base URL of an OpenAI-compatible API (instead of a local model)")
    p.add_argument("--endpoint-model", default=None, help="model name at --endpoint")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the endpoint's API key (default: send no key)")
    p.add_argument("--features", default=None, help="a count (50: the first 50 live features) or latents (0-9,15)")
    p.add_argument("--device", default="cpu", help="device of the local model and of the example pass")
    p.add_argument("--threads", type=int, default=None)


def _make_client(args: argparse.Namespace, concurrency: int = 1):
    """The LLM client the flags ask for: an endpoint, else a local model (the dictionary's by default)."""
    if args.endpoint is None:
        if args.endpoint_model or args.api_key_env:
            raise UserError("--endpoint-model and --api-key-env need --endpoint")
        from autointerp.interpret import model_spec
        from autointerp.llm import LocalClient

        return LocalClient(args.model or model_spec(args.dictionary), device=args.device, batch_size=max(1, concurrency))
    if args.model:
        raise UserError("give either --model (local) or --endpoint, not both")
    if not args.endpoint_model:
        raise UserError("--endpoint needs --endpoint-model")
    from autointerp.llm import OpenAICompatibleClient

    try:
        return OpenAICompatibleClient(args.endpoint, args.endpoint_model, api_key_env=args.api_key_env,
                                      concurrency=concurrency)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _db_path(args: argparse.Namespace) -> Path:
    if not (Path(args.dictionary) / "autointerp.json").exists():
        raise UserError(f"{args.dictionary} is not a dictionary folder written by `autointerp train`")
    return Path(args.db) if args.db else Path(args.dictionary) / "features.db"


def _explain_args(p: argparse.ArgumentParser) -> None:
    from autointerp.explainers import explainer_names

    p.add_argument("--explainer", default="token-activation", choices=explainer_names(),
                   help="token-enrichment asks no language model")
    _client_args(p)
    p.add_argument("--concurrency", type=int, default=1,
                   help="features explained together: the batch size of a local model, or concurrent requests "
                        "to an endpoint")


@command("explain", _explain_args)
def cmd_explain(args: argparse.Namespace) -> int:
    """Collect held-out examples into the feature store and explain every live feature not yet explained."""
    from autointerp import interpret

    _threads(args.threads)
    db = _db_path(args)
    try:
        sel = interpret.parse_feature_selection(args.features) if args.features else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    interpret.prepare_features(args.dictionary, db, features=sel, device=args.device)
    client = None if args.explainer == interpret.BASELINE_EXPLAINER else _make_client(args, args.concurrency)
    counts = interpret.explain(db, args.dictionary, args.explainer, client=client, features=sel,
                               concurrency=args.concurrency)
    print(f"explain {args.explainer}: {counts.done} done, {counts.failed} failed -> {db}")
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    from autointerp.explainers import explainer_names
    from autointerp.scorers import SCORERS

    p.add_argument("--scorer", default="embedding", choices=sorted(SCORERS), help="embedding asks no language model")
    p.add_argument("--explainer", default=None, choices=explainer_names(),
                   help="score only this explainer's explanations (default: all)")
    _client_args(p)
    p.add_argument("--seed", type=int, default=0, help="picks the random-explanation control")


@command("score", _score_args)
def cmd_score(args: argparse.Namespace) -> int:
    """Score the stored explanations on held-out contexts, with random-explanation and baseline controls."""
    from autointerp import interpret

    _threads(args.threads)
    db = _db_path(args)
    if not db.exists():
        raise UserError(f"{db} does not exist: run `autointerp explain` first")
    try:
        sel = interpret.parse_feature_selection(args.features) if args.features else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    client = None if args.scorer == "embedding" else _make_client(args)
    counts = interpret.score(db, args.dictionary, args.scorer, client=client,
                             explainer_name=args.explainer, features=sel, seed=args.seed)
    line = interpret.format_summary(interpret.summary(db), args.scorer)
    print(f"score {args.scorer}: {counts.done} done, {counts.failed} failed; {line}")
    return 0


# ------------------------------------------------------------------------------------ run
def _run_args(p: argparse.ArgumentParser) -> None:
    from autointerp.pipeline import STAGE_NAMES

    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the embedded defaults)")
    p.add_argument("--out", default="runs/default", help="run folder (default: runs/default)")
    p.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, default=None,
                   help="redo this stage and every later one")
    p.add_argument("--until", choices=STAGE_NAMES, default=None, help="stop after this stage")
    p.add_argument("--model", default=None, help="override the config's subject model")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, ...)")
    p.add_argument("--threads", type=int, default=None, help="override the config's torch CPU threads")
    p.add_argument("--update", action="store_true",
                   help="the run folder was made with another config: redo the stages the changes affect")
    p.epilog = ("Any config field can be overridden with its dotted path, e.g. --train.k 64 "
                "--explain.llm_features 8 (see `autointerp config --print-defaults`).")


@command("run", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    """Run the main job (cache, train, evaluate, examples, explain, score, report); resumes a killed run."""
    from autointerp import pipeline
    from autointerp.config import load_config, parse_overrides

    overrides = {k: v for k, v in (("model", args.model), ("device", args.device), ("threads", args.threads))
                 if v is not None}
    cfg = load_config(args.config, {**overrides, **parse_overrides(args.overrides)})
    t = time.time()
    pipeline.run(cfg, args.out, from_stage=args.from_stage, until=args.until, update=args.update)
    line = pipeline.summary_line(args.out) if (args.until in (None, "report")) else f"stopped after {args.until}"
    print(f"done in {time.time() - t:.0f}s: {line}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--feature-pages", default="explained", help="explained (default), all, or a number N (the first N)")


@command("report", _report_args)
def cmd_report(args: argparse.Namespace) -> int:
    """(Re)write a run folder's report.html and feature pages from what it holds now."""
    from autointerp.report import build_report
    from autointerp.runfolder import RunFolder

    if not RunFolder(args.run).db.exists():
        raise UserError(f"{args.run} has no features.db: run `autointerp run` (at least to the examples stage) first")
    pages = int(args.feature_pages) if args.feature_pages.isdigit() else args.feature_pages
    try:
        print(build_report(args.run, feature_pages=pages))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return 0


def _search_args(p: argparse.ArgumentParser) -> None:
    from autointerp.search import configure_search_args

    configure_search_args(p)


@command("search", _search_args)
def cmd_search(args: argparse.Namespace) -> int:
    """Search a run's features: by meaning of their explanations, by words (--fts), or by firing on a text (--text)."""
    from autointerp.search import run_search

    return run_search(args)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="a YAML config to check and print resolved")
    p.add_argument("--print-defaults", action="store_true", help="print a commented template of every field")


@command("config", _config_args)
def cmd_config(args: argparse.Namespace) -> int:
    """Print the commented default config (--print-defaults), or check a config and print it resolved."""
    from autointerp.config import dump_config, load_config, parse_overrides

    cfg = load_config(None if args.print_defaults else args.config, parse_overrides(args.overrides))
    sys.stdout.write(dump_config(cfg, comments=args.print_defaults))
    return 0


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder made on the fine-tuned model (its cache and dictionary)")
    p.add_argument("--base", default=None,
                   help="the base model: alias, local folder, .gguf or cached hub id (default: the --base-run's)")
    p.add_argument("--base-run", default=None,
                   help="a run of the base model on the same corpus: its cached activations are read instead of "
                        "running the base model")
    p.add_argument("--dictionary", default=None, help="which of the run's dictionaries (when it has several)")
    p.add_argument("--base-dictionary", default=None,
                   help="a dictionary trained on the base model at the same hook point: adds counterpart cosines")
    p.add_argument("--z-min", type=float, default=5.0, help="|z| at which a change counts as significant")
    p.add_argument("--jump-min", type=int, default=3,
                   help="contexts with a jump beyond the base maximum at which a change counts as significant")
    p.add_argument("--rank-by", default="tail", choices=["tail", "frequency"],
                   help="tail: contexts where the fine-tune lifts the feature beyond its base range first; "
                        "frequency: token-level firing change first")
    p.add_argument("--top", type=int, default=20, help="rows of the ranking to print")
    p.add_argument("--device", default="cpu")
    from autointerp.behaviour.cli import configure

    configure(p)


@command("diff", _diff_args)
def cmd_diff(args: argparse.Namespace) -> int:
    """Rank a run's features by how they changed from a base model to the run's own model."""
    from autointerp.diff import DiffError, diff_run, format_diff

    if args.behaviour:
        from autointerp.behaviour import BehaviourError
        from autointerp.behaviour import cli as behaviour_cli

        try:
            print(behaviour_cli.run(args))
        except BehaviourError as exc:
            raise UserError(str(exc)) from exc
        return 0
    try:
        result = diff_run(args.run, args.base, dictionary=args.dictionary, base_dictionary=args.base_dictionary,
                          base_run=args.base_run, z_min=args.z_min, jump_min=args.jump_min, rank_by=args.rank_by,
                          device=args.device)
    except DiffError as exc:
        raise UserError(str(exc)) from exc
    print(format_diff(result, args.top))
    return 0


def _circuit_args(p: argparse.ArgumentParser) -> None:
    from autointerp.circuits.cli import configure

    configure(p)


@command("circuit", _circuit_args)
def cmd_circuit(args: argparse.Namespace) -> int:
    """Attribution graph from a prompt's tokens through the run's features to a feature or logit target."""
    from autointerp.circuits.cli import main as circuit_main

    return circuit_main(args)


def _flag_args(p: argparse.ArgumentParser) -> None:
    from autointerp.flagging.cli import configure

    configure(p)


@command("flag", _flag_args)
def cmd_flag(args: argparse.Namespace) -> int:
    """Flag a run's features that match a watchlist's concepts (similarity, probe AUROC, causal effect, with nulls)."""
    from autointerp.flagging.cli import main as flag_main

    return flag_main(args)


def _audit_args(p: argparse.ArgumentParser) -> None:
    from autointerp.audit.cli import configure

    configure(p)


@command("audit", _audit_args)
def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a suspect model against its base: behaviour diff, trigger discovery, flagged features, verdict."""
    from autointerp.audit import AuditError
    from autointerp.audit.cli import run as audit_run
    from autointerp.behaviour import BehaviourError

    try:
        print(audit_run(args))
    except (AuditError, BehaviourError) as exc:
        raise UserError(str(exc)) from exc
    return 0


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autointerp", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (configure, fn) in _COMMANDS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        configure(sub.add_parser(name, help=doc, description=doc))
    return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``--section.field VALUE`` / ``--section.field=VALUE`` config overrides out of ``argv``."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            take = 1 if "=" in arg else 2
            overrides.extend(argv[i:i + take])
            i += take
        else:
            rest.append(arg)
            i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv, overrides = _split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if overrides and args.command not in _OVERRIDABLE:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from autointerp.activations import CacheError
    from autointerp.config import ConfigError
    from autointerp.featuredb import FeatureDBError
    from autointerp.pipeline import RunError
    from autointerp.search import SearchError
    from autointerp.data import CorpusError
    from autointerp.models import HookPointError, ModelNotFoundError

    from dictionaries import TrainingDivergedError

    try:
        return _COMMANDS[args.command][1](args)
    except (UserError, CacheError, CorpusError, HookPointError, ModelNotFoundError, ConfigError, RunError,
            FeatureDBError, SearchError) as exc:
        print(f"autointerp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"autointerp {args.command}: training diverged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
