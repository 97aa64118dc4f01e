"""``autointerp`` commands fetch, hookpoints, cache: the model's assets and its activations."""

from __future__ import annotations

import argparse
import time

from autointerp.cli.registry import UserError, _threads, command


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
