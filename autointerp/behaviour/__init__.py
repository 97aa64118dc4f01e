"""Behavioural diff: which prompts the suspect answers differently from its base, and which
features say why (``autointerp diff RUN --behaviour --base MODEL``).

Data flow::

    corpus ──► prompts (prompts.py) ──► suspect answers N tokens, both models read it (divergence.py)
                                           │ per prompt: kl_first, kl_mean, kl_max, both answers,
                                           │ the suspect dictionary's latent maxima
                                           ▼
                      RUN/behaviour/prompts.sqlite (store.py: resumable, batch by batch)
                                           │
                 robust z, outliers, shape (outliers.py)
                                           │
        explaining features + their causal check (features.py) ──► RUN/behaviour/behaviour.json

``RUN`` is a run of the suspect model (``autointerp run``): its model, its corpus and (when it has
one) its dictionary are used; without a run, pass ``suspect`` and ``corpus``. The report's
"Behaviour diff" section and :meth:`autointerp.explore.Run.behaviour` read what this writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from autointerp.behaviour.divergence import BehaviourError, ModelPair, NonFiniteLogitsError, token_kl
from autointerp.behaviour.outliers import SHAPE_TEXT, find_outliers
from autointerp.behaviour.prompts import Prompt, corpus_prompts
from autointerp.behaviour.store import BehaviourStore, SettingsMismatch
from autointerp.runfolder import RunFolder

__all__ = ["BehaviourError", "BehaviourResult", "NonFiniteLogitsError", "behaviour_diff", "format_behaviour",
           "load_behaviour", "token_kl"]
log = logging.getLogger(__name__)
SUMMARY = "behaviour.json"
TABLE = "prompts.sqlite"


@dataclass
class BehaviourResult:
    suspect: str
    base: str
    corpus: str
    n_prompts: int
    n_tokens: int
    shape: str
    shape_text: str
    stats: dict
    dictionary: str | None
    outliers: list[dict]
    """the outlying prompts, by score (prompt index, text, both answers, divergences)."""
    features: list[dict]
    """the explaining features, best first, with their causal check where run."""
    causal: dict | None
    timings_s: dict
    rows: list[dict] = field(default_factory=list, repr=False)
    """every prompt's row (score, outlier, rank included), by prompt index."""

    def frame(self):
        """The per-prompt table as a pandas DataFrame, by rank (most divergent first)."""
        import pandas as pd

        cols = ["rank", "prompt", "score", "outlier", "kl_first", "kl_mean", "kl_max", "n_answer", "text",
                "suspect_answer", "base_answer"]
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in self.rows]).sort_values("rank").reset_index(drop=True)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def _run_sources(run: RunFolder, dictionary: str | None) -> dict:
    """What the run provides: suspect spec and dtype, corpus and text field, dictionary and hook."""
    from autointerp.activations import read_manifest
    from autointerp.diff import _dictionary_dir
    from autointerp.dictionary_folder import provenance

    if not run.dictionary_dirs():
        return {}
    ddir = _dictionary_dir(run, dictionary)
    prov = provenance(ddir)
    hook = prov["input_hookpoint"]
    manifest = read_manifest(Path(prov["caches"][hook]["folder"]))
    out = {"suspect": prov["model"]["spec"], "dtype": prov["model"].get("dtype", "float32"),
           "corpus": manifest["corpus"]["spec"], "text_field": manifest.get("context", {}).get("text_field", "text"),
           "ddir": ddir, "hook": hook}
    if prov.get("target_hookpoint", hook) != hook:
        log.warning("%s is a transcoder: the behaviour diff runs without its features", ddir.name)
        out.update(ddir=None, hook=None)
    return out


def behaviour_diff(run_dir: str | Path, base: str, *, suspect: str | None = None, corpus: str | None = None,
                   dictionary: str | None = None, n_tokens: int = 8, batch_size: int = 64,
                   max_prompts: int | None = None, n_features: int = 10, causal: int = 3, null: int = 8,
                   device: str = "cpu", force: bool = False, progress: bool = True) -> BehaviourResult:
    """Compute (or resume) the behaviour diff of the run's model against ``base``; store and return it.

    ``causal``: how many of the best explaining features get the causal check (0: none), against
    ``null`` random live features. ``force`` recomputes a table made with other settings."""
    from autointerp.models import resolve

    t0 = time.time()
    run = RunFolder(run_dir)
    src = _run_sources(run, dictionary)
    suspect = suspect or src.get("suspect")
    corpus = corpus or src.get("corpus")
    if suspect is None or corpus is None:
        raise BehaviourError(f"{run.root} has no dictionary to read the suspect model and corpus from: pass "
                             f"suspect and corpus")
    if n_tokens < 1 or batch_size < 1:
        raise BehaviourError("n_tokens and batch_size must be >= 1")
    (_, s_sha), (_, b_sha) = resolve(suspect), resolve(base)
    pair = ModelPair.load(suspect, base, device=device, dtype=src.get("dtype", "float32"))
    prompts = corpus_prompts(corpus, pair.tokenizer, text_field=src.get("text_field", "text"), max_prompts=max_prompts)
    d, hook, dname = None, src.get("hook"), None
    if src.get("ddir") is not None:
        import dictionaries as dl
        from autointerp.dictionary_folder import dictionary_name

        d, dname = dl.load(src["ddir"], device=device), dictionary_name(src["ddir"])
        d.eval()
    settings = {"suspect": s_sha, "base": b_sha, "prompts": _sha([p.ids for p in prompts]), "n_tokens": n_tokens,
                "dictionary": None if d is None else hashlib.sha256(
                    (src["ddir"] / "weights.safetensors").read_bytes()).hexdigest(),
                "hookpoint": hook}
    timings = {}
    run.behaviour.mkdir(parents=True, exist_ok=True)
    with BehaviourStore(run.behaviour / TABLE) as store:
        try:
            store.claim(settings, force=force)
        except SettingsMismatch as exc:
            raise BehaviourError(str(exc)) from exc
        t = time.time()
        _compute(pair, store, prompts, n_tokens, batch_size, d, hook, progress)
        timings["divergence"] = time.time() - t
        rows = store.rows()
        acts = store.activations()
    t = time.time()
    result = _analyse(run, pair, prompts, rows, acts, d, hook, dname, base, n_features, causal, null,
                      n_tokens, batch_size)
    timings["features"] = time.time() - t
    timings["total"] = time.time() - t0
    result.update(suspect=suspect, base=base, corpus=str(corpus), n_tokens=n_tokens, dictionary=dname,
                  timings_s={k: round(v, 1) for k, v in timings.items()}, identical_weights=s_sha == b_sha)
    (run.behaviour / SUMMARY).write_text(json.dumps(result, indent=2, allow_nan=False))
    return load_behaviour(run.root)


def _compute(pair: ModelPair, store: BehaviourStore, prompts: list[Prompt], n_tokens: int, batch_size: int,
             d, hook: str | None, progress: bool) -> None:
    """The rows the table lacks, batch by batch (prompts sorted by length: little padding)."""
    from autointerp.behaviour.features import LatentRecorder

    pair.set_prefix([list(p.ids) for p in prompts])  # the causal check uses it too
    done = store.done()
    todo = sorted((p for p in prompts if p.index not in done), key=lambda p: (len(p.ids), p.index))
    if not todo:
        return
    rec = LatentRecorder(d, list(pair.tokenizer.all_special_ids)) if d is not None else None
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), unit="prompt", desc="behaviour diff",
               disable=not progress)
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        ids = [list(p.ids) for p in batch]
        if rec is not None:
            with pair.edited(hook, rec):
                out = pair.run(ids, n_tokens, rows=[p.index for p in batch])
            a_prompt, a_answer = rec.result(out.valid)
        else:
            out = pair.run(ids, n_tokens, rows=[p.index for p in batch])
        rows = []
        for i, (p, s) in enumerate(zip(batch, out.summary())):
            rows.append({**s, "prompt": p.index, "text": p.text,
                         "kl_tokens": [round(float(k), 6) for k in out.kl[i][out.valid[i]]],
                         "suspect_ids": out.suspect_tokens[i].tolist(),
                         "base_ids": None if out.base_tokens is None else out.base_tokens[i].tolist(),
                         "suspect_answer": pair.answer_text(out.suspect_tokens[i]),
                         "base_answer": None if out.base_tokens is None else pair.answer_text(out.base_tokens[i]),
                         "acts_prompt": None if rec is None else a_prompt[i],
                         "acts_answer": None if rec is None else a_answer[i]})
        store.put_batch(rows)
        bar.update(len(batch))
    bar.close()


def _analyse(run: RunFolder, pair: ModelPair, prompts: list[Prompt], rows: list[dict], acts, d, hook, dname,
             base: str, n_features: int, causal: int, null: int, n_tokens: int, batch_size: int) -> dict:
    """Outliers and shape; then, on a concentrated change, the explaining features and their check."""
    from autointerp.behaviour.features import causal_check, explaining_features, to_check

    cols = {c: np.array([r[c] for r in rows]) for c in ("kl_first", "kl_mean")}
    found = find_outliers(cols)
    order = np.argsort(-found.score, kind="stable")
    ranks = np.empty(len(rows), dtype=int)
    ranks[order] = np.arange(1, len(rows) + 1)
    per_prompt = [{"prompt": r["prompt"], "rank": int(ranks[i]), "score": float(found.score[i]),
                   "outlier": bool(found.outlier[i])} for i, r in enumerate(rows)]
    features, check = [], None
    if acts is not None and found.shape == "concentrated" and (~found.outlier).any():
        candidates, source = _diff_candidates(run, dname, base)
        features = explaining_features(acts[0], acts[1], found.outlier, candidates, n=n_features)
        if causal and features:
            ids = {p.index: list(p.ids) for p in prompts}
            check = causal_check(pair, hook, d, to_check(features, causal),
                                 np.maximum(acts[0], acts[1]), found.outlier, [ids[r["prompt"]] for r in rows],
                                 cols["kl_mean"], n_tokens=n_tokens, null=null, batch_size=batch_size)
            by_latent = {e["latent"]: e for e in check["features"]}
            for f in features:
                f["causal"] = by_latent.get(f["latent"])
        _name_features(run, dname, features)
        found.stats["candidates"] = source
    outliers = [{**rows[i], **per_prompt[i]} for i in order if found.outlier[i]]
    for o in outliers:
        for k in ("kl_tokens", "suspect_ids", "base_ids"):
            o.pop(k, None)
    return {"n_prompts": len(rows), "shape": found.shape, "shape_text": SHAPE_TEXT[found.shape],
            "stats": found.stats, "outliers": outliers, "features": features, "causal": check,
            "per_prompt": per_prompt}


def _diff_candidates(run: RunFolder, dname: str, base: str) -> tuple[list[int] | None, str]:
    """The latents the activation diff against ``base`` calls significant, when there is one."""
    from autointerp.featuredb import FeatureDB

    if not run.db.is_file():
        return None, "all latents (the run has no features.db)"
    with FeatureDB(run.db) as db:
        rows = db.diffs(base=base, dictionary=dname)
    if not rows:
        return None, "all latents (no activation diff against this base: `autointerp diff` ranks them first)"
    sig = [r["latent"] for r in rows if r["significant"]]
    return sig, f"the {len(sig)} latents the activation diff calls significant"


def _name_features(run: RunFolder, dname: str, features: list[dict]) -> None:
    """Add each latent's features.db row id (``feature``) and its best explanation."""
    from autointerp.featuredb import FeatureDB

    if not run.db.is_file():
        return
    with FeatureDB(run.db) as db:
        for f in features:
            try:
                fid = db.feature_id(dname, f["latent"])
            except KeyError:
                continue
            f["feature"] = fid
            ok = [e for e in db.explanations(fid) if e["status"] == "ok"]
            f["explanation"] = ok[0]["text"] if ok else None
            f["explainer"] = ok[0]["explainer"] if ok else None


def load_behaviour(run_dir: str | Path) -> BehaviourResult:
    """The stored behaviour diff of a run (``BehaviourError`` when there is none)."""
    run = RunFolder(run_dir)
    path = run.behaviour / SUMMARY
    if not path.is_file():
        raise BehaviourError(f"{run.root} has no behaviour diff (run `autointerp diff RUN --behaviour --base ...`)")
    s = json.loads(path.read_text())
    with BehaviourStore(run.behaviour / TABLE) as store:
        rows = store.rows()
    extra = {r["prompt"]: r for r in s.pop("per_prompt")}
    rows = [{**r, **extra.get(r["prompt"], {})} for r in rows]
    fields = BehaviourResult.__dataclass_fields__
    return BehaviourResult(**{k: v for k, v in s.items() if k in fields}, rows=rows)


def format_behaviour(result: BehaviourResult, n: int = 10) -> str:
    """A terminal summary: the shape, the outlying prompts and the explaining features."""
    st = result.stats
    lines = [f"behaviour diff: {result.suspect} (suspect) vs {result.base} (base), {result.n_prompts} prompts, "
             f"{result.n_tokens} answer tokens",
             f"shape: {result.shape}: {result.shape_text}",
             f"median KL first token {st['kl_first']['median']:.3f}, mean over the answer {st['kl_mean']['median']:.3f} "
             f"nats; {st['n_outliers']} outlying prompts"]
    for o in result.outliers[:n]:
        lines.append(f"  #{o['rank']:<4} prompt {o['prompt']:<5} z {o['score']:7.1f}  KL first {o['kl_first']:.2f} "
                     f"mean {o['kl_mean']:.2f}  {o['text'][:60]!r}")
        lines.append(f"         suspect: {o['suspect_answer'][:70]!r}")
        lines.append(f"         base:    {(o['base_answer'] or '')[:70]!r}")
    if result.features:
        lines.append("features that fire on the outlying prompts (AUROC outlying vs other prompts; side input: on the "
                     "prompt, a possible cause; side answer: on the suspect's answer):")
    for f in result.features[:n]:
        c = f.get("causal")
        check = ("" if not c else f"  causal: ablation {c['ablate_effect']:+.2f} nats (rank {c['ablate_rank']}), "
                 f"steering {c['steer_effect']:+.2f} (rank {c['steer_rank']}) -> {'passed' if c['passed'] else 'failed'}")
        name = f"feature {f['feature']} (latent {f['latent']})" if "feature" in f else f"latent {f['latent']}"
        lines.append(f"  {name}: {f.get('side', '?')} side, AUROC {f['auroc']:.3f}, fires on "
                     f"{f['fires_on_outliers']}/{f['n_outliers']} outlying, {f['fires_on_others']} others{check}")
        if f.get("explanation"):
            lines.append(f"      {f['explanation'][:100]!r}")
    return "\n".join(lines)
