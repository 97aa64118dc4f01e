"""Explain and score the latents of a trained dictionary, with everything kept in ``features.db``.

The pipeline joins the pieces (:mod:`autointerp.examples`, :mod:`autointerp.explainers`,
:mod:`autointerp.scorers`, :mod:`autointerp.featuredb`)::

    prepare_features(dictionary, db)        one pass over the held-out shards: every latent's
                                            density and examples (explain / score split) -> db
    explain(db, dictionary, explainer)      each live feature's explain-split examples -> one
                                            Explanation row (ok, or failed with its status)
    score(db, dictionary, scorer)           each ok explanation -> Score rows on the score split:
                                            the explanation and its two controls
    summary(db)                             median score of explanations vs each control

Controls put a score in context: on the same contexts, the scorer also scores (a)
``random_explanation``: the explanation of another feature by the same explainer, picked with
``random.Random(f"{seed}:{explanation_id}")`` (so a re-run picks the same one), and (b)
``baseline``: the no-LLM ``token-enrichment`` explanation of this feature (computed and stored
when absent). The three rows are written in one transaction, so a score is never stored
without its controls attempted. A control that cannot be run (no other feature explained, no
baseline explanation) is stored as a failed row saying why.

Row keys: an explanation is keyed by the explainer and the *requested* model name (the
client's ``model``, ``"none"`` for the baseline), so re-runs find their own rows. A
``random_explanation`` score row points at the explanation under test (its ``details`` name the
control explanation used); a ``baseline`` row has no explanation (one per feature and scorer).

Dead latents (never fired on the held-out set) are stored with ``dead = 1`` and never explained.
Failed explanations and scores are work still to do: a re-run redoes exactly those.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from autointerp.examples import Example, ExamplesConfig, LatentRecord, iter_latent_records
from autointerp.dictionary_folder import dictionary_name, heldout_token_counts, load_tokenizer
from autointerp.explainers import Explanation, build_explainer
from autointerp.featuredb import FeatureDB
from autointerp.llm.base import Deadline, LLMClient
from autointerp.scorers import Score, build_scorer, score_with_controls
from autointerp.selection import FeatureSelection, as_selection

BASELINE_EXPLAINER = "token-enrichment"
BASELINE_MODEL = "none"
"""the model name of explainers that ask no language model."""
EMBEDDING_MODEL = "all-minilm-l6-v2"
"""the model name recorded for the ``embedding`` scorer's rows."""
LLM_SCORERS = ("detection", "fuzzing", "simulation")


# ------------------------------------------------------------------------------- features
def prepare_features(dictionary_dir: str | Path, db_path: str | Path, examples_cfg: ExamplesConfig | None = None,
                     features: FeatureSelection | str | Iterable[int] | None = None, *, overwrite: bool = False,
                     progress: bool = True, device: str = "cpu") -> int:
    """Write the dictionary's latents (density, max activation, dead flag) and their examples
    into ``db_path``; returns how many features were written.

    Latents already stored are skipped (no pass at all when every wanted latent is stored)
    unless ``overwrite``. ``features`` limits which latents are written; a count selects the
    first live ones.
    """
    import dictionaries as dl

    name = dictionary_name(dictionary_dir)
    sel = as_selection(features)
    with FeatureDB(db_path) as db:
        stored = set() if overwrite else {r["latent"] for r in db.features(name)}
        if sel is not None and sel.latents is not None:
            wanted = set(sel.latents)
        else:
            wanted = set(range(dl.load(dictionary_dir).cfg.n_latents))
        if sel is not None and sel.count is not None:
            alive_stored = [r["latent"] for r in db.features(name, include_dead=False)]
            if len(alive_stored) >= sel.count:
                return 0
        elif wanted <= stored:
            return 0
        records = iter_latent_records(dictionary_dir, examples_cfg, progress=progress, device=device)
        if sel is not None and sel.count is not None:
            n_alive = 0
            todo = []
            for rec in records:  # the first ``count`` live latents, and the dead ones before them
                if n_alive >= sel.count:
                    break
                n_alive += not rec.dead
                if rec.latent not in stored:
                    todo.append(rec)
        else:
            todo = [rec for rec in records if rec.latent in wanted and rec.latent not in stored]
        db.put_features(name, todo)
    return len(todo)


def record_from_db(db: FeatureDB, feature: dict) -> LatentRecord:
    """The :class:`LatentRecord` of a ``features`` row, its examples read back in stored order."""
    rec = LatentRecord(latent=feature["latent"], density=feature["density"], max_activation=feature["max_act"])
    for row in db.examples(feature["id"]):
        ex = Example(context_index=row["context_index"], start=row["start"], tokens=row["tokens"],
                     activations=row["activations"], peak_position=row["peak"], kind=row["kind"],
                     split=row["split"], quantile=row["quantile"])
        {"top": rec.top, "quantile": rec.quantiles, "random": rec.random}[ex.kind].append(ex)
    return rec


def _selected(db: FeatureDB, name: str, rows: list[dict], sel: FeatureSelection | None) -> list[dict]:
    if sel is None:
        return rows
    keep = set(sel.select([r["latent"] for r in db.features(name, include_dead=False)]))
    return [r for r in rows if r["latent"] in keep]


# ------------------------------------------------------------------------------- explain
@dataclass
class RunCounts:
    """What one ``explain`` or ``score`` call did."""

    done: int = 0
    """items that ended ``ok``."""
    failed: int = 0
    """items stored with a failure status (still to do)."""
    deadline_passed: bool = False
    """the call's deadline passed: what it stopped is stored as ``timeout``."""


def build_named_explainer(name: str, dictionary_dir: str | Path, tokenizer, client: LLMClient | None = None):
    """``build_explainer`` with what ``name`` needs: corpus counts for the baseline, a client otherwise."""
    if name == BASELINE_EXPLAINER:
        return build_explainer(name, corpus_counts=heldout_token_counts(dictionary_dir), tokenizer=tokenizer)
    if client is None:
        raise ValueError(f"explainer {name!r} asks a language model: pass a client")
    return build_explainer(name, client=client, tokenizer=tokenizer)


def _explainer_model(name: str, client: LLMClient | None) -> str:
    return BASELINE_MODEL if name == BASELINE_EXPLAINER else client.model


def _put_explanation(db: FeatureDB, feature_id: int, name: str, model: str, e: Explanation) -> int:
    return db.put_explanation(feature_id, name, model, e.status, text=e.text, raw_response=e.raw, error=e.error)


@contextmanager
def _deadline(client: LLMClient | None, seconds: float | None):
    """``client.deadline`` set to ``seconds`` from now while inside (None: no deadline)."""
    if client is None or seconds is None:
        yield
        return
    before, client.deadline = client.deadline, Deadline(seconds)
    try:
        yield
    finally:
        client.deadline = before


def explain(db_path: str | Path, dictionary_dir: str | Path, explainer_name: str, client: LLMClient | None = None,
            tokenizer=None, features: FeatureSelection | str | Iterable[int] | None = None, *,
            concurrency: int = 1, progress: bool = True, deadline: float | None = None) -> RunCounts:
    """Explain every live feature of the dictionary with no ``ok`` explanation by
    ``(explainer_name, model)`` yet (never tried or failed), and store each outcome.

    ``client``: for the LLM explainers; ``tokenizer`` defaults to the dictionary model's.
    ``concurrency`` features are explained together (``Explainer.explain_many``: a batch on a
    local model, concurrent requests on an endpoint); the results of each chunk are stored before
    the next chunk starts. ``deadline``: seconds for the whole call; the requests it stops are
    stored as ``timeout`` (redone by the next call).
    Call :func:`prepare_features` first.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(dictionary_dir)
    explainer = build_named_explainer(explainer_name, dictionary_dir, tokenizer, client)
    model = _explainer_model(explainer_name, client)
    name = dictionary_name(dictionary_dir)
    counts = RunCounts()
    with FeatureDB(db_path) as db, _deadline(client, deadline):
        todo = _selected(db, name, db.explanations_todo(explainer_name, model, name), as_selection(features))
        with tqdm(total=len(todo), desc=f"explain {explainer_name}", disable=not progress) as bar:
            # `concurrency` records go to the explainer together (one batch for a local model,
            # concurrent requests for an endpoint); each chunk is stored before the next starts,
            # so a killed run loses at most one chunk and a re-run redoes only what is missing
            for start in range(0, len(todo), concurrency):
                chunk = todo[start:start + concurrency]
                results = explainer.explain_many([record_from_db(db, f) for f in chunk])
                for f, result in zip(chunk, results):
                    _put_explanation(db, f["id"], explainer_name, model, result)
                    counts.done += result.ok
                    counts.failed += not result.ok
                bar.set_postfix(ok=counts.done, failed=counts.failed, refresh=False)
                bar.update(len(chunk))
        counts.deadline_passed = client is not None and client.deadline is not None and client.deadline.passed
    return counts


# --------------------------------------------------------------------------------- score
def build_named_scorer(name: str, tokenizer, client: LLMClient | None = None):
    if name == "embedding":
        return build_scorer(name, tokenizer=tokenizer)
    if client is None:
        raise ValueError(f"scorer {name!r} asks a language model: pass a client")
    return build_scorer(name, client=client, tokenizer=tokenizer)


def _scorer_model(name: str, client: LLMClient | None) -> str:
    return EMBEDDING_MODEL if name == "embedding" else client.model


def _failed(scorer: str, error: str) -> Score:
    return Score.failed(scorer, "error", error)


def _put(db: FeatureDB, feature_id: int, explanation_id: int | None, scorer: str, model: str, control: str,
         s: Score, extra: dict) -> None:
    details = {"method": s.method, **s.details, **extra}
    db.put_score(feature_id, explanation_id, scorer, model, s.status, value=s.value, n=s.n,
                 ci_low=s.ci_low if s.ok else None, ci_high=s.ci_high if s.ok else None, control=control,
                 details=details, error=s.error)


def _baseline_text(db: FeatureDB, feature: dict, record: LatentRecord, baseline) -> tuple[str | None, str | None]:
    """This feature's baseline explanation (computed and stored when absent): (text, why not)."""
    rows = [e for e in db.explanations(feature["id"]) if e["explainer"] == BASELINE_EXPLAINER
            and e["model"] == BASELINE_MODEL]
    if rows and rows[0]["status"] == "ok":
        return rows[0]["text"], None
    e = baseline.explain(record)
    _put_explanation(db, feature["id"], BASELINE_EXPLAINER, BASELINE_MODEL, e)
    return e.text, None if e.ok else f"no baseline explanation: {e.error}"


def score(db_path: str | Path, dictionary_dir: str | Path, scorer_name: str, client: LLMClient | None = None,
          tokenizer=None, explainer_name: str | None = None,
          features: FeatureSelection | str | Iterable[int] | None = None, *, seed: int = 0,
          progress: bool = True, deadline: float | None = None) -> RunCounts:
    """Score every ``ok`` explanation (of ``explainer_name``, or of every explainer) of the
    dictionary that has no ``ok`` score by ``scorer_name`` yet, with its controls (module
    docstring). ``RunCounts`` counts the explanations under test, not the controls.
    ``deadline``: seconds for the whole call; what it stops is stored as ``timeout`` (redone next time).
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(dictionary_dir)
    scorer = build_named_scorer(scorer_name, tokenizer, client)
    model = _scorer_model(scorer_name, client)
    baseline = None  # built on first need: reading the held-out contexts costs a pass over them
    name = dictionary_name(dictionary_dir)
    sel = as_selection(features)
    counts = RunCounts()
    with FeatureDB(db_path) as db, _deadline(client, deadline):
        rows: dict[int, dict] = {}
        for control in ("none", "random_explanation", "baseline"):  # a failed control is work to redo too
            for r in db.scores_todo(scorer_name, model, control, explainer=explainer_name):
                if r["dictionary"] == name:
                    rows.setdefault(r["explanation_id"], r)
        todo = _selected(db, name, sorted(rows.values(), key=lambda r: (r["latent"], r["explanation_id"])), sel)
        feats = {f["id"]: f for f in db.features(name)}
        # candidates for the random control, in id order so the seeded pick is reproducible
        ok_expl = [e for e in db.explanations(status="ok") if e["feature_id"] in feats]
        bar = tqdm(todo, desc=f"score {scorer_name}", disable=not progress)
        for row in bar:
            feature = feats[row["feature_id"]]
            record = record_from_db(db, feature)
            controls: dict[str, str] = {}
            missing: dict[str, Score] = {}
            extra = {"random_explanation": {}, "baseline": {}}
            pool = [e for e in ok_expl if e["feature_id"] != row["feature_id"]
                    and (e["explainer"], e["model"]) == (row["explainer"], row["explainer_model"])]
            if pool:
                other = random.Random(f"{seed}:{row['explanation_id']}").choice(pool)
                controls["random_explanation"] = other["text"]
                extra["random_explanation"] = {"control_explanation_id": other["id"],
                                               "control_latent": feats[other["feature_id"]]["latent"]}
            else:
                missing["random_explanation"] = _failed(scorer_name, "no other feature has an ok explanation "
                                                        f"by {row['explainer']}/{row['explainer_model']}")
            baseline_done = any(s["control"] == "baseline" and s["scorer"] == scorer_name and s["model"] == model
                                for s in db.scores(row["feature_id"], status="ok"))
            if not baseline_done:
                if baseline is None:
                    baseline = build_named_explainer(BASELINE_EXPLAINER, dictionary_dir, tokenizer)
                text, why = _baseline_text(db, feature, record, baseline)
                if text is not None:
                    controls["baseline"] = text
                    extra["baseline"] = {"control_text": text}
                else:
                    missing["baseline"] = _failed(scorer_name, why)
            if client is not None and client.deadline is not None and client.deadline.passed:
                # past the deadline: nothing is asked; the row is stored as timed out, to redo
                why = client.deadline.failure().error
                scores = {"explanation": Score.failed(scorer_name, "timeout", why),
                          **{c: Score.failed(scorer_name, "timeout", why) for c in controls}, **missing}
            else:
                scores = {**score_with_controls(scorer, record, row["text"], controls), **missing}
                if client is not None and client.deadline is not None and client.deadline.passed:
                    # the deadline passed during this row: a score computed without its timed-out
                    # items would look complete; it is stored as timed out instead
                    scores = {k: (Score.failed(scorer_name, "timeout", "the job's deadline passed while scoring: "
                                               f"{v.details.get('failures')}", method=v.method)
                                  if v.details.get("failures", {}).get("timeout") else v)
                              for k, v in scores.items()}
            with db.transaction():  # the score and its controls land together
                _put(db, row["feature_id"], row["explanation_id"], scorer_name, model, "none",
                     scores["explanation"], {})
                _put(db, row["feature_id"], row["explanation_id"], scorer_name, model, "random_explanation",
                     scores["random_explanation"], extra["random_explanation"])
                if "baseline" in scores:
                    _put(db, row["feature_id"], None, scorer_name, model, "baseline", scores["baseline"],
                         extra["baseline"])
            counts.done += scores["explanation"].ok
            counts.failed += not scores["explanation"].ok
            bar.set_postfix(ok=counts.done, failed=counts.failed, refresh=False)
        counts.deadline_passed = client is not None and client.deadline is not None and client.deadline.passed
    return counts


# ------------------------------------------------------------------------------- summary
def summary(db_path: str | Path) -> dict[str, dict[str, dict]]:
    """Per scorer, per control (``none`` = the explanations under test, ``random_explanation``,
    ``baseline``): ``{"n": ok scores, "failed": failed scores, "median": median ok value or None}``."""
    out: dict[str, dict[str, dict]] = {}
    with FeatureDB(db_path) as db:
        values: dict[tuple[str, str], list[float]] = {}
        failed: Counter[tuple[str, str]] = Counter()
        for s in db.scores():
            key = (s["scorer"], s["control"])
            if s["status"] == "ok":
                values.setdefault(key, []).append(s["value"])
            else:
                failed[key] += 1
        for scorer in sorted({k[0] for k in (*values, *failed)}):
            out[scorer] = {c: {"n": len(values.get((scorer, c), [])), "failed": failed[(scorer, c)],
                               "median": statistics.median(values[(scorer, c)]) if values.get((scorer, c)) else None}
                           for c in ("none", "random_explanation", "baseline")}
    return out


def format_summary(summ: dict[str, dict[str, dict]], scorer: str) -> str:
    """``median 0.71 (n=30) vs random 0.52 (n=30) vs baseline 0.64 (n=29)`` for one scorer."""
    if scorer not in summ:
        return "no scores"

    def part(c: str) -> str:
        m = summ[scorer][c]
        value = "n/a" if m["median"] is None else f"{m['median']:.3f}"
        return f"{value} (n={m['n']})"

    return (f"median {part('none')} vs random_explanation {part('random_explanation')} "
            f"vs baseline {part('baseline')}")
