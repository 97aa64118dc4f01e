"""What the report reads from a run folder: the feature store, each dictionary's metrics and
provenance, token text, and the views computed from decoder directions (unembedding, neighbours).

The model of a dictionary is loaded at most once per process and spec (:func:`load_model_cached`);
a model that cannot be loaded is reported as a reason string, never as an exception.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autointerp.featuredb import FeatureDB
from autointerp.runfolder import RunFolder
from autointerp.training import PROVENANCE

BASELINE_MODEL = "none"
TOP_TOKENS = 10
NEIGHBOURS = 10
_CHUNK = 256


@dataclass
class DictionaryInfo:
    """One dictionary folder of the run: provenance (``autointerp.json``) and metrics."""

    name: str
    folder: Path
    provenance: dict | None
    metrics: dict | None

    @property
    def spec(self) -> str | None:
        return (self.provenance or {}).get("model", {}).get("spec")

    @property
    def evaluation(self) -> dict:
        return (self.metrics or {}).get("evaluation", {})


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_dictionaries(run: RunFolder) -> dict[str, DictionaryInfo]:
    """Every dictionary folder of the run by name (the ``features.dictionary`` key)."""
    folders = sorted(p for p in run.dictionaries.iterdir() if p.is_dir()) if run.dictionaries.is_dir() else []
    return {p.name: DictionaryInfo(p.name, p, _read_json(p / PROVENANCE), _read_json(p / "metrics.json"))
            for p in folders if (p / PROVENANCE).exists() or (p / "cfg.json").exists()}


@dataclass
class StoreData:
    """All rows of ``features.db`` the report needs, grouped by feature id."""

    features: list[dict]
    explanations: dict[int, list[dict]] = field(default_factory=dict)
    scores: dict[int, list[dict]] = field(default_factory=dict)
    flags: dict[int, list[dict]] = field(default_factory=dict)
    """watchlist flag rows (``features.db`` ``flags``), flagged first then by combined score."""
    diffs: dict[int, list[dict]] = field(default_factory=dict)
    """model-diff rows (``features.db`` ``diffs``, one per base model), by base then rank."""

    @functools.cached_property
    def by_id(self) -> dict[int, dict]:
        return {f["id"]: f for f in self.features}

    @functools.cached_property
    def index(self) -> dict[tuple[str, int], int]:
        """``(dictionary, latent) -> feature id``."""
        return {(f["dictionary"], f["latent"]): f["id"] for f in self.features}


def read_store(run: RunFolder) -> StoreData:
    """The features, explanations and scores of the run (empty when there is no features.db yet)."""
    if not run.db.exists():
        return StoreData([])
    with FeatureDB(run.db) as db:
        data = StoreData(db.features())
        expl, scores = defaultdict(list), defaultdict(list)
        for e in db.explanations():
            expl[e["feature_id"]].append(e)
        for s in db.scores():
            scores[s["feature_id"]].append(s)
        flags = defaultdict(list)
        for g in sorted(db.flags(), key=lambda g: (not g["flagged"], -g["score"], g["id"])):
            flags[g["feature_id"]].append(g)
        diffs = defaultdict(list)
        for d in db.diffs():
            diffs[d["feature_id"]].append(d)
    data.explanations, data.scores, data.flags, data.diffs = dict(expl), dict(scores), dict(flags), dict(diffs)
    return data


def ok_explanation(store: StoreData, feature_id: int) -> str | None:
    """The text of the feature's best explanation when that one is ``ok``, else None."""
    best = best_explanation(store.explanations.get(feature_id, []), store.scores.get(feature_id, []))
    return best["text"] if best and best["status"] == "ok" else None


@dataclass
class DiffSummary:
    """``RUN/diff.json`` (written by ``autointerp diff``), or why it could not be read."""

    summary: dict | None
    error: str | None = None


def read_diff_summary(run: RunFolder) -> DiffSummary:
    """The summary of the latest ``autointerp diff`` (None when there is no diff.json)."""
    path = run.root / "diff.json"
    if not path.exists():
        return DiffSummary(None)
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return DiffSummary(None, f"could not read diff.json: {exc}")
    if not isinstance(summary, dict):
        return DiffSummary(None, "could not read diff.json: not a JSON object")
    return DiffSummary(summary)


@dataclass
class CircuitFile:
    """One ``RUN/circuits/<name>.json``: the graph and the feature id of its target, or the reason
    it could not be read (then ``graph`` is None)."""

    name: str
    graph: dict | None
    feature_id: int | None = None
    """the target's ``features.db`` id (None for a logit target or a latent without a feature row)."""
    error: str | None = None


def circuit_target_id(graph: dict, store: StoreData) -> int | None:
    """The feature id of a feature target: the recorded id when the store has it, else the store's
    row of (dictionary, latent)."""
    t = graph["target"]
    if t.get("kind") != "feature":
        return None
    fid = t.get("feature_id")
    if isinstance(fid, int) and fid in store.by_id and store.by_id[fid]["dictionary"] == t.get("dictionary"):
        return fid
    return store.index.get((t.get("dictionary"), t.get("latent")))


def read_circuits(run: RunFolder, store: StoreData) -> list[CircuitFile]:
    """Every ``RUN/circuits/*.json`` in name order; an unreadable file becomes a ``CircuitFile``
    with its ``error``, so one corrupt graph never stops the report."""
    from autointerp.circuits import CircuitError, load_circuit

    folder = run.root / "circuits"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            graph = load_circuit(path)
            if not isinstance(graph.get("target"), dict):
                raise CircuitError("no target record")
            out.append(CircuitFile(path.name, graph, circuit_target_id(graph, store)))
        except (CircuitError, UnicodeDecodeError, TypeError) as exc:
            out.append(CircuitFile(path.name, None, error=str(exc)))
    return out


def best_explanation(explanations: list[dict], scores: list[dict]) -> dict | None:
    """The explanation to show first: the ``ok`` one with the highest mean score (``none`` control),
    explanations by a language model before the no-LLM baseline when unscored; a failed one only
    when none is ``ok``."""
    if not explanations:
        return None

    def mean_score(e: dict) -> float:
        vals = [s["value"] for s in scores if s["explanation_id"] == e["id"] and s["control"] == "none"
                and s["status"] == "ok"]
        return sum(vals) / len(vals) if vals else float("-inf")

    ok = [e for e in explanations if e["status"] == "ok"]
    if not ok:
        return explanations[0]
    return max(ok, key=lambda e: (mean_score(e), e["model"] != BASELINE_MODEL, -e["id"]))


# ---------------------------------------------------------------------------------- models
@functools.lru_cache(maxsize=2)
def load_model_cached(spec: str):
    """``autointerp.models.load_model(spec)``, or the reason it failed (a string)."""
    from autointerp.models import load_model

    try:
        return load_model(spec)
    except Exception as exc:  # noqa: BLE001  (any failure is shown on the pages, not raised)
        return f"the model {spec!r} could not be loaded: {type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=4)
def load_tokenizer_cached(spec: str):
    """The tokenizer of ``spec`` (no weights), or None when it cannot be found offline."""
    import autointerp  # noqa: F401  (offline mode before transformers is imported)
    from transformers import AutoTokenizer

    from autointerp.models import resolve

    try:
        return AutoTokenizer.from_pretrained(resolve(spec)[0])
    except Exception:  # noqa: BLE001  (tokens are then shown as ids)
        return None


class TokenText:
    """Token id -> display text through a tokenizer (``#id`` without one), memoised."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids: list[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in self._cache})
        if missing:
            if self.tokenizer is None:
                texts = [f"#{i}" for i in missing]
            else:
                texts = self.tokenizer.batch_decode([[i] for i in missing],
                                                    clean_up_tokenization_spaces=False)
            self._cache.update(zip(missing, texts))
        return [self._cache[i] for i in ids]


# --------------------------------------------------------------------------- decoder views
@dataclass
class DecoderViews:
    """Per latent: tokens the decoder direction promotes / suppresses, and its nearest latents."""

    logits: dict[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]]
    logit_note: str
    neighbours: dict[int, list[tuple[int, float]]]


def _final_norm_weight(hf_model) -> tuple[torch.Tensor | None, str]:
    """The final norm's scale vector of a transformers causal LM (``1 + w`` for Gemma's RMSNorm)."""
    base = getattr(hf_model, getattr(hf_model, "base_model_prefix", ""), hf_model)
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        weight = getattr(getattr(base, name, None), "weight", None)
        if weight is not None:
            gemma = "gemma" in type(getattr(base, name)).__name__.lower()
            return (1 + weight if gemma else weight).detach().float(), f"final norm `{name}` scale ⊙ W_U"
    return None, "W_U only (no final norm scale found)"


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _logit_views(W_dec: torch.Tensor, latents: list[int], model, text: TokenText
                 ) -> tuple[dict[int, tuple[list, list]], str]:
    if isinstance(model, str):
        return {}, model
    W_U = model.hf_model.get_output_embeddings().weight.detach().float()  # [V, d]
    if W_dec.shape[1] != W_U.shape[1]:
        return {}, (f"the decoder writes {W_dec.shape[1]} dimensions, the model's unembedding reads "
                    f"{W_U.shape[1]}: no unembedding view")
    scale, how = _final_norm_weight(model.hf_model)
    W = W_U if scale is None else W_U * scale  # [V, d]
    out = {}
    for i in range(0, len(latents), _CHUNK):
        chunk = latents[i:i + _CHUNK]
        logits = _unit_rows(W_dec[chunk]) @ W.T  # [c, V]
        top, bottom = logits.topk(TOP_TOKENS, dim=-1), (-logits).topk(TOP_TOKENS, dim=-1)
        for j, lat in enumerate(chunk):
            up = list(zip(text(top.indices[j].tolist()), top.values[j].tolist()))
            down = list(zip(text(bottom.indices[j].tolist()), (-bottom.values[j]).tolist()))
            out[lat] = (up, down)
    note = (f"logit change per unit of the normalised decoder direction through {how} of "
            f"{model.spec} (direct effect only: later layers are ignored)")
    return out, note


def _neighbours(W_dec: torch.Tensor, latents: list[int]) -> dict[int, list[tuple[int, float]]]:
    unit = _unit_rows(W_dec)
    k = min(NEIGHBOURS + 1, unit.shape[0])
    out = {}
    for i in range(0, len(latents), _CHUNK):
        chunk = latents[i:i + _CHUNK]
        cos = unit[chunk] @ unit.T  # [c, F]
        cos[torch.arange(len(chunk)), torch.tensor(chunk)] = -2.0  # never the latent itself
        best = cos.topk(k - 1, dim=-1)
        for j, lat in enumerate(chunk):
            out[lat] = list(zip(best.indices[j].tolist(), best.values[j].tolist()))
    return out


def decoder_views(info: DictionaryInfo, latents: list[int], model, text: TokenText) -> DecoderViews:
    """Unembedding and neighbour views of ``latents`` (batched matmuls over the whole selection)."""
    import dictionaries as dl

    try:
        W_dec = dl.load(info.folder).W_dec.detach().float()
    except Exception as exc:  # noqa: BLE001
        reason = f"the dictionary weights could not be loaded: {type(exc).__name__}: {exc}"
        return DecoderViews({}, reason, {})
    with torch.no_grad():
        logits, note = _logit_views(W_dec, latents, model, text)
        return DecoderViews(logits, note, _neighbours(W_dec, latents))
