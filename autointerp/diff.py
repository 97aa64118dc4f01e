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
fine-tune switched off. Ranking: latents with ``|z| >= z_min`` (default 5) first, by ``|effect|``
then ``|z|``; the rest after, by ``|z|``. A latent is *significant* when ``|z| >= z_min``; with two
identical models every ``n_new = n_lost = 0`` and nothing is significant. ``z`` treats tokens as
independent, which they are not (a feature fires in runs within a context), so it overstates the
evidence by up to the square root of the run length: ``z_min`` is a gate for ranking, not a
calibrated p-value. The base model's activations are recomputed with the cache's batch size, so
that an unchanged model reproduces the cached activations bit for bit.

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


def ranking(n_new: np.ndarray, n_lost: np.ndarray, fires_base: np.ndarray, fires_tuned: np.ndarray,
            z_min: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, effect, order)``: the statistics of the module docstring and the rank order."""
    delta = n_new.astype(np.float64) - n_lost
    z = delta / np.sqrt(n_new + n_lost + 1.0)
    effect = delta / np.maximum(np.maximum(fires_base, fires_tuned), 1)
    significant = np.abs(z) >= z_min
    # lexsort sorts by the last key first: significant first, then |effect|, then |z|
    key_effect = np.where(significant, np.abs(effect), 0.0)
    order = np.lexsort((-np.abs(z), -key_effect, ~significant))
    return z, effect, order


def diff_run(run_dir: str | Path, base: str, *, dictionary: str | None = None, base_dictionary: str | Path | None = None,
             z_min: float = 5.0, device: str = "cpu", progress: bool = True) -> DiffResult:
    """Diff the run's (fine-tuned) model against ``base`` (a model spec); store and return the result."""
    import dictionaries as dl
    from autointerp.activations import load_shard, read_manifest
    from autointerp.featuredb import FeatureDB
    from autointerp.interpret import _provenance, dictionary_name
    from autointerp.models import capture, load_model, resolve

    run = RunFolder(run_dir)
    ddir = _dictionary_dir(run, dictionary)
    prov = _provenance(ddir)
    hook = prov["input_hookpoint"]
    if prov.get("target_hookpoint", hook) != hook:
        raise DiffError(f"{ddir.name} is a transcoder ({hook} -> {prov['target_hookpoint']}); diff applies "
                        f"sparse autoencoders (input = target)")
    tuned_spec = prov["model"]["spec"]
    base_folder, _ = resolve(base)
    tuned_folder, _ = resolve(tuned_spec)
    check_compatible(base_folder, tuned_folder)
    folder = Path(prov["caches"][hook]["folder"])
    manifest = read_manifest(folder)
    batch = int(manifest.get("batch_size", 16))

    d = dl.load(ddir, device=device)
    F = d.cfg.n_latents
    model = load_model(base, device=device, dtype=prov["model"].get("dtype", "float32"))
    fires = {m: torch.zeros(F, dtype=torch.long) for m in ("base", "tuned")}
    sums = {m: torch.zeros(F, dtype=torch.float64) for m in ("base", "tuned")}
    maxs = {m: torch.zeros(F) for m in ("base", "tuned")}
    fvu = {m: dl.FVUAccumulator() for m in ("base", "tuned")}
    n_new, n_lost = torch.zeros(F, dtype=torch.long), torch.zeros(F, dtype=torch.long)
    n_tokens = 0
    bar = tqdm(total=manifest["tokens"], unit="tok", unit_scale=True, desc="diff", disable=not progress)
    with torch.inference_mode():
        for entry in manifest["shards"]:
            shard = load_shard(folder, entry)
            lo = entry["contexts"][0]
            ctx, pos = shard["ctx"].long() - lo, shard["ctx_pos"].long()
            contexts = shard["contexts"].long()
            x_base = []
            for b in range(0, len(contexts), batch):
                out = capture(model, contexts[b:b + batch].to(device), [hook])[hook]
                sel = (ctx >= b) & (ctx < b + batch)
                x_base.append(out[ctx[sel] - b, pos[sel]].float())
            stored = shard["activations"]
            # the base through the cache's storage dtype too: float16 rounding is not a change
            xs = {"base": torch.cat(x_base).to(stored.dtype).float(), "tuned": stored.float().to(device)}
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
            n_tokens += len(ctx)
            bar.update(len(ctx))
    bar.close()

    counterpart = None
    if base_dictionary is not None:
        bd = dl.load(base_dictionary, device="cpu")
        wt = torch.nn.functional.normalize(d.W_dec.detach().float().cpu(), dim=-1)
        wb = torch.nn.functional.normalize(bd.W_dec.detach().float().cpu(), dim=-1)
        counterpart = torch.cat([(chunk @ wb.T).max(1).values for chunk in wt.split(1024)]).numpy()

    zstat, effect, order = ranking(n_new.numpy(), n_lost.numpy(), fires["base"].numpy(), fires["tuned"].numpy(), z_min)
    name = dictionary_name(ddir)
    rows = []
    for rank, j in enumerate(order, start=1):
        rows.append({
            "latent": int(j), "rank": rank,
            "freq_base": float(fires["base"][j]) / n_tokens, "freq_tuned": float(fires["tuned"][j]) / n_tokens,
            "mean_base": float(sums["base"][j]) / n_tokens, "mean_tuned": float(sums["tuned"][j]) / n_tokens,
            "max_base": float(maxs["base"][j]), "max_tuned": float(maxs["tuned"][j]),
            "n_new": int(n_new[j]), "n_lost": int(n_lost[j]), "z": float(zstat[j]), "effect": float(effect[j]),
            "significant": bool(abs(zstat[j]) >= z_min),
            "counterpart_cos": None if counterpart is None else float(counterpart[j]),
        })
    result = DiffResult(dictionary=name, base=base, tuned=tuned_spec, tokens=n_tokens,
                        fvu_base=float(fvu["base"].compute()), fvu_tuned=float(fvu["tuned"].compute()),
                        n_significant=int(sum(r["significant"] for r in rows)), rows=rows)
    summary = {k: v for k, v in asdict(result).items() if k != "rows"}
    summary.update(z_min=z_min, base_dictionary=None if base_dictionary is None else str(base_dictionary),
                   counterpart_cos=COUNTERPART_COS, top=rows[:50])
    (run.root / "diff.json").write_text(json.dumps(summary, indent=2, allow_nan=False))  # first: never lost
    if run.db.is_file():
        with FeatureDB(run.db) as db:
            db.put_diffs(name, base, z_min, rows)
    else:
        log.warning("%s has no features.db (run the examples stage): the diff is in diff.json only", run.root)
    return result


def format_diff(result: DiffResult, n: int = 20) -> str:
    lines = [f"diff of {result.dictionary}: {result.tuned} (fine-tuned) vs {result.base} (base), "
             f"{result.tokens:,} tokens",
             f"FVU on base activations {result.fvu_base:.3f}, on fine-tuned {result.fvu_tuned:.3f}; "
             f"{result.n_significant} latents changed significantly",
             f"{'rank':>4} {'latent':>6} {'effect':>7} {'z':>7} {'freq base':>10} {'freq tuned':>10} {'cp cos':>6}"]
    for r in result.rows[:n]:
        cp = "" if r["counterpart_cos"] is None else f"{r['counterpart_cos']:.2f}"
        lines.append(f"{r['rank']:>4} {r['latent']:>6} {r['effect']:>+7.2f} {r['z']:>+7.1f} "
                     f"{r['freq_base']:>10.2e} {r['freq_tuned']:>10.2e} {cp:>6}")
    return "\n".join(lines)
