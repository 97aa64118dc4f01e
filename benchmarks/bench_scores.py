"""Benchmark: the explainer x scorer table of issue 5, with controls and 95% intervals.

Works on a copy of a run folder's ``features.db`` (``--db``, made from ``RUN/features.db`` when
missing; the run folder is never written). For each scorer of ``--scorers`` it calls
``autointerp.interpret.score`` on the first ``--features`` live features that have an ok
explanation by ``--select-by`` (default ``token-enrichment``; every explanation of those features
is scored, whichever explainer wrote it) (resumable: a killed benchmark redoes
only what is missing). The LLM scorers ask ``--endpoint`` (an OpenAI-compatible API) when given,
else the run's embedded model through ``LocalClient``, with a response cache next to the db
(identical prompts, e.g. a token-enrichment explanation and its baseline control, which are the
same text, are generated once).

Then, from the db, for every (explainer, scorer): features with an ok score; the mean
explanation score, random-explanation control and baseline control, each with a 95% bootstrap
interval over features (2,000 resamples, seed 0); the paired difference explanation - random
with its interval; failures by status (and, for the LLM scorers, failed items out of
all items of the explanations under test); how the scorer read the model (``details.method``). An
explainer with no ok explanation is a row saying so. The markdown table is printed and the
table, with the wall time of each scorer call, written to ``--json`` (timings of earlier
invocations on the same db are kept).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_scores.py --run /tmp/demo_run \\
        --db /tmp/bench_scores/features.db --scorers detection --features 20
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path

import numpy as np

from autointerp import interpret
from autointerp.dictionary_folder import dictionary_name, model_spec
from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder
from autointerp.scorers.metrics import bootstrap_ci

N_BOOT = 2000


def _mean(values) -> float:
    return float(np.mean(values))


def _diff(a, b) -> float:
    return float(np.mean(a) - np.mean(b))


def interval(*columns, statistic=_mean) -> dict:
    """Statistic of the per-feature columns with its 95% bootstrap interval over features."""
    if not columns[0]:
        return {"mean": None, "low": None, "high": None}
    ci = bootstrap_ci(*columns, statistic=statistic, n_boot=N_BOOT, seed=0)
    return {"mean": statistic(*columns), "low": ci.low, "high": ci.high}


def select_latents(db: FeatureDB, dictionary: str, n: int, explainer: str | None = None) -> list[int]:
    """The first ``n`` live latents with an ok explanation by ``explainer``, or (None) by every
    explainer that has any (the embedded model parses for ~1 in 16 features, so requiring it
    would leave a handful)."""
    feats = {f["id"]: f["latent"] for f in db.features(dictionary, include_dead=False)}
    by_explainer: dict[tuple[str, str], set[int]] = {}
    for e in db.explanations(status="ok"):
        if e["feature_id"] in feats and explainer in (None, e["explainer"]):
            by_explainer.setdefault((e["explainer"], e["model"]), set()).add(feats[e["feature_id"]])
    common = set.intersection(*by_explainer.values()) if by_explainer else set()
    return sorted(common)[:n]


def make_client(args: argparse.Namespace, dictionary_dir: Path, cache_path: Path):
    from autointerp.llm import LocalClient, OpenAICompatibleClient, ResponseCache

    cache = ResponseCache(cache_path)
    if args.endpoint:
        return OpenAICompatibleClient(args.endpoint, args.endpoint_model, api_key_env=args.api_key_env,
                                      concurrency=args.batch_size, cache=cache)
    return LocalClient(model_spec(dictionary_dir), batch_size=args.batch_size, cache=cache)


def table(db: FeatureDB, dictionary: str) -> list[dict]:
    """One row per (explainer, explainer model, scorer, scorer model) found in the db (module docstring)."""
    feats = {f["id"] for f in db.features(dictionary)}
    expl = [e for e in db.explanations() if e["feature_id"] in feats]
    scores = [s for s in db.scores() if s["feature_id"] in feats]
    by_expl_id = {e["id"]: e for e in expl}
    baseline = {(s["feature_id"], s["scorer"], s["model"]): s for s in scores if s["control"] == "baseline"}
    rows = []
    for key in sorted({(e["explainer"], e["model"]) for e in expl}):
        mine = [e for e in expl if (e["explainer"], e["model"]) == key]
        n_ok = sum(e["status"] == "ok" for e in mine)
        row0 = {"explainer": key[0], "explainer_model": key[1], "explanations": len(mine), "explanations_ok": n_ok,
                "explanation_statuses": dict(Counter(e["status"] for e in mine))}
        if n_ok == 0:
            rows.append({**row0, "scorer": None})
            continue
        own = [s for s in scores if s["explanation_id"] in by_expl_id
               and (by_expl_id[s["explanation_id"]]["explainer"], by_expl_id[s["explanation_id"]]["model"]) == key]
        for scorer in sorted({(s["scorer"], s["model"]) for s in own}):
            none = {s["explanation_id"]: s for s in own
                    if (s["scorer"], s["model"]) == scorer and s["control"] == "none"}
            rand = {s["explanation_id"]: s for s in own
                    if (s["scorer"], s["model"]) == scorer and s["control"] == "random_explanation"}
            ok = [i for i, s in none.items() if s["status"] == "ok"]
            base = [baseline.get((by_expl_id[i]["feature_id"], *scorer)) for i in none]
            paired = [i for i in ok if rand.get(i, {}).get("status") == "ok"]
            rows.append({
                **row0, "scorer": scorer[0], "scorer_model": scorer[1], "n_scored": len(none), "n_ok": len(ok),
                "explanation": interval([none[i]["value"] for i in ok]),
                "random_explanation": interval([rand[i]["value"] for i in rand if rand[i]["status"] == "ok"]),
                "baseline": interval([b["value"] for b in base if b and b["status"] == "ok"]),
                "difference_vs_random": interval([none[i]["value"] for i in paired], [rand[i]["value"] for i in paired],
                                                 statistic=_diff),
                "n_paired": len(paired),
                "failed": {c: dict(Counter(s["status"] for s in d.values() if s["status"] != "ok"))
                           for c, d in (("none", none), ("random_explanation", rand))},
                "auroc": _auroc_columns(none, rand, ok, paired),
                "methods": dict(Counter((s["details"] or {}).get("method") or "-" for s in none.values())),
                "items": sum((s["details"] or {}).get("n_items", 0) for s in none.values()),
                "items_failed": sum((s["details"] or {}).get("n_failed", 0) for s in none.values()),
            })
    return rows


def _auroc_columns(none: dict, rand: dict, ok: list, paired: list) -> dict | None:
    """The yes/no scorers' AUROC of P(yes) (``details["auroc"]``), explanation vs random control."""
    def auc(s):
        return (s.get("details") or {}).get("auroc")

    if not ok or any(auc(none[i]) is None for i in ok):
        return None
    both = [i for i in paired if auc(rand[i]) is not None]
    return {"explanation": interval([auc(none[i]) for i in ok]),
            "random_explanation": interval([auc(rand[i]) for i in both]),
            "difference_vs_random": interval([auc(none[i]) for i in both], [auc(rand[i]) for i in both],
                                             statistic=_diff), "n_paired": len(both)}


def _fmt(m: dict, signed: bool = False) -> str:
    if m["mean"] is None:
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    ends = "" if m["low"] is None else f" [{f.format(m['low'])}, {f.format(m['high'])}]"
    return f.format(m["mean"]) + ends


def markdown(rows: list[dict]) -> str:
    out = ["| explainer | scorer | n ok / scored | explanation | random explanation (control) | baseline (control) "
           "| explanation - random (paired) | failed (statuses) | method |", "|---" * 9 + "|"]
    for r in rows:
        who = f"{r['explainer']} ({r['explainer_model']})"
        if r["scorer"] is None:
            out.append(f"| {who} | - | {r['explanations_ok']} of {r['explanations']} explanations parsed "
                       f"({r['explanation_statuses']}): nothing to score | | | | | | |")
            continue
        failed = "; ".join(f"{c}: {d}" for c, d in r["failed"].items() if d) or "none"
        if r["items"]:
            failed += f" ({r['items_failed']} of {r['items']} LLM items failed)"
        out.append(f"| {who} | {r['scorer']} ({r['scorer_model']}) | {r['n_ok']} / {r['n_scored']} "
                   f"| {_fmt(r['explanation'])} | {_fmt(r['random_explanation'])} | {_fmt(r['baseline'])} "
                   f"| {_fmt(r['difference_vs_random'], signed=True)} | {failed} "
                   f"| {', '.join(f'{k} {v}' for k, v in r['methods'].items())} |")
    aucs = [r for r in rows if r.get("scorer") and r.get("auroc")]
    if aucs:
        out += ["", "AUROC of P(yes) (yes/no scorers read with log-probabilities):", "",
                "| explainer | scorer | n | explanation | random explanation (control) "
                "| explanation - random (paired) |", "|---" * 6 + "|"]
        for r in aucs:
            a = r["auroc"]
            out.append(f"| {r['explainer']} ({r['explainer_model']}) | {r['scorer']} ({r['scorer_model']}) "
                       f"| {a['n_paired']} | {_fmt(a['explanation'])} | {_fmt(a['random_explanation'])} "
                       f"| {_fmt(a['difference_vs_random'], signed=True)} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run folder (read only)")
    p.add_argument("--db", required=True, help="the copy of RUN/features.db to work on (made when missing)")
    p.add_argument("--json", default=None, help="table and timings (default: DB with suffix .json)")
    p.add_argument("--scorers", default="embedding,detection,fuzzing,simulation")
    p.add_argument("--features", type=int, default=100, help="first N live features explained by --select-by")
    p.add_argument("--select-by", default="token-enrichment",
                   help="the explainer whose ok explanations pick the features ('' = every explainer with any)")
    p.add_argument("--endpoint", default=None, help="base URL of an OpenAI-compatible API (default: local model)")
    p.add_argument("--endpoint-model", default=None)
    p.add_argument("--api-key-env", default=None, help="environment variable holding the endpoint's key")
    p.add_argument("--batch-size", type=int, default=8, help="local batch size, or concurrent endpoint requests")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if bool(args.endpoint) != bool(args.endpoint_model):
        p.error("--endpoint and --endpoint-model go together")
    import torch

    torch.set_num_threads(args.threads)
    run = RunFolder(args.run)
    (dictionary_dir,) = run.dictionary_dirs()
    db_path = Path(args.db)
    if not db_path.exists():
        db_path.parent.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(f"file:{run.db}?mode=ro", uri=True)  # read only; a consistent copy (WAL)
        src.execute("VACUUM INTO ?", (str(db_path),))
        src.close()
    json_path = Path(args.json) if args.json else db_path.with_suffix(".json")
    timings = json.loads(json_path.read_text())["timings"] if json_path.exists() else []
    name = dictionary_name(dictionary_dir)
    with FeatureDB(db_path) as db:
        latents = select_latents(db, name, args.features, args.select_by or None)
    client = None
    for scorer in [s for s in args.scorers.split(",") if s]:
        if scorer != "embedding" and client is None:
            client = make_client(args, dictionary_dir, db_path.with_suffix(".cache.db"))
        t0 = time.perf_counter()
        counts = interpret.score(db_path, dictionary_dir, scorer, client=client if scorer != "embedding" else None,
                                 features=latents)
        wall = time.perf_counter() - t0
        n = counts.done + counts.failed
        timings.append({"scorer": scorer, "client": repr(client) if scorer != "embedding" else None,
                        "features_requested": len(latents), "explanations_scored": n, "ok": counts.done,
                        "failed": counts.failed, "wall_s": round(wall, 1),
                        "wall_s_per_explanation": round(wall / n, 2) if n else None, "threads": args.threads})
        print(f"{scorer}: {n} explanations scored ({counts.failed} failed) in {wall:.0f} s", flush=True)
    with FeatureDB(db_path) as db:
        rows = table(db, name)
    json_path.write_text(json.dumps({"run": str(run.root), "db": str(db_path), "dictionary": name,
                                     "n_boot": N_BOOT, "rows": rows, "timings": timings}, indent=1))
    print(markdown(rows))
    print(f"-> {json_path}")


if __name__ == "__main__":
    main()
