"""The three flag signals of a feature for a concept, and their nulls from random features.

Notation: ``F`` latents, a concept with positive texts ``P`` and matched negative texts ``N``.

(a) **explanation similarity** ``s_f = max_e cos(E(e), c)``: ``E`` the unit all-MiniLM-L6-v2
    embedding (:func:`autointerp.search.embed_texts`), ``e`` over the feature's ``ok``
    explanations, ``c`` the normalised mean of the embeddings of the concept's description and
    of each positive text. A feature with no ``ok`` explanation has no ``s_f`` (NaN, stored NULL).
    Null: the same statistic over every explained feature of the dictionary.

(b) **activation AUROC** ``A_f = P(m_f(p) > m_f(n))`` (ties one half), ``m_f(t)`` the maximum of
    latent ``f`` over the kept positions of text ``t`` (positions the cache excluded count 0),
    computed for all latents at once from column ranks (Mann-Whitney). Two nulls: the AUROCs of
    all live latents (``z``), and a label-permutation null: for ``R`` random relabellings ``pi``,
    ``p_f = (1 + #{pi : max_g A_g(pi) >= A_f}) / (1 + R)``, the max over the latents under test
    (all of them, or the ``features`` a flag run is restricted to) making it a family-wise
    p-value (the chance that label noise alone gives *some* tested latent an AUROC this high).

(c) **causal effect**, measured on the model with a hook at the dictionary's output hook point:

    * steer: on neutral prompts, ``x_t <- x_t + alpha * m_f * W_dec[f]`` at every kept position
      (``m_f`` the feature's max activation);
    * ablate: on positive prompts, ``x_t <- x_t - z_f(x_t) * W_dec[f]`` (the feature's own
      contribution; the dictionary's reconstruction error stays).

    With ``lp(c | prompt)`` the mean per-token log-prob of concept completion ``c``,
    ``D_steer = mean(lp_steer - lp_clean)`` over neutral prompts and completions, ``D_abl`` the
    same on positive prompts, and the effect ``C_f = D_steer - D_abl`` (steering up moves towards
    the concept, ablating away from it: both make ``C_f`` positive). ``KL(clean || edited)`` of
    the next-token distribution after each prompt is recorded beside it. Null: ``C_g`` of random
    live features ``g`` under the same ``alpha`` scaling.

    **Framing** (:mod:`autointerp.flagging.framing`): *plain*, the prompt text followed by the
    completion as written; *chat*, the prompt as the user turn of the model's chat template and the
    completion as the start of the assistant's answer. Everything else is the same: edits from
    position ``skip_first`` on (the template's markup included), the completion's tokens scored,
    the KL after the last prompt token (the assistant header).

Every statistic is reported against its null (:mod:`autointerp.flagging.nulls`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import rankdata
from torch import Tensor

from autointerp.flagging.framing import sequences


# ---------------------------------------------------------------------------- (a) similarity
def concept_embedding(description: str, positive: Sequence[str],
                      embed: Callable[[list[str]], np.ndarray] | None = None) -> Float[np.ndarray, " D"]:
    """The unit mean of the embeddings of the description and of each positive text."""
    if embed is None:
        from autointerp.search import embed_texts as embed
    e_KD = embed([description, *positive])
    c_D = e_KD.mean(axis=0)
    return (c_D / max(float(np.linalg.norm(c_D)), 1e-12)).astype(np.float32)


def explanation_similarity(owner_E: np.ndarray, emb_ED: np.ndarray, concept_D: np.ndarray,
                           n_features: int) -> Float[np.ndarray, " F"]:
    """``s_f = max`` cosine of latent ``f``'s explanation embeddings (rows of ``emb_ED``, owned
    by latent ``owner_E``) with ``concept_D``; NaN for latents with no explanation."""
    s_F = np.full(n_features, -np.inf)
    if len(owner_E):
        np.maximum.at(s_F, np.asarray(owner_E, dtype=np.int64), emb_ED @ concept_D)
    s_F[~np.isfinite(s_F)] = np.nan
    return s_F


# -------------------------------------------------------------------------------- (b) AUROC
def auroc_columns(acts_NF: np.ndarray, labels_N: np.ndarray) -> Float[np.ndarray, " F"]:
    """The AUROC of every column of ``acts_NF`` for 0/1 ``labels_N`` (ties one half), vectorised:
    ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the column rank sums of the
    positives (the statistic of :func:`autointerp.scorers.metrics.auroc`)."""
    y = np.asarray(labels_N).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC undefined: labels hold a single class")
    ranks_NF = rankdata(acts_NF, axis=0)
    return (ranks_NF[y].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class PermutationNull(NamedTuple):
    """AUROCs under label permutations."""

    p_latent_F: np.ndarray
    """per latent: ``(1 + #{pi : A_f(pi) >= A_f}) / (1 + R)``."""
    p_family_F: np.ndarray
    """family-wise: ``(1 + #{pi : max_g A_g(pi) >= A_f}) / (1 + R)``."""
    max_null_R: np.ndarray
    """``max_g A_g(pi)`` for each permutation."""


def auroc_permutation_null(acts_NF: np.ndarray, labels_N: np.ndarray, auroc_F: np.ndarray,
                           permutations: int = 500, seed: int = 0, chunk: int = 100,
                           family_F: np.ndarray | None = None) -> PermutationNull:
    """Shuffle the labels ``permutations`` times; ranks are computed once, each permutation's
    positive rank sums are one matmul (``[R, N] @ [N, F]``), ``chunk`` permutations at a time.

    ``family_F`` (bool ``[F]``, default all): the latents under test; the family-wise max is taken
    over them only (Westfall-Young max-statistic over the hypotheses actually tested)."""
    family = np.ones(acts_NF.shape[1], dtype=bool) if family_F is None else np.asarray(family_F, dtype=bool)
    if not family.any():
        raise ValueError("the family of latents under test is empty")
    y = np.asarray(labels_N).astype(bool)
    n, n_pos = y.size, int(y.sum())
    n_neg = n - n_pos
    ranks_NF = rankdata(acts_NF, axis=0).astype(np.float64)
    rng = np.random.default_rng(seed)
    count_F = np.zeros(acts_NF.shape[1])
    maxes = []
    for start in range(0, permutations, chunk):
        r = min(chunk, permutations - start)
        onehot_RN = np.zeros((r, n))
        for i in range(r):
            onehot_RN[i, rng.permutation(n)[:n_pos]] = 1.0
        a_RF = (onehot_RN @ ranks_NF - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        count_F += (a_RF >= auroc_F - 1e-12).sum(axis=0)
        maxes.append(a_RF[:, family].max(axis=1))
    max_R = np.concatenate(maxes) if maxes else np.zeros(0)
    family_F = (1 + (max_R[None, :] >= auroc_F[:, None] - 1e-12).sum(axis=1)) / (1 + permutations)
    return PermutationNull((1 + count_F) / (1 + permutations), family_F, max_R)


def max_activations(model, dictionary, context: dict, rules, hookpoint: str, texts: Sequence[str],
                    device: str = "cpu") -> Float[np.ndarray, "N F"]:
    """Per text, every latent's maximum over the text's kept positions (0 where excluded), with
    the cache's context rules (BOS, ``ctx_len`` pieces, :class:`~autointerp.data.ExclusionRules`),
    as :func:`autointerp.search.encode_text` does."""
    from autointerp.models import capture
    from autointerp.search import _keep_mask

    tok = model.tokenizer
    head = [tok.bos_token_id] if context["prepend_bos"] else []
    out = np.zeros((len(texts), dictionary.cfg.n_latents), dtype=np.float32)
    for i, text in enumerate(texts):
        ids = torch.tensor(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"],
                           dtype=torch.long)
        for piece in ids.split(context["ctx_len"] - len(head)):
            ids_L = torch.cat([torch.tensor(head, dtype=torch.long), piece])
            keep_L = _keep_mask(ids_L, rules, tok.all_special_ids).to(device)
            if not keep_L.any():
                continue
            x_Ld = capture(model, ids_L[None].to(device), [hookpoint])[hookpoint][0]
            with torch.inference_mode():
                z_KF = dictionary.encode(x_Ld[keep_L].to(torch.float32))
            out[i] = np.maximum(out[i], z_KF.max(dim=0).values.cpu().numpy())
    return out


# ------------------------------------------------------------------------------- (c) causal
class Measured(NamedTuple):
    """Completion log-probs and next-token distributions of one condition."""

    logp_PC: Tensor
    """mean per-token log-prob of completion c after prompt p, ``[P, C]``."""
    next_PV: Tensor
    """log-probs of the token after each prompt, ``[P, V]``."""


EditFn = Callable[[Tensor], Tensor]


UNEMBED_IN = "unembed.hook_in"
"""The bridge's hook point in front of the LM head (after the final norm)."""


def measure(model, prompts: Sequence[str], completions: Sequence[str], hookpoint: str, bos: bool,
            edit: EditFn | None = None, device: str = "cpu", chat: bool = False) -> Measured:
    """Run ``prompt + completion`` for every pair (one batch), with ``edit`` applied to the
    activation at ``hookpoint`` (``[B, L, d] -> [B, L, d]``) when given; ``chat``: the chat
    framing (prompt as a user turn, completion as the assistant's first words).

    The forward pass stops in front of the LM head (``unembed.hook_in``): the head is applied only
    at the positions scored (the last prompt position and the completion's), not at all ``B * L``
    positions, which was most of the time for a 49k vocabulary.

    Trap: the edit is a TransformerLens hook, global state on the model; ``bridge.hooks`` removes
    it in a ``finally`` block even when the forward pass is stopped or fails."""
    from autointerp.models.hookpoints import _StopForward, fused_attention, head_logits

    ids_BL, spans = sequences(model.tokenizer, prompts, completions, bos, chat)
    captured: dict[str, Tensor] = {}

    def grab(act: Tensor, hook) -> None:
        captured["h"] = act
        raise _StopForward

    hooks = ([] if edit is None else [(hookpoint, lambda act, hook: edit(act))]) + [(UNEMBED_IN, grab)]
    with torch.inference_mode(), fused_attention(model, [hookpoint]), model.bridge.hooks(fwd_hooks=hooks):
        try:
            model.bridge(ids_BL.to(device), return_type=None)
        except _StopForward:
            pass
        if "h" not in captured:
            raise RuntimeError(f"the hook point {UNEMBED_IN} never fired: cannot read the next-token distribution")
        # position t predicts token t + 1: the completion's tokens are predicted at lp - 1 .. lp + lc - 2,
        # and position lp - 1 holds the next-token distribution after the prompt
        rows = torch.tensor([b for b, (lp, lc) in enumerate(spans) for _ in range(lc)])
        cols = torch.tensor([t for lp, lc in spans for t in range(lp - 1, lp + lc - 1)])
        h_Kd = captured["h"][rows.to(device), cols.to(device)]
        logits_KV = head_logits(model.hf_model, h_Kd)  # soft-capped where the architecture caps
        logp_KV = torch.log_softmax(logits_KV.float(), dim=-1).cpu()
    n_c = len(completions)
    logp = torch.zeros(len(prompts), n_c)
    nxt = []
    k = 0
    for b, (lp, lc) in enumerate(spans):
        target_T = ids_BL[b, lp:lp + lc]
        logp[b // n_c, b % n_c] = logp_KV[k:k + lc].gather(-1, target_T[:, None]).mean()
        if b % n_c == 0:
            nxt.append(logp_KV[k])
        k += lc
    return Measured(logp, torch.stack(nxt))


def kl(clean: Measured, edited: Measured) -> float:
    """Mean over prompts of ``KL(clean || edited)`` of the next-token distribution."""
    p = clean.next_PV.exp()
    return float((p * (clean.next_PV - edited.next_PV)).sum(-1).mean())


def steer_edit(direction_d: Tensor, amount: float, skip_first: int) -> EditFn:
    """``x_t + amount * direction`` at positions ``t >= skip_first``."""
    def edit(act_BLd: Tensor) -> Tensor:
        out = act_BLd.clone()
        out[:, skip_first:] += (amount * direction_d).to(out.dtype)
        return out
    return edit


def ablate_edit(dictionary, latent: int, skip_first: int) -> EditFn:
    """``x_t - z_f(x_t) * W_dec[f]`` at positions ``t >= skip_first`` (the feature's own term)."""
    def edit(act_BLd: Tensor) -> Tensor:
        out = act_BLd.clone()
        x = out[:, skip_first:].to(torch.float32)
        z_BL = dictionary.encode(x)[..., latent]
        out[:, skip_first:] -= (z_BL[..., None] * dictionary.W_dec[latent].float()).to(out.dtype)
        return out
    return edit


class CausalEffect(NamedTuple):
    """One feature's causal measurements for one concept."""

    effect: float
    """``C_f = D_steer - D_abl``."""
    steer_dlogp: float
    ablate_dlogp: float
    steer_kl: float
    ablate_kl: float
    scale: float
    """``alpha * m_f``: the amount of decoder direction added when steering."""


class CausalProbe:
    """The clean measurements of a concept, computed once, and the edits of any latent against them.

    ``edit_hookpoint`` is where the decoder writes (the target hook point of a transcoder).
    ``chat``: the chat framing (:mod:`autointerp.flagging.framing`) (default plain; see :func:`autointerp.flagging.framing.resolve_chat`)."""

    def __init__(self, model, dictionary, edit_hookpoint: str, neutral: Sequence[str], positive: Sequence[str],
                 completions: Sequence[str], bos: bool, skip_first: int, alpha: float = 1.0,
                 device: str = "cpu", same_input: bool = True, chat: bool = False) -> None:
        self.model, self.dictionary, self.hookpoint = model, dictionary, edit_hookpoint
        self.neutral, self.positive, self.completions = list(neutral), list(positive), list(completions)
        self.bos, self.skip_first, self.alpha, self.device = bos, skip_first, alpha, device
        self.chat = bool(chat)
        self.framing = "chat" if self.chat else "plain"
        self.can_ablate = same_input
        self.clean_neutral = self._measure(self.neutral, None)
        self.clean_positive = self._measure(self.positive, None) if same_input else None

    def _measure(self, prompts, edit) -> Measured:
        return measure(self.model, prompts, self.completions, self.hookpoint, self.bos, edit, self.device,
                       self.chat)

    def effect(self, latent: int, max_activation: float) -> CausalEffect:
        scale = self.alpha * max_activation
        steered = self._measure(self.neutral, steer_edit(self.dictionary.W_dec[latent].detach().float(), scale,
                                                         self.skip_first))
        d_steer = float((steered.logp_PC - self.clean_neutral.logp_PC).mean())
        k_steer = kl(self.clean_neutral, steered)
        if self.can_ablate:
            ablated = self._measure(self.positive, ablate_edit(self.dictionary, latent, self.skip_first))
            d_abl = float((ablated.logp_PC - self.clean_positive.logp_PC).mean())
            k_abl = kl(self.clean_positive, ablated)
        else:  # a transcoder's latents are not read from the edited stream: steering only
            d_abl, k_abl = 0.0, 0.0
        return CausalEffect(d_steer - d_abl, d_steer, d_abl, k_steer, k_abl, scale)

