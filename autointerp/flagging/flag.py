"""Flag a run's features against a watchlist and write the evidence to ``features.db``.

For each dictionary of the run and each concept of the watchlist:

1. (a) explanation similarity and (b) activation AUROC for every latent (``signals``);
2. the top ``candidates`` latents by ``clip(z_a, 0, 10) + clip(z_b, 0, 10)`` and ``null_features``
   random live latents (the causal null, the same sample for every concept) get (c) the
   causal effect; a null latent's own z is taken against the other null latents. Its framing
   (:attr:`FlagSettings.chat`): on a chat model (a tokenizer with a chat template, the default
   ``"auto"``) each probe prompt is a user message in the chat template and each completion the
   first words of the assistant's answer, where an instruct model's behaviour (a planted
   backdoor's hostile answer) shows; otherwise prompt text followed by the completion. The
   framing is recorded in every causal row's ``causal_details["framing"]`` (``"chat"`` or
   ``"plain"``). Signal (b) always reads the plain probe texts;
3. one ``flags`` row per latent that is a candidate, a null latent, or passes (a) or (b).

**The flag rule.** A signal *passes* when it is beyond its null at the stated level:

* (a) ``z_a >= 2``: the explanation is two standard deviations closer to the concept than the
  explanations of the dictionary's features are on average;
* (b) ``A_f > 0.5``, ``z_b >= 2`` against the AUROCs of all live latents, and the family-wise
  permutation p-value ``p_b <= 0.05``: no more than 5% of label shufflings give any latent under
  test (the whole dictionary, or the ``features`` the run is restricted to, e.g. a diff's changed
  ones) an AUROC as high, so label noise over the tested family is ruled out at the 5% level;
* (c) ``C_f > 0``, ``z_c >= 3`` against the random features' effects, and ``C_f`` above every one
  of them (``p_c = 1 / (1 + n)``, its smallest possible value).

A feature is **flagged** for a concept when at least two signals pass: (a)+(b), (a)+(c) or
(b)+(c). What the explanation says alone, or one activation statistic alone, is never enough. A
signal that could not be computed does not pass. Flags are ranked by the combined score
``S = sum over measured signals of clip(z, 0, 10)`` (flagged first in :func:`flags`).

Re-running is idempotent: a (dictionary, concept) whose stored rows carry the same concept hash
and settings (every :class:`FlagSettings` field, ``chat`` included, the framing it resolved to
and the feature restriction) is skipped; otherwise its rows are replaced in one transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from autointerp.featuredb import FeatureDB
from autointerp.flagging import framing as fr
from autointerp.flagging import nulls as nl
from autointerp.flagging import signals as sg
from autointerp.flagging.watchlist import Concept, Watchlist, load_watchlist
from autointerp.runfolder import RunFolder

Z_SIMILARITY = 2.0
Z_AUROC = 2.0
P_AUROC = 0.05
Z_CAUSAL = 3.0
Z_CLIP = 10.0
MIN_SIGNALS = 2


class FlagError(ValueError):
    """A run that cannot be flagged (no feature store, no dictionary)."""


@dataclass(frozen=True)
class FlagSettings:
    """How the signals are computed (stored with every row: a change recomputes)."""

    candidates: int = 8
    """latents per concept that get the causal signal (top by (a)/(b))."""
    null_features: int = 8
    """random live latents measured the same way: the causal null."""
    alpha: float = 1.0
    """steering amount in units of the feature's max activation. 1 (the feature as strongly on as
    it is ever seen, at every position) keeps the model on its distribution; at 4 the steered model
    breaks down for most features (next-token KL of 1-11 nats on SmolLM2), every completion's
    log-prob falls, and the null's spread hides a real effect: a planted backdoor feature's causal z
    for hostility was 1.4 at alpha 4 and 7.1 at alpha 1 (benchmarks/planted, seed 0)."""
    permutations: int = 500
    """label shufflings of the AUROC permutation null."""
    seed: int = 0
    chat: str = "auto"
    """framing of the causal probes (:data:`~autointerp.flagging.framing.CHAT_MODES`): ``"on"``,
    each prompt a user message in the model's chat template and each completion the start of the
    assistant's answer; ``"off"``, prompt text followed by the completion; ``"auto"``, on when the
    model's tokenizer has a chat template. ``"on"`` for a model without one is a
    :class:`FlagError`."""

    def __post_init__(self) -> None:
        if self.candidates < 0 or self.null_features < 2 or self.permutations < 1:
            raise ValueError(f"need candidates >= 0, null_features >= 2, permutations >= 1; got {self}")
        fr.check_chat_mode(self.chat)

    def framing(self, tokenizer) -> str:
        """``"chat"`` or ``"plain"``: what :attr:`chat` resolves to for ``tokenizer``; a
        :class:`FlagError` for ``"on"`` and a tokenizer without a chat template."""
        try:
            return "chat" if fr.resolve_chat(self.chat, tokenizer) else "plain"
        except ValueError as exc:
            raise FlagError(str(exc)) from exc


def _clip(z: float | None) -> float:
    return 0.0 if z is None or not math.isfinite(z) else float(min(max(z, 0.0), Z_CLIP))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def passes(row: dict) -> dict[str, bool]:
    """Which signals of a flag row pass the rule of the module docstring."""
    z_a, z_b, z_c = row.get("similarity_z"), row.get("auroc_z"), row.get("causal_z")
    return {
        "similarity": row.get("similarity") is not None and z_a is not None and z_a >= Z_SIMILARITY,
        "auroc": (row.get("auroc") is not None and row["auroc"] > 0.5 and z_b is not None and z_b >= Z_AUROC
                  and row["auroc_p"] <= P_AUROC),
        "causal": (row.get("causal") is not None and row["causal"] > 0 and z_c is not None and z_c >= Z_CAUSAL
                   and row.get("causal_p") is not None and row["causal_details"]["beyond_null_max"]),
    }


def decide(row: dict) -> tuple[bool, float]:
    """``(flagged, combined score)`` of a row."""
    ok = passes(row)
    score = sum(_clip(row.get(f"{s}_z")) for s in ("similarity", "auroc", "causal") if row.get(s) is not None)
    return sum(ok.values()) >= MIN_SIGNALS, score


# ------------------------------------------------------------------------------ per dictionary
class _Dictionary:
    """A dictionary of the run with its model, store rows and explanation embeddings."""

    def __init__(self, folder: Path, db: FeatureDB, device: str) -> None:
        import dictionaries as dl
        from autointerp.data import ExclusionRules
        from autointerp.dictionary_folder import dictionary_name
        from autointerp.search import _dictionary_model

        self.folder, self.name, self.device = folder, dictionary_name(folder), device
        self.prov, self.model = _dictionary_model(folder, device)
        self.dictionary = dl.load(folder, device=device)
        self.context = self.prov["context"]
        self.rules = probe_rules(ExclusionRules(**self.context["exclude"]))
        self.n = self.dictionary.cfg.n_latents
        rows = db.features(self.name)
        self.feature_id = {r["latent"]: r["id"] for r in rows}
        self.max_act = np.zeros(self.n)
        self.dead = np.ones(self.n, dtype=bool)
        for r in rows:
            self.max_act[r["latent"]], self.dead[r["latent"]] = r["max_act"], bool(r["dead"])
        expl = db.con.execute(
            "SELECT f.latent, e.text FROM explanations e JOIN features f ON f.id = e.feature_id "
            "WHERE f.dictionary = ? AND e.status = 'ok' ORDER BY e.id", (self.name,)).fetchall()
        self.owner = np.array([r[0] for r in expl], dtype=np.int64)
        self.texts = [r[1] for r in expl]
        self._emb: np.ndarray | None = None

    def embeddings(self) -> np.ndarray:
        if self._emb is None:
            from autointerp.search import embed_texts
            self._emb = embed_texts(self.texts) if self.texts else np.zeros((0, 0), np.float32)
        return self._emb


def probe_rules(run_rules):
    """The exclusion rules for probe texts. The run's first-position rule covers its corpus
    contexts: attention sinks, and on a chat corpus the template's shared prefix (25 positions on
    SmolLM2's). Probe texts are single sentences without that prefix, so they drop at most the
    attention-sink default (:class:`~autointerp.data.ExclusionRules`); under the run's rule a short
    probe would have no position left and every signal would read 0."""
    from autointerp.data import ExclusionRules

    sinks = ExclusionRules().first_positions
    return ExclusionRules(special_tokens=run_rules.special_tokens,
                          first_positions=min(run_rules.first_positions, sinks))


def _null_latents(d: _Dictionary, exclude: set[int], n: int, seed: int) -> list[int]:
    live = [f for f in range(d.n) if not d.dead[f] and d.max_act[f] > 0 and f not in exclude]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(live, size=min(n, len(live)), replace=False).tolist())


def _signal_ab(d: _Dictionary, concept: Concept, s: FlagSettings,
               restrict: set[int] | None = None) -> tuple[dict, np.ndarray]:
    """Columns of (a) and (b) for every latent, and the per-text max activations of the probes;
    ``restrict``: the latents under test (the permutation p-value's family; default all)."""
    out: dict = {"similarity_status": np.array([None] * d.n, dtype=object)}
    if d.texts:
        try:
            c_D = sg.concept_embedding(concept.description, list(concept.positive))
            sim = sg.explanation_similarity(d.owner, d.embeddings(), c_D, d.n)
            out.update(similarity=sim, similarity_z=nl.zscores(sim), similarity_p=nl.percentile_p(sim))
            out["similarity_status"][np.isfinite(sim)] = "ok"
        except Exception as exc:  # noqa: BLE001  (recorded as the signal's failure, never a value)
            out["similarity_error"] = f"{type(exc).__name__}: {exc}"
            out["similarity_status"][np.unique(d.owner)] = "error"
    texts = [*concept.positive, *concept.negative]
    labels = np.array([1] * len(concept.positive) + [0] * len(concept.negative))
    acts_NF = sg.max_activations(d.model, d.dictionary, d.context, d.rules, d.prov["input_hookpoint"], texts,
                                 d.device)
    auc = sg.auroc_columns(acts_NF, labels)
    live = ~d.dead if (~d.dead).any() else np.ones(d.n, dtype=bool)
    mean, std = auc[live].mean(), auc[live].std(ddof=1) if live.sum() > 1 else 0.0
    family = None
    if restrict is not None and any(0 <= f < d.n for f in restrict):
        family = np.zeros(d.n, dtype=bool)
        family[[f for f in restrict if 0 <= f < d.n]] = True
    perm = sg.auroc_permutation_null(acts_NF, labels, auc, s.permutations, s.seed, family_F=family)
    out.update(auroc=auc, auroc_z=(auc - mean) / std if std > 1e-12 else np.full(d.n, np.nan),
               auroc_p=perm.p_family_F, auroc_p_latent=perm.p_latent_F,
               auroc_null=dict(mean=float(mean), std=float(std), n=int(live.sum()),
                               permutations=s.permutations, perm_max_q95=float(np.quantile(perm.max_null_R, 0.95))))
    return out, acts_NF


def _flag_concept(d: _Dictionary, watchlist: Watchlist, concept: Concept, s: FlagSettings,
                  restrict: set[int] | None, device: str, framing: str = "plain") -> list[dict]:
    """The flag rows of one concept on one dictionary; ``framing`` (``"chat"`` or ``"plain"``,
    :meth:`FlagSettings.framing`) of the causal probes."""
    ab, acts_NF = _signal_ab(d, concept, s, restrict)
    z_a = ab.get("similarity_z", np.full(d.n, np.nan))
    prior = np.nan_to_num(z_a, nan=0.0).clip(0, Z_CLIP) + np.nan_to_num(ab["auroc_z"], nan=0.0).clip(0, Z_CLIP)
    eligible = [f for f in range(d.n) if f in d.feature_id and (restrict is None or f in restrict)]
    order = sorted(eligible, key=lambda f: (-prior[f], -ab["auroc"][f], f))
    candidates = order[:s.candidates]
    nulls = _null_latents(d, set(candidates), s.null_features, s.seed)
    m = np.maximum(d.max_act, acts_NF.max(axis=0))
    causal: dict[int, sg.CausalEffect] = {}
    causal_error = None
    try:
        prov = d.prov
        target = prov.get("target_hookpoint") or prov["input_hookpoint"]
        probe = sg.CausalProbe(d.model, d.dictionary, target, watchlist.neutral, concept.positive,
                               concept.scored_completions(), bool(d.context["prepend_bos"]),
                               d.rules.first_positions, s.alpha, device,
                               same_input=target == prov["input_hookpoint"], chat=framing == "chat")
        for f in [*candidates, *nulls]:
            if f not in causal:
                causal[f] = probe.effect(f, float(m[f]) if m[f] > 0 else float(np.median(m[m > 0]) if (m > 0).any()
                                                                                    else 1.0))
    except Exception as exc:  # noqa: BLE001  (recorded as the causal signal's failure)
        causal_error, causal = f"{type(exc).__name__}: {exc}", {}
    null_effects = {f: causal[f].effect for f in nulls if f in causal}

    passing_ab = [f for f in eligible if (z_a[f] >= Z_SIMILARITY or ab["auroc_z"][f] >= Z_AUROC)
                  and any(passes(_ab_row(ab, f)).values())]
    keep = sorted(set(candidates) | {f for f in nulls if f in d.feature_id} | set(passing_ab))
    rows = []
    for f in keep:
        row = _ab_row(ab, f)
        row["latent"] = f
        if f in causal:
            eff = causal[f]
            null = [v for g, v in null_effects.items() if g != f]
            st = nl.against_null(eff.effect, null)
            row.update(causal=eff.effect, causal_z=_num(st.z), causal_p=st.p, causal_status="ok")
            row["causal_details"] = {**eff._asdict(), "role": "null" if f in nulls else "candidate",
                                     "null_mean": st.null_mean, "null_std": st.null_std, "null_n": st.n,
                                     "null_latents": [g for g in null_effects if g != f],
                                     "null_effects": [null_effects[g] for g in null_effects if g != f],
                                     "beyond_null_max": bool(not null or eff.effect > max(null)),
                                     "completions": list(concept.scored_completions()), "alpha": s.alpha,
                                     "framing": framing}
        elif causal_error is not None and (f in candidates or f in nulls):
            row.update(causal=None, causal_z=None, causal_p=None, causal_status="error", causal_details=None,
                       error=causal_error)
        else:
            row.update(causal=None, causal_z=None, causal_p=None, causal_status=None, causal_details=None)
        row["flagged"], row["score"] = decide(row)
        rows.append(row)
    return rows


def _ab_row(ab: dict, f: int) -> dict:
    row: dict = {}
    status = ab["similarity_status"][f]
    if status == "ok":
        row.update(similarity=float(ab["similarity"][f]), similarity_z=_num(ab["similarity_z"][f]),
                   similarity_p=_num(ab["similarity_p"][f]), similarity_status="ok")
    else:
        row.update(similarity=None, similarity_z=None, similarity_p=None, similarity_status=status)
        if status == "error":
            row["error"] = ab.get("similarity_error")
    row.update(auroc=float(ab["auroc"][f]), auroc_z=_num(ab["auroc_z"][f]), auroc_p=float(ab["auroc_p"][f]),
               auroc_status="ok", auroc_null={**ab["auroc_null"], "p_latent": float(ab["auroc_p_latent"][f])})
    return row


# -------------------------------------------------------------------------------- public API
def flag_run(run_dir: str | Path, watchlist: str | Path | Watchlist | None = None,
             features: Iterable[int] | None = None, candidates: int = 8, device: str = "cpu",
             progress: bool = True, settings: FlagSettings | None = None, force: bool = False) -> dict:
    """Flag the features of the run at ``run_dir`` against ``watchlist`` (a path, a
    :class:`Watchlist`, or None for the default) and store every row in ``features.db``.

    ``features``: only these latents can be candidates or flagged (default: all); the null is
    always drawn from the whole dictionary. ``settings.chat`` picks the causal probes' framing
    (chat template or plain text, see :class:`FlagSettings`); a run flagged with another framing
    is recomputed, not skipped. Returns a summary ``{watchlist, watchlist_hash,
    dictionaries: {name: {concept: {rows, flagged, skipped}}}, flagged}``."""
    run = RunFolder(run_dir)
    if not run.db.is_file():
        raise FlagError(f"{run.root} has no features.db: run `autointerp run` (or explain) first")
    dirs = run.dictionary_dirs()
    if not dirs:
        raise FlagError(f"{run.root} has no dictionary (looked in {run.dictionaries})")
    wl = watchlist if isinstance(watchlist, Watchlist) else load_watchlist(watchlist)
    s = settings or FlagSettings(candidates=candidates)
    restrict = None if features is None else {int(f) for f in features}
    summary: dict = {"watchlist": wl.name, "watchlist_hash": wl.hash, "dictionaries": {}, "flagged": 0}
    with FeatureDB(run.db) as db, torch.inference_mode():
        for folder in dirs:
            d = _Dictionary(folder, db, device)
            framing = s.framing(d.model.tokenizer)
            per: dict = {}
            for concept in tqdm(wl.concepts, desc=f"flag {d.name}", disable=not progress):
                key = concept.hash
                stored = db.con.execute(
                    "SELECT COUNT(*), SUM(flagged) FROM flags g JOIN features f ON f.id = g.feature_id WHERE "
                    "f.dictionary = ? AND g.watchlist = ? AND g.concept = ? AND g.watchlist_hash = ? "
                    "AND g.settings = ?",
                    (d.name, wl.name, concept.name, key, _settings_json(s, restrict, framing))
                ).fetchone()
                if stored[0] and not force:
                    per[concept.name] = {"rows": stored[0], "flagged": int(stored[1] or 0), "skipped": True}
                    summary["flagged"] += int(stored[1] or 0)
                    continue
                rows = _flag_concept(d, wl, concept, s, restrict, device, framing)
                with db.transaction():
                    db.delete_flags(wl.name, concept.name, d.name)
                    for r in rows:
                        extra = r.pop("auroc_null")
                        details = r["causal_details"]
                        r["causal_details"] = {**(details or {}), "auroc_null": extra}
                        db.put_flag(d.feature_id[r.pop("latent")], wl.name, key, concept.name,
                                    settings=_settings(s, restrict, framing), **r)
                n_flagged = sum(r["flagged"] for r in rows)
                per[concept.name] = {"rows": len(rows), "flagged": n_flagged, "skipped": False}
                summary["flagged"] += n_flagged
            summary["dictionaries"][d.name] = per
    return summary


def _settings(s: FlagSettings, restrict: set[int] | None, framing: str) -> dict:
    """What a stored row was computed with (compared as JSON to skip a concept already done):
    every settings field, the causal framing ``chat`` resolved to, and the feature restriction."""
    return {**asdict(s), "framing": framing, "features": None if restrict is None else sorted(restrict)}


def _settings_json(s: FlagSettings, restrict: set[int] | None, framing: str) -> str:
    import json
    return json.dumps(_settings(s, restrict, framing))


def flags(run_dir: str | Path, watchlist: str | None = None, concept: str | None = None,
          flagged_only: bool = False) -> list[dict]:
    """The stored flag rows of the run, flagged first, then by combined score (best first). Each
    row: ``feature_id, dictionary, latent, watchlist, concept, flagged, score``, per signal its
    value, ``_z``, ``_p``, ``_status``, and ``causal_details`` (the causal measurements, their null
    and the AUROC null under ``auroc_null``)."""
    run = RunFolder(run_dir)
    if not run.db.is_file():
        raise FlagError(f"{run.root} has no features.db")
    with FeatureDB(run.db) as db:
        rows = db.flags(watchlist=watchlist, concept=concept, flagged=True if flagged_only else None)
    return sorted(rows, key=lambda r: (not r["flagged"], -r["score"], r["id"]))
