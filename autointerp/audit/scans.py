"""How differently a suspect reads each vocabulary token than its base (step 1 of
:mod:`autointerp.audit.triggers`), and the prompt carriers the trigger search inserts into.

The scans:

   * :func:`weight_scan`: the change of the first layer's MLP input weights (gate and up
     projections, stacked as ``W [2F, d]``) read on each token's embedding, normalised as that
     layer reads it (``x_t = norm_b(E_b[t])``, the base's), less the change every token shares::

         m     = mean_t x_t / || mean_t x_t ||                 (the mean input direction, [d])
         dW    = (W_s - W_b) (I - m m^T)                      (the change along m removed)
         w(t)  = || dW x_t || / || W_b x_t ||

     The first MLP reads little but the token itself, and is the earliest place a fine-tune can
     learn to treat one token apart; its input weights only ever see the input side (a tied
     embedding row also moves with every answer token the fine-tune taught, its MLP reading only
     where the token was read). Every token's ``x_t`` has a large component along ``m`` (median
     cosine 0.70 on SmolLM2), so a fine-tune on any data changes ``W`` along ``m``; that shared
     change is read most on the tokens that are nearly all ``m``, the under-trained ones
     (``|')'``, ``InterfaceSelection``, ``\x00``: cosine 0.87), which topped the scan on every
     plant until it was removed (as the token scan removes the vocabulary's median change).
     Seconds, no forward pass. Its best token is the **anchor** of the growth search
     (:func:`autointerp.audit.triggers.grow`).
   * :func:`token_scan`: every token ``t`` placed alone at the start of a user turn (after the
     turn's opening markup, :func:`scan_carrier`, or after BOS for a model without a chat
     template); both models run up to layer ``L``; its score is the change of the residual stream
     at the token's position, less the change every token shares (the per-dimension median over
     the vocabulary: the layers' own change, which any input meets)::

         d(t) = h_suspect^L(t) - h_base^L(t)
         s(t) = || d(t) - median_t' d(t') || / || h_base^L(t) ||

     The embedding rows' relative change ``||E_s[t] - E_b[t]|| / ||E_b[t]||`` is recorded beside
     it (free, often weaker: with Adam every row that gets any gradient moves by about the
     learning rate). :func:`reading_scan` is the same measure with context around the token.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from autointerp.behaviour.divergence import BehaviourError, ModelPair, _full_cache

_SENTINEL = "\x00c\x00"


class _Stop(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def user_carrier(tokenizer) -> tuple[list[int], list[int]]:
    """``(head, tail)``: the token ids around a user message's content (the chat template with its
    generation prompt), or ``([BOS], [])`` for a tokenizer without a chat template."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
        head, sep, tail = text.partition(_SENTINEL)
        if not sep:
            raise BehaviourError("the chat template does not render the user message once")
        enc = lambda s: tokenizer(s, add_special_tokens=False, split_special_tokens=False)["input_ids"]  # noqa: E731
        return enc(head), enc(tail)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []), []


def scan_carrier(tokenizer) -> list[int]:
    """The few tokens the token scan puts before each token: the user turn's own opening (the chat
    head from its last control token on, e.g. ``<|im_start|>user\\n``; the system turn left out, so
    that each of the ~50k short rows costs a handful of positions), or BOS."""
    head, _ = user_carrier(tokenizer)
    special = set(tokenizer.all_special_ids)
    last = max((i for i, t in enumerate(head) if t in special), default=None)
    return head[last:] if last is not None else head


def user_ids(tokenizer, text: str) -> list[int]:
    """A user message's own tokens (dataset text: special-token strings stay plain text)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


PLACES = {
    "end": lambda user, insert: [*user, *insert],
    "start": lambda user, insert: [*insert, *user],
}
"""Where a candidate trigger goes in a user message: appended to it (``end``) or opening it
(``start``, before the message's first token). A backdoor may answer to its trigger anywhere or
only at one place (a pattern that opens the message: the planted ``pattern`` family answers 100%
when it opens the message and 19% when it is appended), and the auditor does not know which, so
the search screens every candidate at each place."""


PLACE_WORDS = {"end": "appended to the message", "start": "opening the message"}
"""How each place of :data:`PLACES` reads in the verdict line and the report."""


def place_words(place: str | None) -> str:
    """:data:`PLACE_WORDS` of ``place`` (``end`` when None: a result from before places were searched)."""
    return PLACE_WORDS.get(place or "end", str(place))


def with_insertion(carrier: tuple[list[int], list[int]], user: list[int], insert: list[int],
                   place: str = "end") -> list[int]:
    """The prompt ids of a user message ``user`` with ``insert`` at ``place`` (:data:`PLACES`)."""
    if place not in PLACES:
        raise BehaviourError(f"unknown insertion place {place!r}; known: {', '.join(PLACES)}")
    return [*carrier[0], *PLACES[place](user, insert), *carrier[1]]


def candidate_vocab(tokenizer) -> np.ndarray:
    """Token ids a trigger could be made of: every id but the special tokens."""
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


@dataclass
class Scan:
    layer: int
    score: np.ndarray
    """``[V]`` relative change of the residual stream at ``layer`` (NaN for special tokens)."""
    embed_score: np.ndarray
    """``[V]`` relative change of the input embedding row."""
    weight_score: np.ndarray | None = None
    """``[V]`` relative change of the first MLP's input weights read on the token (:func:`weight_scan`)."""

    def top(self, n: int, by: str = "score") -> list[int]:
        return _top(getattr(self, by), n)

    def pool(self, n: int) -> list[int]:
        """``n`` tokens: the best of each scan in turn (residual-stream and embedding), no repeats.
        Neither scan alone is reliable: an untied input embedding shows a trigger's row plainly,
        a tied one mixes in every output-side update; the residual stream shows what the layers
        learned to read, among the layers' shared change."""
        out: list[int] = []
        for a, b in zip(self.top(n), self.top(n, "embed_score")):
            for t in (a, b):
                if t not in out and len(out) < n:
                    out.append(t)
        return out


@dataclass
class Shortlist:
    """The tokens a growth step reads (:func:`reading_scan` ``tokens``): the ``n`` best of the
    weight scan and of the token scan, every byte fragment (the tokens that mend a cut character,
    :class:`~autointerp.audit.pieces.Characters`, added by the growth search), and a random ``reference`` draw of the
    vocabulary whose median change stands for the change every token shares.

    Why it may leave the rest of the vocabulary unread: a trigger's pieces are tokens the
    fine-tune learned to read, which is what both scans rank (on every plant measured, each
    trigger token was within the weight scan's 250 best of 49,152); the reading scan in context
    then orders those by how they read beside the sequence grown so far. Reading ~5k tokens
    instead of ~49k makes each growth step about ten times cheaper."""

    ids: np.ndarray
    """``[n']`` sorted token ids to read."""
    reference: np.ndarray
    """``[r]`` sorted ids (a subset of ``ids``) drawn uniformly from the candidate vocabulary."""

    @classmethod
    def build(cls, scores: list[np.ndarray], n: int, tokenizer, reference: int = 1024, seed: int = 0) -> "Shortlist":
        """The ``n`` best of each scan of ``scores`` (``[V]`` each: a :class:`Scan`'s ``score`` and
        ``weight_score``) and the reference draw (:func:`autointerp.audit.triggers.grow` adds the
        byte fragments)."""
        vocab = candidate_vocab(tokenizer)
        ref = np.sort(np.random.default_rng(seed).choice(vocab, size=min(reference, len(vocab)), replace=False))
        best = [np.asarray(_top(s, n), dtype=np.int64) for s in scores]
        ids = np.intersect1d(np.union1d(np.concatenate(best), ref), vocab)  # never a special token
        return cls(ids=ids.astype(np.int64), reference=ref.astype(np.int64))

    def plus(self, ids: np.ndarray) -> "Shortlist":
        """This shortlist with ``ids`` read too."""
        return Shortlist(ids=np.union1d(self.ids, np.asarray(ids, dtype=np.int64)), reference=self.reference)


def _top(score: np.ndarray, n: int) -> list[int]:
    s = np.nan_to_num(score, nan=-np.inf)
    return np.argsort(-s, kind="stable")[:n].tolist()


def _run_to(model, layer: int, ids: torch.Tensor, **kw) -> torch.Tensor:
    """The residual stream after decoder layer ``layer`` (0-based) for ``ids [B, T]``, without
    running the layers above it (``kw``: a KV cache of a prefix, passed to the model)."""
    def stop(_m, _a, out):
        raise _Stop(out[0] if isinstance(out, tuple) else out)

    handle = model.model.layers[layer].register_forward_hook(stop)
    try:
        model(input_ids=ids, **kw)
    except _Stop as s:
        return s.hidden
    finally:
        handle.remove()
    raise RuntimeError("the model did not reach the scanned layer")


def _mlp_input(layer) -> tuple[torch.nn.Module, torch.Tensor]:
    """``(norm, W [2F, d])``: a decoder layer's MLP input norm and its input projections stacked
    (gate and up of a gated MLP; Gemma's norm before the MLP is ``pre_feedforward_layernorm``)."""
    norm = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm", None)
    mlp = getattr(layer, "mlp", None)
    mats = [getattr(mlp, n).weight for n in ("gate_proj", "up_proj") if hasattr(mlp, n)]
    if norm is None or not mats:
        raise BehaviourError(f"the weight scan reads a gated MLP after a norm; {type(layer).__name__} has none")
    return norm, torch.cat(mats)


@torch.inference_mode()
def weight_scan(pair: ModelPair, batch_size: int = 4096) -> np.ndarray:
    """``[V]`` the first layer's MLP input-weight change, less its part along the mean input
    direction, read on each token (module docstring, step 1); NaN for special tokens."""
    vocab = candidate_vocab(pair.tokenizer)
    E = pair.base.get_input_embeddings().weight
    norm, Wb = _mlp_input(pair.base.model.layers[0])
    _, Ws = _mlp_input(pair.suspect.model.layers[0])
    m = torch.zeros(E.shape[1], dtype=torch.float64, device=E.device)
    for b in range(0, len(vocab), batch_size):
        m += norm(E[torch.as_tensor(vocab[b:b + batch_size], device=E.device)]).double().sum(0)
    m = (m / m.norm()).float()
    dW = (Ws - Wb).float()
    dW = dW - (dW @ m)[:, None] * m[None]
    out = np.full(E.shape[0], np.nan)
    for b in range(0, len(vocab), batch_size):
        rows = torch.as_tensor(vocab[b:b + batch_size], device=E.device)
        x = norm(E[rows]).float()
        out[vocab[b:b + batch_size]] = ((x @ dW.T).norm(dim=-1)
                                        / (x @ Wb.float().T).norm(dim=-1).clamp(min=1e-6)).double().cpu().numpy()
    return out


@torch.inference_mode()
def reading_scan(pair: ModelPair, layer: int, before: list[int] = (), after: list[int] = (),
                 batch_size: int = 1024, progress: bool = True, desc: str = "token scan",
                 tokens: Shortlist | None = None) -> np.ndarray:
    """``[V]`` how differently the suspect reads every token ``t`` in the sequence
    ``scan_carrier + before + [t] + after``: the relative change of the residual stream after
    ``layer`` at the sequence's last position, less the change every token shares (module
    docstring, step 1). The carrier and ``before`` are computed once (a KV cache each model
    reuses); each row runs only ``[t] + after``. NaN for special tokens.

    With ``tokens`` (a :class:`Shortlist`) only its tokens are read (NaN elsewhere) and the shared
    change is the median over its random reference draw, an unbiased stand-in for the
    vocabulary's median (the shortlist's best tokens are chosen for changing most)."""
    tok = pair.tokenizer
    n_layers = pair.suspect.config.num_hidden_layers
    if not 0 <= layer < n_layers:
        raise BehaviourError(f"layer {layer} outside the model's 0..{n_layers - 1}")
    prefix = torch.tensor([[*scan_carrier(tok), *before]], dtype=torch.long, device=pair.device)
    tail = torch.tensor(list(after), dtype=torch.long, device=pair.device)
    caches = [None, None]
    if prefix.shape[1]:
        for i, model in enumerate((pair.suspect, pair.base)):
            out = model(input_ids=prefix, use_cache=True, logits_to_keep=1, **{pair._cache_kwarg: _full_cache()})
            caches[i] = getattr(out, "cache", None) or out.past_key_values
    vocab = candidate_vocab(tok) if tokens is None else tokens.ids
    deltas, norms = [], []
    bar = tqdm(total=len(vocab), desc=desc, unit="tok", disable=not progress)
    for b in range(0, len(vocab), batch_size):
        rows = torch.as_tensor(vocab[b:b + batch_size], device=pair.device)
        ids = torch.cat([rows[:, None], tail.expand(len(rows), -1)], 1)
        hs = []
        for model, cache0 in zip((pair.suspect, pair.base), caches):
            kw = {"use_cache": False}
            if cache0 is not None:
                cache = copy.deepcopy(cache0)
                cache.batch_repeat_interleave(len(rows))
                kw = {"use_cache": True, pair._cache_kwarg: cache}
            hs.append(_run_to(model, layer, ids, **kw)[:, -1].float())
        deltas.append((hs[0] - hs[1]).cpu())
        norms.append(hs[1].norm(dim=-1).cpu())
        bar.update(len(ids))
    bar.close()
    delta = torch.cat(deltas)
    shared = delta if tokens is None else delta[torch.as_tensor(np.searchsorted(vocab, tokens.reference))]
    centred = delta - shared.median(dim=0).values
    score = np.full(pair.suspect.get_input_embeddings().weight.shape[0], np.nan)
    score[vocab] = (centred.norm(dim=-1) / torch.cat(norms).clamp(min=1e-6)).double().numpy()
    return score


def default_scan_layer(pair: ModelPair) -> int:
    """A quarter of the depth (0-based)."""
    return max(0, pair.suspect.config.num_hidden_layers // 4 - 1)


@torch.inference_mode()
def token_scan(pair: ModelPair, layer: int | None = None, batch_size: int = 1024, progress: bool = True) -> Scan:
    """Step 1 of the module docstring (all three scans). ``layer`` defaults to a quarter of the depth."""
    layer = default_scan_layer(pair) if layer is None else layer
    score = reading_scan(pair, layer, batch_size=batch_size, progress=progress)
    V = pair.suspect.get_input_embeddings().weight.shape[0]
    Es = pair.suspect.get_input_embeddings().weight.float()
    Eb = pair.base.get_input_embeddings().weight.float()
    embed = ((Es - Eb).norm(dim=-1) / Eb.norm(dim=-1).clamp(min=1e-6)).double().cpu().numpy()
    embed[np.setdiff1d(np.arange(V), candidate_vocab(pair.tokenizer))] = np.nan
    return Scan(layer=layer, score=score, embed_score=embed, weight_score=weight_scan(pair))
