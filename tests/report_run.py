"""A small run folder for the report tests: a tiny dictionary, features.db with ok and failed
explanations and scores, and XSS probes in the config, explanations and example tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

from autointerp.evaluate import evaluate_dictionary
from autointerp.examples import ExamplesConfig
from autointerp.featuredb import FeatureDB
from autointerp.interpret import prepare_features
from helpers import small_dictionary

HP = "blocks.1.hook_out"
DEAD = 0
CFG = ExamplesConfig(n_top=6, n_quantile_bins=2, n_per_quantile=2, n_random=4, window=(4, 2), batch=200)
PROBES = [
    "<script>alert(1);window.__xss=1</script>",
    '"><img src=x onerror="alert(1);window.__xss=2">',
    "</script><script>alert(2);window.__xss=3</script>",
    "javascript:alert(3)",
    "<!-- \u2028 \u2029 & ]]>",
]


def probe_examples(tokenizer, n_tokens: int = 12) -> list[dict]:
    """Examples whose tokens spell the probes (one example per probe, explain and score split)."""
    out = []
    for i, probe in enumerate(PROBES):
        ids = tokenizer.encode(probe, add_special_tokens=False)[:n_tokens]
        acts = [float(j % 4) for j in range(len(ids))]
        out.append({"kind": "top", "split": "explain" if i % 2 else "score", "quantile": None,
                    "context_index": i, "start": 0, "tokens": ids, "activations": acts,
                    "peak_position": acts.index(max(acts))})
    return out


def build_run(tiny_model, root: Path, tokenizer) -> dict:
    """Write the run under ``root / "run"``; returns its folder and the feature ids of interest:
    ``probe`` (ok explanations that are probes, probe tokens, ok scores), ``failed`` (only a
    parse_error explanation) and ``failed_scores`` (ok explanation, timeout / error scores)."""
    dict_dir, _ = small_dictionary(tiny_model, root, HP, DEAD)
    run = root / "run"
    target = run / "dictionaries" / HP
    shutil.copytree(dict_dir, target)
    evaluate_dictionary(target)
    (run / "config.yaml").write_text(f"# {PROBES[0]}\nmodel: tiny\nnote: '{PROBES[2]}'\n")
    db_path = run / "features.db"
    prepare_features(target, db_path, CFG, progress=False)
    with FeatureDB(db_path) as db:
        live = [f["id"] for f in db.features(include_dead=False)]
        probe, failed, failed_scores = live[:3]
        db.put_examples(probe, probe_examples(tokenizer))
        e0 = db.put_explanation(probe, "token-enrichment", "none", "ok", text=PROBES[0])
        e1 = db.put_explanation(probe, "token-activation", "fake-llm", "ok", text=PROBES[1])
        db.put_score(probe, e1, "embedding", "minilm", "ok", value=0.8, n=10, ci_low=0.6, ci_high=0.9)
        db.put_score(probe, e1, "embedding", "minilm", "ok", value=0.4, n=10, ci_low=0.2, ci_high=0.6,
                     control="random_explanation", details={"control_latent": 5})
        db.put_score(probe, None, "embedding", "minilm", "ok", value=0.6, n=10, ci_low=0.4, ci_high=0.7,
                     control="baseline", details={"control_text": PROBES[2]})
        db.put_score(probe, e0, "embedding", "minilm", "ok", value=0.5, n=10)
        db.put_explanation(failed, "token-activation", "fake-llm", "parse_error", raw_response=PROBES[2],
                           error=PROBES[3])
        e2 = db.put_explanation(failed_scores, "token-enrichment", "none", "ok", text=PROBES[3])
        db.put_score(failed_scores, e2, "embedding", "minilm", "timeout", n=10, error=PROBES[4])
        db.put_score(failed_scores, e2, "embedding", "minilm", "error", control="random_explanation")
        db.put_score(failed_scores, None, "embedding", "minilm", "ok", value=0.5, control="baseline")
    return {"run": run, "probe": probe, "failed": failed, "failed_scores": failed_scores, "live": live}
