"""Model diffing: which features of a dictionary change between a base and a fine-tuned model.

The run ``RUN`` was made on the *fine-tuned* model (its cache holds the fine-tuned model's
activations on the corpus, its dictionary was trained on them). ``diff_run(RUN, base)`` feeds the
same cached contexts through the *base* model, encodes both models' activations at the
dictionary's hook point with the one dictionary, and compares them token by token.

Per latent ``j``, over the ``N`` kept tokens ``t`` (the cache's exclusions apply: attention sinks,
special tokens, the shared prefix the run excluded)::

    fires_m(t)  = z_m(t)_j > 0                        for m in {base, tuned}
    freq_m      = mean_t fires_m(t)
    mean_m      = mean_t z_m(t)_j,   max_m = max_t z_m(t)_j
    n_new       = #{t : fires_tuned(t) and not fires_base(t)}
    n_lost      = #{t : fires_base(t) and not fires_tuned(t)}
    z           = (n_new - n_lost) / sqrt(n_new + n_lost + 1)        (McNemar-like, paired; +1 keeps it finite)
    effect      = (n_new - n_lost) / max(#fires_tuned, #fires_base, 1)   in [-1, 1]

``effect`` = 1 is a latent that fires only in the fine-tuned model (a new feature); -1 one the
fine-tune switched off. ``z`` treats tokens as independent, which they are not (a feature fires in
runs within a context), so it overstates the evidence by up to the square root of the run length:
``z_min`` is a gate, not a calibrated p-value.

The tail statistic, per context ``c`` (the cache's contexts) with ``peak_m(c) = max_{t in c} z_m(t)_j``::

    jump(c) = peak_tuned(c) - peak_base(c)
    n_jump  = #{c : jump(c) > max_base}          (counted among the TOP_JUMPS largest jumps)

``n_jump`` counts the contexts in which the fine-tune raises the latent by more than the base model
ever activates it anywhere in the corpus. A backdoor shows up this way: a trigger that appears in
1% of contexts drives some latent far beyond its base range there, while a fine-tune's broad drift
moves many latents a little in many contexts (large token ``z``, ``n_jump`` ~0). A latent the base
never fires (``max_base = 0``) counts every context where it fires in the fine-tuned model: a new
feature. Memory stays ``TOP_JUMPS x F`` (the largest jumps per latent, merged shard by shard).

Rankings (``rank_by``), registered in :data:`RANKINGS`:

* ``"tail"`` (default): by ``n_jump``, then as ``"frequency"``;
* ``"frequency"``: latents with ``|z| >= z_min`` first, by ``|effect|`` then ``|z|``; the rest by ``|z|``.

A latent is *significant* when ``n_jump >= jump_min`` (default 3) or ``|z| >= z_min`` (default 5);
with two identical models every jump and every ``n_new = n_lost`` is 0, and nothing is. The base
model's activations are recomputed with the cache's batch size, so that an unchanged model
reproduces the cached activations bit for bit; or, with ``base_run``, read from the cache of a run
of the base model on the same corpus (same contexts, same exclusions: checked shard by shard).

Reconstruction: the dictionary's FVU on the base activations beside that on the fine-tuned ones
(the dictionary was trained on the latter; a large gap says the fine-tune moved the
representation). With ``base_dictionary`` (a dictionary trained on the base model's activations
at the same hook point), each latent also gets ``counterpart_cos``: the largest cosine between its
decoder row and any base-dictionary decoder row; below ``0.5`` it has no counterpart in the base.

Results go to ``features.db`` (table ``diffs``, one row per feature) and ``RUN/diff.json`` (the
models, the FVUs, the ranking's top); the report lists the ranking.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from autointerp.runfolder import RunFolder

COUNTERPART_COS = 0.5
TOP_JUMPS = 64
"""The largest per-context jumps kept per latent: ``n_jump`` saturates at this count."""
log = logging.getLogger(__name__)


class DiffError(ValueError):
    """Two models that cannot be diffed (architecture, tokenizer), or a run without a dictionary."""


@dataclass
class DiffResult:
    dictionary: str
    base: str
    tuned: str
    tokens: int
    fvu_base: float
    fvu_tuned: float
    n_significant: int
    rows: list[dict]
    """one dict per latent, in rank order (rank 1 first)."""


def check_compatible(base_folder: Path, tuned_folder: Path) -> None:
    """``DiffError`` unless both model folders share architecture, sizes and tokenizer vocabulary."""
    from transformers import AutoConfig, AutoTokenizer

    cb, ct = AutoConfig.from_pretrained(base_folder), AutoConfig.from_pretrained(tuned_folder)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads"):
        vb, vt = getattr(cb, key, None), getattr(ct, key, None)
        if vb != vt:
            raise DiffError(f"the models differ in {key}: base {vb!r}, fine-tuned {vt!r}; diffing needs the "
                            f"same architecture")
    tb, tt = AutoTokenizer.from_pretrained(base_folder), AutoTokenizer.from_pretrained(tuned_folder)
    if tb.get_vocab() != tt.get_vocab():
        raise DiffError("the models' tokenizers differ (vocabularies are not identical); diffing needs the "
                        "same tokenizer so that both read the same tokens")


def _dictionary_dir(run: RunFolder, dictionary: str | None) -> Path:
    dirs = run.dictionary_dirs()
    if not dirs:
        raise DiffError(f"{run.root} has no trained dictionary (run `autointerp run` on the fine-tuned model first)")
    if dictionary is None:
        if len(dirs) > 1:
            raise DiffError(f"the run has {len(dirs)} dictionaries ({', '.join(d.name for d in dirs)}): name one")
        return dirs[0]
    for d in dirs:
        if d.name == dictionary:
            return d
    raise DiffError(f"no dictionary {dictionary!r} in {run.root} (have {', '.join(d.name for d in dirs)})")


def paired_stats(n_new: np.ndarray, n_lost: np.ndarray, fires_base: np.ndarray,
                 fires_tuned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, effect)`` of the module docstring, per latent."""
    delta = n_new.astype(np.float64) - n_lost
    z = delta / np.sqrt(n_new + n_lost + 1.0)
    effect = delta / np.maximum(np.maximum(fires_base, fires_tuned), 1)
    return z, effect


def _frequency_keys(s: dict, z_min: float) -> list[np.ndarray]:
    significant = np.abs(s["z"]) >= z_min
    key_effect = np.where(significant, np.abs(s["effect"]), 0.0)
    return [-np.abs(s["z"]), -key_effect, ~significant]  # np.lexsort: the last key sorts first


def rank_frequency(s: dict, z_min: float) -> np.ndarray:
    """Token-level frequency change: ``|z| >= z_min`` first, by ``|effect|`` then ``|z|``."""
    return np.lexsort(_frequency_keys(s, z_min))


def rank_tail(s: dict, z_min: float) -> np.ndarray:
    """Context-level tail: by ``n_jump``, ties as :func:`rank_frequency`."""
    return np.lexsort([*_frequency_keys(s, z_min), -s["n_jump"]])


RANKINGS = {"tail": rank_tail, "frequency": rank_frequency}
"""``rank_by`` name -> ``f(stats, z_min) -> order`` (latent indices, rank 1 first); ``stats``
holds ``z``, ``effect``, ``n_jump`` arrays over latents."""


def _check_rank_by(rank_by: str) -> None:
    if rank_by not in RANKINGS:
        raise DiffError(f"unknown ranking {rank_by!r}: use one of {', '.join(RANKINGS)}")


def ranking(stats: dict, z_min: float, rank_by: str = "tail") -> np.ndarray:
    """The rank order of latents under ``rank_by`` (one of :data:`RANKINGS`)."""
    _check_rank_by(rank_by)
    return RANKINGS[rank_by](stats, z_min)


def context_peaks(z_NF: torch.Tensor, ctx_N: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """``[n_ctx, F]`` max of each latent over each context's tokens (0 for a context with none;
    activations are >= 0)."""
    out = torch.zeros(n_ctx, z_NF.shape[1], dtype=z_NF.dtype, device=z_NF.device)
    return out.scatter_reduce_(0, ctx_N[:, None].expand_as(z_NF), z_NF, reduce="amax", include_self=True)


def _base_cache(base_run: str | Path, hook: str, manifest: dict) -> tuple[Path, dict]:
    """The cache folder and manifest of ``base_run`` at ``hook``, checked against the fine-tuned
    run's ``manifest``: same corpus contexts, exclusions and shard layout."""
    from autointerp.activations import read_manifest
    from autointerp.dictionary_folder import provenance

    brun = RunFolder(base_run)
    dirs = brun.dictionary_dirs()
    caches = [provenance(d).get("caches", {}) for d in dirs]
    folders = [Path(c[hook]["folder"]) for c in caches if hook in c]
    own = brun.activations / hook  # a run that stopped after its cache stage has no dictionary yet
    if not folders and (own / "manifest.json").is_file():
        folders = [own]
    if not folders:
        raise DiffError(f"{brun.root} has no cache of {hook}: run `autointerp run` (at least its cache stage) "
                        f"on the base model with the same corpus and hook point, or leave out base_run")
    bman = read_manifest(folders[0])
    for key in ("corpus", "context", "exclusions", "shard_contexts", "n_contexts", "tokens", "dtype"):
        a, b = manifest.get(key), bman.get(key)
        if key == "corpus":
            a, b = (a or {}).get("contexts_sha256"), (b or {}).get("contexts_sha256")
        if a != b:
            raise DiffError(f"the base run's cache differs from the fine-tuned run's in {key} ({b!r} vs {a!r}): "
                            f"the two runs must cache the same contexts the same way")
    a, b = manifest.get("model", {}).get("dtype"), bman.get("model", {}).get("dtype")
    if a != b:  # a precision change would be counted as a fine-tuning change
        raise DiffError(f"the base run's model ran in {b}, the fine-tuned run's in {a}: use the same dtype")
    return folders[0], bman


def diff_run(run_dir: str | Path, base: str | None = None, *, dictionary: str | None = None,
             base_dictionary: str | Path | None = None, base_run: str | Path | None = None, z_min: float = 5.0,
             jump_min: int = 3, rank_by: str = "tail", device: str = "cpu", progress: bool = True) -> DiffResult:
    """Diff the run's (fine-tuned) model against ``base`` (a model spec); store and return the result.

    ``base_run``: a run of the base model on the same corpus; its cached activations are used
    instead of recomputing them (``base`` then defaults to that run's model). ``rank_by``: one of
    :data:`RANKINGS`."""
    import dictionaries as dl
    from autointerp.activations import load_shard, read_manifest
    from autointerp.featuredb import FeatureDB
    from autointerp.dictionary_folder import dictionary_name, provenance
    from autointerp.models import capture, load_model, resolve

    run = RunFolder(run_dir)
    ddir = _dictionary_dir(run, dictionary)
    prov = provenance(ddir)
    hook = prov["input_hookpoint"]
    if prov.get("target_hookpoint", hook) != hook:
        raise DiffError(f"{ddir.name} is a transcoder ({hook} -> {prov['target_hookpoint']}); diff applies "
                        f"sparse autoencoders (input = target)")
    tuned_spec = prov["model"]["spec"]
    _check_rank_by(rank_by)  # before the expensive pass
    folder = Path(prov["caches"][hook]["folder"])
    manifest = read_manifest(folder)
    base_folder_cache, base_manifest = None, None
    if base_run is not None:
        base_folder_cache, base_manifest = _base_cache(base_run, hook, manifest)
        run_base = base_manifest["model"]["spec"]
        if base is None:
            base = run_base
        elif resolve(base)[0] != resolve(run_base)[0]:
            raise DiffError(f"base {base!r} is not the model of the base run ({run_base!r})")
    if base is None:
        raise DiffError("name the base model (base) or a run of it (base_run)")
    base_folder, _ = resolve(base)
    tuned_folder, _ = resolve(tuned_spec)
    check_compatible(base_folder, tuned_folder)
    batch = int(manifest.get("batch_size", 16))

    d = dl.load(ddir, device=device)
    F = d.cfg.n_latents
    model = None if base_folder_cache is not None else load_model(base, device=device,
                                                                  dtype=prov["model"].get("dtype", "float32"))
    fires = {m: torch.zeros(F, dtype=torch.long) for m in ("base", "tuned")}
    sums = {m: torch.zeros(F, dtype=torch.float64) for m in ("base", "tuned")}
    maxs = {m: torch.zeros(F) for m in ("base", "tuned")}
    fvu = {m: dl.FVUAccumulator() for m in ("base", "tuned")}
    n_new, n_lost = torch.zeros(F, dtype=torch.long), torch.zeros(F, dtype=torch.long)
    top_jumps = torch.zeros(0, F)
    n_tokens = 0
    bar = tqdm(total=manifest["tokens"], unit="tok", unit_scale=True, desc="diff", disable=not progress)
    with torch.inference_mode():
        base_entries = base_manifest["shards"] if base_folder_cache is not None else [None] * len(manifest["shards"])
        if len(base_entries) != len(manifest["shards"]):
            raise DiffError("the base run's cache has another number of shards than the fine-tuned run's")
        for entry, base_entry in zip(manifest["shards"], base_entries):
            shard = load_shard(folder, entry)
            lo = entry["contexts"][0]
            ctx, pos = shard["ctx"].long() - lo, shard["ctx_pos"].long()
            contexts = shard["contexts"].long()
            stored = shard["activations"]
            if base_folder_cache is not None:
                bshard = load_shard(base_folder_cache, base_entry)
                if not (torch.equal(bshard["contexts"], shard["contexts"])
                        and torch.equal(bshard["ctx"], shard["ctx"]) and torch.equal(bshard["ctx_pos"], shard["ctx_pos"])):
                    raise DiffError(f"shard {entry.get('file', '?')}: the base run cached other tokens than the "
                                    f"fine-tuned run")
                x_b = bshard["activations"].float().to(device)
            else:
                x_base = []
                for b in range(0, len(contexts), batch):
                    out = capture(model, contexts[b:b + batch].to(device), [hook])[hook]
                    sel = (ctx >= b) & (ctx < b + batch)
                    x_base.append(out[ctx[sel] - b, pos[sel]].float())
                # the base through the cache's storage dtype too: float16 rounding is not a change
                x_b = torch.cat(x_base).to(stored.dtype).float()
            xs = {"base": x_b, "tuned": stored.float().to(device)}
            z = {}
            for m, x in xs.items():
                o = d(x)
                fvu[m].update(x, o.x_hat)
                z[m] = o.latents.float()
                on = z[m] > 0
                fires[m] += on.sum(0).cpu()
                sums[m] += z[m].sum(0).double().cpu()
                maxs[m] = torch.maximum(maxs[m], z[m].max(0).values.cpu())
            on_b, on_t = z["base"] > 0, z["tuned"] > 0
            n_new += (on_t & ~on_b).sum(0).cpu()
            n_lost += (on_b & ~on_t).sum(0).cpu()
            ctx_d = ctx.to(device)
            jump = (context_peaks(z["tuned"], ctx_d, len(contexts))
                    - context_peaks(z["base"], ctx_d, len(contexts))).cpu()
            both = torch.cat([top_jumps, jump])
            top_jumps = both.topk(min(TOP_JUMPS, len(both)), dim=0).values
            n_tokens += len(ctx)
            bar.update(len(ctx))
    bar.close()

    counterpart = None
    if base_dictionary is not None:
        bd = dl.load(base_dictionary, device="cpu")
        wt = torch.nn.functional.normalize(d.W_dec.detach().float().cpu(), dim=-1)
        wb = torch.nn.functional.normalize(bd.W_dec.detach().float().cpu(), dim=-1)
        counterpart = torch.cat([(chunk @ wb.T).max(1).values for chunk in wt.split(1024)]).numpy()

    zstat, effect = paired_stats(n_new.numpy(), n_lost.numpy(), fires["base"].numpy(), fires["tuned"].numpy())
    n_jump = (top_jumps > maxs["base"][None]).sum(0).numpy()
    max_jump = top_jumps[0].numpy() if len(top_jumps) else np.zeros(F)
    order = ranking({"z": zstat, "effect": effect, "n_jump": n_jump}, z_min, rank_by)
    name = dictionary_name(ddir)
    rows = []
    for rank, j in enumerate(order, start=1):
        rows.append({
            "latent": int(j), "rank": rank,
            "freq_base": float(fires["base"][j]) / n_tokens, "freq_tuned": float(fires["tuned"][j]) / n_tokens,
            "mean_base": float(sums["base"][j]) / n_tokens, "mean_tuned": float(sums["tuned"][j]) / n_tokens,
            "max_base": float(maxs["base"][j]), "max_tuned": float(maxs["tuned"][j]),
            "n_new": int(n_new[j]), "n_lost": int(n_lost[j]), "z": float(zstat[j]), "effect": float(effect[j]),
            "n_jump": int(n_jump[j]), "max_jump": float(max_jump[j]),
            "significant": bool(abs(zstat[j]) >= z_min or n_jump[j] >= jump_min),
            "counterpart_cos": None if counterpart is None else float(counterpart[j]),
        })
    result = DiffResult(dictionary=name, base=base, tuned=tuned_spec, tokens=n_tokens,
                        fvu_base=float(fvu["base"].compute()), fvu_tuned=float(fvu["tuned"].compute()),
                        n_significant=int(sum(r["significant"] for r in rows)), rows=rows)
    summary = {k: v for k, v in asdict(result).items() if k != "rows"}
    summary.update(z_min=z_min, jump_min=jump_min, rank_by=rank_by, top_jumps=TOP_JUMPS,
                   base_run=None if base_run is None else str(base_run), base_dictionary=None if base_dictionary is None else str(base_dictionary),
                   counterpart_cos=COUNTERPART_COS, top=rows[:50])
    (run.root / "diff.json").write_text(json.dumps(summary, indent=2, allow_nan=False))  # first: never lost
    if run.db.is_file():
        with FeatureDB(run.db) as db:
            db.put_diffs(name, base, z_min, rows, jump_min=jump_min, rank_by=rank_by)
    else:
        log.warning("%s has no features.db (run the examples stage): the diff is in diff.json only", run.root)
    return result


def format_diff(result: DiffResult, n: int = 20) -> str:
    lines = [f"diff of {result.dictionary}: {result.tuned} (fine-tuned) vs {result.base} (base), "
             f"{result.tokens:,} tokens",
             f"FVU on base activations {result.fvu_base:.3f}, on fine-tuned {result.fvu_tuned:.3f}; "
             f"{result.n_significant} latents changed significantly",
             f"{'rank':>4} {'latent':>6} {'n_jump':>6} {'effect':>7} {'z':>7} {'freq base':>10} {'freq tuned':>10} "
             f"{'max base':>8} {'max tuned':>9} {'cp cos':>6}"]
    for r in result.rows[:n]:
        cp = "" if r["counterpart_cos"] is None else f"{r['counterpart_cos']:.2f}"
        lines.append(f"{r['rank']:>4} {r['latent']:>6} {r['n_jump']:>6} {r['effect']:>+7.2f} {r['z']:>+7.1f} "
                     f"{r['freq_base']:>10.2e} {r['freq_tuned']:>10.2e} {r['max_base']:>8.2f} {r['max_tuned']:>9.2f} "
                     f"{cp:>6}")
    return "\n".join(lines)
