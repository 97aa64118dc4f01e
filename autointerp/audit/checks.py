"""What an audit checks before it spends minutes: the model pair and the corpus.

* the suspect and the base share architecture, sizes and tokenizer (else a clear error naming
  both); identical weights are an error too (nothing to audit);
* the **parameter distance** ``||theta_s - theta_b|| / ||theta_b||`` over every shared tensor: a
  fine-tune moves weights by a few percent at most; a distance above ``FOREIGN_BASE`` says the base is
  probably not the suspect's base, which is warned about with the figure (the audit still runs);
* the corpus: its documents, the token prefix every document shares (the chat template's system
  turn: excluded from every activation statistic, with BOS), and enough kept tokens for the
  dictionary (``MIN_TOKENS_PER_LATENT`` per latent) and enough prompts for the behaviour diff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FOREIGN_BASE = 0.5
MIN_TOKENS_PER_LATENT = 16
MIN_PROMPTS = 50


class AuditError(ValueError):
    """An audit that cannot run as asked (mismatched models, corpus too small, ...)."""


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AuditError(f"{folder} holds no .safetensors weights")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(f))
        except Exception as exc:  # a truncated or corrupt file: name it
            raise AuditError(f"{f}: unreadable safetensors ({exc})") from exc
    return out


def parameter_distance(suspect_folder: Path, base_folder: Path) -> dict:
    """``{"relative": ||ts - tb|| / ||tb||, "max_tensor": name, "max_tensor_relative": ...}`` over
    the tensors both folders hold (same names and shapes)."""
    s, b = _tensors(Path(suspect_folder)), _tensors(Path(base_folder))
    num = den = 0.0
    worst, worst_rel = None, -1.0
    for name, tb in b.items():
        ts = s.get(name)
        if ts is None or ts.shape != tb.shape:
            continue
        d = float((ts.double() - tb.double()).norm() ** 2)
        n = float(tb.double().norm() ** 2)
        num, den = num + d, den + n
        rel = (d / n) ** 0.5 if n > 0 else 0.0
        if rel > worst_rel:
            worst, worst_rel = name, rel
    if den == 0:
        raise AuditError(f"{suspect_folder} and {base_folder} share no weight tensor of the same name and shape")
    return {"relative": (num / den) ** 0.5, "max_tensor": worst, "max_tensor_relative": worst_rel}


def check_models(suspect: str, base: str) -> dict:
    """Resolve both specs and check them (module docstring); returns the figures."""
    from autointerp.behaviour.divergence import BehaviourError, check_pair
    from autointerp.models import resolve

    (sf, s_sha), (bf, b_sha) = resolve(suspect), resolve(base)
    try:
        check_pair(suspect, sf, base, bf)
    except BehaviourError as exc:
        raise AuditError(str(exc)) from exc
    if s_sha == b_sha:
        raise AuditError(f"suspect {suspect!r} and base {base!r} are the same weights: nothing to audit")
    dist = parameter_distance(Path(sf), Path(bf))
    if dist["relative"] == 0.0:
        raise AuditError(f"suspect {suspect!r} and base {base!r} hold identical weights: nothing to audit")
    if dist["relative"] > FOREIGN_BASE:
        log.warning("the base is probably not the suspect's base: parameter distance %.3f (a fine-tune moves "
                    "weights by a few percent; the largest change is %s at %.3f)", dist["relative"],
                    dist["max_tensor"], dist["max_tensor_relative"])
    return {"suspect_folder": str(sf), "base_folder": str(bf), "suspect_sha": s_sha, "base_sha": b_sha,
            "parameter_distance": dist, "foreign_base": dist["relative"] > FOREIGN_BASE}


@dataclass
class CorpusFacts:
    n_documents: int
    shared_prefix: int
    """context positions (BOS included) every document shares: excluded from activation statistics."""
    shared_prefix_text: str
    kept_tokens: int
    """tokens per document after the shared prefix, summed (each document cut at ``ctx_len``)."""


def corpus_facts(folder: Path, corpus: str, ctx_len: int) -> CorpusFacts:
    """Tokenise the corpus as the cache does (chat messages through the chat template, markup kept)."""
    from transformers import AutoTokenizer

    from autointerp.data import CorpusError, open_corpus

    tok = AutoTokenizer.from_pretrained(folder)
    try:
        docs = [tok(d.text, add_special_tokens=False, split_special_tokens=not d.markup)["input_ids"]
                for d in open_corpus(str(corpus), tokenizer=tok).documents()]
    except CorpusError as exc:
        raise AuditError(str(exc)) from exc
    docs = [d for d in docs if d]
    if not docs:
        raise AuditError(f"corpus {corpus!r} holds no text")
    prefix = list(docs[0])
    for ids in docs[1:]:
        n = 0
        while n < min(len(prefix), len(ids)) and prefix[n] == ids[n]:
            n += 1
        prefix = prefix[:n]
    shared = 1 + len(prefix)
    kept = sum(max(0, min(len(d) + 1, ctx_len) - shared) for d in docs)
    return CorpusFacts(len(docs), shared, tok.decode(prefix), kept)


def check_corpus(facts: CorpusFacts, corpus: str, latents: int) -> None:
    need = MIN_TOKENS_PER_LATENT * latents
    if facts.kept_tokens < need:
        raise AuditError(f"corpus {corpus!r} is too small for a {latents}-latent dictionary: {facts.kept_tokens:,} "
                         f"tokens after the shared prefix, at least {need:,} needed ({MIN_TOKENS_PER_LATENT} per "
                         f"latent); give a larger corpus or fewer --latents")
    if facts.n_documents < MIN_PROMPTS:
        raise AuditError(f"corpus {corpus!r} holds {facts.n_documents} documents; the behaviour diff needs at "
                         f"least {MIN_PROMPTS} prompts")
