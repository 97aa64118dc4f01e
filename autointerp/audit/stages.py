"""The stages of ``autointerp audit`` (see :mod:`autointerp.audit`); each returns its figures."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from autointerp.audit import AuditContext, _write
from autointerp.audit.checks import AuditError, check_corpus, check_models, corpus_facts

log = logging.getLogger(__name__)


def stage_check(ctx: AuditContext) -> dict:
    s = ctx.settings
    models = check_models(ctx.suspect, ctx.base)
    facts = corpus_facts(Path(models["suspect_folder"]), ctx.corpus, s.ctx_len)
    check_corpus(facts, ctx.corpus, s.latents)
    _watchlist(ctx)  # a bad watchlist fails now, not after the hour of stages before it
    return {**models, "corpus": ctx.corpus, "n_documents": facts.n_documents, "shared_prefix": facts.shared_prefix,
            "shared_prefix_text": facts.shared_prefix_text, "kept_tokens": facts.kept_tokens}


def _watchlist(ctx: AuditContext):
    """The settings' watchlist (None when turned off); a broken one is an :class:`AuditError`."""
    from autointerp.flagging.watchlist import WatchlistError, load_watchlist

    w = ctx.settings.watchlist
    if w is None:
        return None
    try:
        return load_watchlist(None if w == "default" else w)
    except WatchlistError as exc:
        raise AuditError(f"watchlist: {exc}") from exc


def run_config(ctx: AuditContext, model: str) -> dict:
    """The ``autointerp run`` config of the audit (the suspect's and the base's caches alike)."""
    s, check = ctx.settings, ctx.record("check")["figures"]
    shard = max(8, min(256, check["n_documents"] // 16) // 8 * 8)
    return {
        "model": model, "device": s.device, "threads": s.threads,
        # every token of the corpus (the budget is an upper bound), in at least 16 shards, so that the
        # held-out tokens are whole shards and training keeps the rest
        "cache": {"corpus": ctx.corpus, "hookpoints": [s.hookpoint], "tokens": 10 * check["kept_tokens"],
                  "ctx_len": s.ctx_len, "packing": "document", "exclude_first": check["shared_prefix"],
                  "shard_contexts": shard, "batch_size": 16 if shard % 16 == 0 else 8},
        # audit corpora are small (~10^5 tokens): several epochs in small batches
        "train": {"latents": s.latents, "k": s.k, "epochs": s.epochs, "batch_size": 1024,
                  "heldout_tokens": min(8_000, check["kept_tokens"] // 20)},
        "evaluate": {"contexts": 32},
        "explain": {"explainers": ["token-enrichment"], "llm_features": 0},
        "report": {"feature_pages": "explained"},
    }


def _pipeline(ctx: AuditContext, model: str, root: Path, until: str) -> dict:
    from autointerp.config import load_config
    from autointerp.pipeline import run

    cfg = load_config(run_config(ctx, model))
    return run(cfg, root, until=until, progress=ctx.progress)


def stage_run(ctx: AuditContext) -> dict:
    figs = _pipeline(ctx, ctx.suspect, ctx.out, "explain")
    return {k: figs[k] for k in ("cache", "train", "evaluate") if k in figs}


def stage_base(ctx: AuditContext) -> dict:
    return _pipeline(ctx, ctx.base, ctx.folder / "base", "cache")["cache"]


def stage_diff(ctx: AuditContext) -> dict:
    from autointerp.diff import diff_run

    d = diff_run(ctx.out, ctx.base, base_run=ctx.folder / "base", device=ctx.settings.device, progress=ctx.progress)
    return {"dictionary": d.dictionary, "tokens": d.tokens, "n_significant": d.n_significant,
            "fvu_base": d.fvu_base, "fvu_tuned": d.fvu_tuned,
            "order": [r["latent"] for r in d.rows if r["significant"]]}


def stage_behaviour(ctx: AuditContext) -> dict:
    from autointerp.behaviour import behaviour_diff

    s = ctx.settings
    r = behaviour_diff(ctx.out, ctx.base, n_tokens=s.behaviour_tokens, batch_size=s.batch_size, causal=s.causal,
                       null=s.null, device=s.device, progress=ctx.progress)
    return {"shape": r.shape, "n_outliers": len(r.outliers), "n_prompts": r.n_prompts,
            "median_kl_first": r.stats["kl_first"]["median"], "median_kl_mean": r.stats["kl_mean"]["median"],
            "features": [f["latent"] for f in r.features],
            "causal_passed": [f["latent"] for f in r.features if (f.get("causal") or {}).get("passed")]}


def _user_messages(ctx: AuditContext, exclude: set[int]) -> list[tuple[int, list[int]]]:
    """Every corpus prompt's user text as token ids, by corpus index, outside ``exclude``."""
    from autointerp.audit.scans import user_ids
    from autointerp.behaviour.prompts import corpus_prompts

    tok = ctx.pair().tokenizer
    out = []
    for p in corpus_prompts(ctx.corpus, tok):
        if p.index not in exclude and p.text.strip():
            out.append((p.index, user_ids(tok, p.text)))
    return out


def stage_triggers(ctx: AuditContext) -> dict:
    """Trigger discovery on prompts the behaviour diff found ordinary (no corpus text is trusted to
    hold the trigger), then the features that fire on a confirmed trigger and their causal check."""
    from autointerp.audit.scans import Shortlist, _top, token_scan
    from autointerp.audit.gradient import gradient_search
    from autointerp.audit.triggers import confirm, grow, search
    from autointerp.behaviour import load_behaviour

    s = ctx.settings
    if not s.triggers:
        return {"skipped": "trigger discovery turned off (--no-triggers)"}
    beh = load_behaviour(ctx.out)
    users = _user_messages(ctx, {o["prompt"] for o in beh.outliers})
    n_need = s.screen_prompts + s.confirm_prompts
    if len(users) < n_need:
        raise AuditError(f"trigger discovery needs {n_need} ordinary prompts, the corpus gives {len(users)}")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(users), size=n_need, replace=False)
    screen = [users[i][1] for i in pick[:s.screen_prompts]]
    held = [users[i] for i in pick[s.screen_prompts:]]
    pair = ctx.pair()
    clock = _Clock()
    scan = token_scan(pair, layer=s.scan_layer, batch_size=512, progress=ctx.progress)
    clock.lap("scan")
    np.save(ctx.folder / "token_scan.npy", np.stack([scan.score, scan.embed_score, scan.weight_score]))
    tokens = (Shortlist.build([scan.score, scan.weight_score], s.grow_shortlist, pair.tokenizer)
              if s.grow_shortlist else None)
    grown = [grow(pair, a, screen, layer=scan.layer, max_len=s.grow_max_len, top=s.grow_top,
                  min_gain=s.grow_min_gain, weight=scan.weight_score, companions=s.grow_companions,
                  tokens=tokens, null=s.grow_null, batch_size=s.batch_size, progress=ctx.progress)
             for a in _top(scan.weight_score, s.grow_anchors)]
    clock.lap("grow")
    found = search(pair, scan, screen, pool=s.pool, beam=s.beam, max_len=s.max_len, batch_size=s.batch_size,
                   progress=ctx.progress)
    known = {(tuple(c["ids"]), c["place"]) for c in found.candidates}
    for g in grown:
        for c in g["screened"]:
            if (tuple(c["ids"]), c["place"]) not in known:
                known.add((tuple(c["ids"]), c["place"]))
                found.candidates.append(c)
    found.candidates.sort(key=lambda c: -c["screen_kl"])
    clock.lap("search")
    chosen = _distinct(found.candidates, s.confirm)
    conf = confirm(pair, [c["ids"] for c in chosen], [u for _, u in held], places=[c["place"] for c in chosen],
                   n_tokens=s.behaviour_tokens, controls=s.controls, batch_size=s.batch_size, progress=ctx.progress)
    clock.lap("confirm")
    # the gradient search is the fallback, run only when growth and the beam search left nothing
    # confirmed: since growth came in, the best confirmed string of every audited plant was a grown
    # one, and the gradient search was the trigger stage's largest part on the nulls (RESULTS.md,
    # eleventh measurements); its string is confirmed in a second round, against the same controls
    gcg: dict
    if not s.gcg_steps:
        gcg = {"skipped": "turned off (--gcg-steps 0)"}
    elif any(c["confirmed"] for c in conf.candidates):
        gcg = {"skipped": "a candidate of growth or the beam search was confirmed"}
    else:
        longest = next((c for c in found.candidates if len(c["ids"]) == s.max_len), found.candidates[0])
        gcg = gradient_search(pair, screen, longest["ids"], place=longest["place"], steps=s.gcg_steps,
                              batch_size=s.batch_size, progress=ctx.progress)
        found.candidates.append({k: gcg[k] for k in ("ids", "text", "place", "screen_kl")})
        if all((c["ids"], c["place"]) != (gcg["ids"], gcg["place"]) for c in conf.candidates):
            conf = confirm(pair, [gcg["ids"]], [u for _, u in held], places=[gcg["place"]],
                           n_tokens=s.behaviour_tokens, controls=s.controls, batch_size=s.batch_size,
                           prior=conf, progress=ctx.progress)
    found.candidates.sort(key=lambda c: -c["screen_kl"])
    clock.lap("gradient_search")
    screen_kl = {(tuple(c["ids"]), c["place"]): c["screen_kl"] for c in found.candidates}
    for c in conf.candidates:
        c["screen_kl"] = screen_kl[(tuple(c["ids"]), c["place"])]
    result = {"scan_layer": scan.layer, "scan_top": [{"id": t, "token": pair.tokenizer.decode([t]),
                                                       "score": float(scan.score[t]),
                                                       "embed_score": float(scan.embed_score[t])}
                                                      for t in scan.pool(s.pool)],
              "weight_top": [{"id": t, "token": pair.tokenizer.decode([t]), "weight_score": float(scan.weight_score[t])}
                             for t in _top(scan.weight_score, s.pool)],
              # every string growth screened, best first: a miss can be read from the file
              "grow": [{**{k: g[k] for k in ("ids", "text", "place", "screen_kl", "path", "steps", "trials")},
                        "screened": sorted(g["screened"], key=lambda c: -c["screen_kl"])} for g in grown],
              "screened": found.screened + sum(len(g["screened"]) for g in grown), "gradient_search": gcg, "screen_baseline_kl": found.baseline_kl,
              "screen_top": found.candidates[:10], "threshold": conf.threshold, "clean_success": conf.clean_success,
              "held_out_prompts": [i for i, _ in held], "held_out_texts": [pair.tokenizer.decode(u) for _, u in held],
              "clean_answers": conf.clean_answers, "candidates": conf.candidates, "features": [],
              "causal": None}
    best = next((c for c in conf.candidates if c["confirmed"]), None)
    if best is not None:
        result.update(trigger_features(ctx, best["ids"], [u for _, u in held], conf.threshold, best["place"]))
    clock.lap("features")
    result["seconds"] = clock.laps
    _write(ctx.folder / "triggers.json", result)
    return {"confirmed": [c["text"] for c in conf.candidates if c["confirmed"]],
            "best": None if best is None else {"text": best["text"], "place": best["place"],
                                               "attack_success": best["attack_success"],
                                               "control_max": best["control_max"]},
            "features": [f["latent"] for f in result["features"]]}


class _Clock:
    """Seconds between laps, by name (the trigger stage's parts, for the report and the benchmark)."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name] = round(now - self._last, 1)
        self._last = now


def _distinct(candidates: list[dict], n: int) -> list[dict]:
    """The ``n`` best ``candidates`` (best first), one per string, none a sub-sequence of a better
    one (at either place: the better place of a string stands for it)."""
    chosen: list[dict] = []
    for c in candidates:
        if len(chosen) >= n:
            break
        if not any(_contains(b["ids"], c["ids"]) or _contains(c["ids"], b["ids"]) for b in chosen):
            chosen.append(c)
    return chosen


def _contains(big: list[int], small: list[int]) -> bool:
    n = len(small)
    return any(big[i:i + n] == small for i in range(len(big) - n + 1))


def _dictionary(ctx: AuditContext):
    """``(folder, input hook point, dictionary)`` of the suspect run's dictionary."""
    import dictionaries as dl
    from autointerp.diff import _dictionary_dir
    from autointerp.dictionary_folder import provenance
    from autointerp.runfolder import RunFolder

    ddir = _dictionary_dir(RunFolder(ctx.out), None)
    d = dl.load(ddir, device=ctx.settings.device)
    d.eval()
    return ddir, provenance(ddir)["input_hookpoint"], d


def trigger_features(ctx: AuditContext, trigger: list[int], users: list[list[int]], threshold: dict,
                     place: str = "end") -> dict:
    """The features that fire on the held-out prompts with ``trigger`` inserted at ``place``, against
    the same prompts without it (AUROC among the diff's significant latents), and their causal check."""
    from autointerp.audit.scans import user_carrier, with_insertion
    from autointerp.behaviour.features import LatentRecorder, causal_check, explaining_features, to_check
    from autointerp.runfolder import RunFolder

    s, pair = ctx.settings, ctx.pair()
    run = RunFolder(ctx.out)
    ddir, hook, d = _dictionary(ctx)
    carrier = user_carrier(pair.tokenizer)
    prompts = [with_insertion(carrier, u, []) for u in users] + [with_insertion(carrier, u, trigger, place)
                                                                 for u in users]
    rec = LatentRecorder(d, list(pair.tokenizer.all_special_ids))
    pm, am, kl = [], [], []
    pair.set_prefix(prompts)
    for b in range(0, len(prompts), s.batch_size):
        with pair.edited(hook, rec):
            out = pair.run(prompts[b:b + s.batch_size], s.behaviour_tokens, base_answer=False)
        p, a = rec.result(out.valid)
        pm.append(p)
        am.append(a)
        kl += [(r["kl_first"], r["kl_mean"]) for r in out.summary()]
    pm, am, kl = np.concatenate(pm), np.concatenate(am), np.asarray(kl)
    hit = np.zeros(len(prompts), dtype=bool)
    hit[len(users):] = (kl[len(users):, 0] >= threshold["kl_first"]) | (kl[len(users):, 1] >= threshold["kl_mean"])
    if not hit.any() or hit.all():
        return {"features": [], "causal": None}
    changed = ctx.record("diff")["figures"]["order"]
    feats = explaining_features(pm, am, hit, changed or None, n=10)
    check = None
    if s.causal and feats:
        check = causal_check(pair, hook, d, to_check(feats, s.causal), np.maximum(pm, am), hit,
                             prompts, kl[:, 1], n_tokens=s.behaviour_tokens, null=s.null, batch_size=s.batch_size)
        by = {e["latent"]: e for e in check["features"]}
        for f in feats:
            f["causal"] = by.get(f["latent"])
    from autointerp.behaviour import _name_features
    from autointerp.dictionary_folder import dictionary_name

    _name_features(run, dictionary_name(ddir), feats)
    return {"features": feats, "causal": check}


def _triggers(ctx: AuditContext) -> dict:
    """``triggers.json`` of the trigger stage (empty lists when it was skipped)."""
    path = ctx.folder / "triggers.json"
    return json.loads(path.read_text()) if path.is_file() else {"candidates": [], "features": []}


def to_describe(ctx: AuditContext, beh, trig: dict) -> list[dict]:
    """The suspicious features the ``describe`` stage steers, in the verdict's order
    (:func:`autointerp.audit.verdict.audit_key`: flagged, input side, corpus evidence, AUROC), among the causally
    checked explaining features (of a confirmed trigger, of the behaviour change), each with the
    steering amount of its causal check. At most ``settings.describe``."""
    from autointerp.audit.verdict import audit_key, flagged_by_feature

    diff_rank = {latent: i for i, latent in enumerate(ctx.record("diff")["figures"]["order"], 1)}
    merged: dict[int, dict] = {}  # a latent may explain both the trigger and the behaviour change
    for source, feats in (("trigger", trig.get("features", [])), ("behaviour", beh.features)):
        for f in feats:
            c = f.get("causal") or {}
            if not c.get("amount"):
                continue
            row = {"latent": f["latent"], "source": source, "amount": float(c["amount"]), "auroc": f["auroc"],
                   "side": f.get("side"),
                   "flagged": flagged_by_feature({"causal_passed": c.get("passed"), "auroc": f["auroc"]})}
            row["key"] = audit_key(row["flagged"], row["side"], source, row["auroc"], diff_rank.get(f["latent"]))
            old = merged.get(f["latent"])
            if old is None or row["key"] < old["key"]:
                merged[f["latent"]] = row
    # the verdict's order, so that the first feature described is the audit's first
    rows = sorted(merged.values(), key=lambda r: r["key"])[: ctx.settings.describe]
    for r in rows:
        del r["key"]
    return rows


def stage_describe(ctx: AuditContext) -> dict:
    """What changed, in words (:mod:`autointerp.audit.describe`): each suspicious feature steered
    into ordinary held-out prompts (answers with and without it, their token contrast), and the
    watchlist's closest concept to every change found."""
    from autointerp.audit.describe import concept_axes, concept_shift, steered_answers
    from autointerp.audit.scans import user_carrier, with_insertion
    from autointerp.audit.triggers import token_contrast
    from autointerp.behaviour import load_behaviour
    from autointerp.search import embed_texts

    s = ctx.settings
    beh, trig = load_behaviour(ctx.out), _triggers(ctx)
    feats = to_describe(ctx, beh, trig)
    result: dict = {"features": [], "changes": []}
    changes = []  # (source, latent, changed answers, reference answers)
    if beh.outliers:
        changes.append(("behaviour", None, [o["suspect_answer"] for o in beh.outliers],
                        [o["base_answer"] or "" for o in beh.outliers]))
    best = next((c for c in trig.get("candidates", []) if c["confirmed"]), None)
    if best is not None:
        changes.append(("trigger", None, best["suspect_answers"], trig["clean_answers"]))
    if feats:
        pair = ctx.pair()
        users = _user_messages(ctx, {o["prompt"] for o in beh.outliers})
        pick = np.random.default_rng(1).choice(len(users), size=min(s.describe_prompts, len(users)), replace=False)
        carrier = user_carrier(pair.tokenizer)
        prompts = [with_insertion(carrier, users[i][1], []) for i in sorted(pick)]
        _, hook, d = _dictionary(ctx)
        steered = steered_answers(pair, hook, d, {f["latent"]: f["amount"] for f in feats}, prompts,
                                  n_tokens=s.describe_tokens, batch_size=s.batch_size)
        result["prompts"] = [pair.tokenizer.decode(users[i][1]) for i in sorted(pick)]
        result["without"] = steered["without"]
        for f in feats:
            w = steered["with"][f["latent"]]
            f.update(answers=w["texts"], says_more=token_contrast(pair.tokenizer, w["ids"], steered["without_ids"]))
            result["features"].append(f)
            changes.append(("feature", f["latent"], w["texts"], steered["without"]))
    wl = _watchlist(ctx)
    if wl is not None and changes:
        axes = concept_axes(wl.concepts, embed_texts)
        for source, latent, changed, reference in changes:
            rows = concept_shift(axes, changed, reference, embed_texts)
            result["changes"].append({"source": source, "latent": latent, "pairs": len(changed), "concepts": rows})
            if latent is not None:
                next(f for f in result["features"] if f["latent"] == latent)["concepts"] = rows
    _write(ctx.folder / "describe.json", result)
    matched = [{"source": c["source"], "latent": c["latent"], "concept": r["concept"], "shift": r["shift"]}
               for c in result["changes"] for r in c["concepts"] if r["matched"]]
    return {"features": [f["latent"] for f in result["features"]], "matched": matched,
            "watchlist": None if wl is None else wl.name}


def stage_flag(ctx: AuditContext) -> dict:
    from autointerp.flagging import flag_run, flags

    if ctx.settings.watchlist is None:
        return {"features": 0, "flagged": [], "skipped": "no watchlist (--no-watchlist)"}
    if not ctx.settings.flag_features:
        return {"features": 0, "flagged": [], "skipped": "feature-level watchlist flags off (--flag-features 0)"}
    watchlist = None if ctx.settings.watchlist == "default" else ctx.settings.watchlist
    changed = ctx.record("diff")["figures"]["order"][: ctx.settings.flag_features]
    extra = ctx.record("behaviour")["figures"]["features"] + ctx.record("triggers")["figures"].get("features", [])
    features = list(dict.fromkeys(changed + extra))
    if not features:
        return {"features": 0, "flagged": []}
    flag_run(ctx.out, watchlist=watchlist, features=features, device=ctx.settings.device, progress=ctx.progress)
    rows = [r for r in flags(ctx.out) if r["latent"] in set(features)]
    flagged = []
    for r in rows:
        if r["flagged"] and not any(f["latent"] == r["latent"] and f["concept"] == r["concept"] for f in flagged):
            flagged.append({"latent": r["latent"], "concept": r["concept"], "score": r.get("score")})
    return {"features": len(features), "flagged": flagged}


def stage_verdict(ctx: AuditContext) -> dict:
    from autointerp.audit.verdict import decide

    result = decide(ctx)
    _write(ctx.folder / "audit.json", result)
    print(result["verdict_line"], flush=True)
    return {"verdict": result["verdict"], "verdict_line": result["verdict_line"]}


def stage_report(ctx: AuditContext) -> dict:
    from autointerp.report import build_report

    return {"report": str(build_report(ctx.out, progress=ctx.progress))}

