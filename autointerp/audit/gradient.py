"""Gradient-guided coordinate search over the inserted tokens (GCG-style, as in trigger inversion):
step 2(b)'s last part in :mod:`autointerp.audit.triggers`.

From a candidate inserted at its place, each step takes the gradient of the mean first-token
``KL(suspect || base)`` over the screening prompts with respect to the inserted tokens' one-hot
inputs, proposes the ``topk`` swaps per position it promises most, scores ``candidates`` random
single swaps among them exactly, and keeps the best when it diverges more.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from autointerp.audit.scans import candidate_vocab, with_insertion
from autointerp.audit.triggers import _Screen
from autointerp.behaviour.divergence import ModelPair


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def inputs_embeds(model, ids: torch.Tensor, at: int | torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """``[B, T, d]`` input embeddings of ``ids [B, T]`` with positions ``at .. at + L - 1`` replaced by
    ``one_hot [L, V] @ E`` (differentiable in ``one_hot``); ``at`` one position for every row or
    ``[B]``, one per row (an insertion opening left-padded prompts of different lengths). The prompt
    goes through the embedding module, so a scaled embedding (Gemma's ``sqrt(d) E[t]``) is scaled,
    and the one-hot rows get the module's ``embed_scale``: ``inputs_embeds`` skip the module."""
    embed = model.get_input_embeddings()
    E = embed.weight
    scale = embed.embed_scale.to(E.dtype) if hasattr(embed, "embed_scale") else 1.0
    emb = embed(ids).detach().clone()
    ins = (one_hot.to(E.dtype) @ E) * scale
    at = torch.as_tensor(at, device=ids.device).expand(len(ids))
    rows = torch.arange(len(ids), device=ids.device)[:, None]
    emb[rows, at[:, None] + torch.arange(len(one_hot), device=ids.device)] = ins.to(emb.dtype)
    return emb


def _slot_gradient(pair: ModelPair, carrier, users: list[list[int]], slots: list[int],
                   allowed: torch.Tensor, place: str = "end") -> torch.Tensor:
    """``[L, V]`` gradient of the mean first-token KL over ``users`` with respect to the one-hot
    inputs of the tokens ``slots`` inserted at ``place`` (the linear estimate of what each swap
    would do)."""
    from autointerp.behaviour.divergence import token_kl

    prompts = [with_insertion(carrier, u, slots, place) for u in users]
    ids, mask, pos = (t.to(pair.device) for t in _left_pad(prompts, pair.pad_id))
    width = ids.shape[1]
    if place == "end":  # left padding aligns every prompt's end
        at = width - len(carrier[1]) - len(slots)
    else:  # opening the message: just after the chat head, after each row's padding
        at = torch.tensor([width - len(p) + len(carrier[0]) for p in prompts], device=pair.device)
    V = pair.suspect.get_input_embeddings().weight.shape[0]
    one_hot = torch.zeros(len(slots), V, device=pair.device)
    one_hot[torch.arange(len(slots)), torch.tensor(slots)] = 1.0
    one_hot.requires_grad_(True)
    lps = []
    for model in (pair.suspect, pair.base):
        emb = inputs_embeds(model, ids, at, one_hot)
        logits = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        lps.append(torch.log_softmax(logits.float(), -1))
    token_kl(lps[0], lps[1]).mean().backward()
    grad = one_hot.grad.detach().clone()
    grad[:, ~allowed] = -float("inf")
    return grad


def gradient_search(pair: ModelPair, users: list[list[int]], init: list[int], *, place: str = "end",
                    steps: int = 16, topk: int = 64, candidates: int = 32, batch_size: int = 64, seed: int = 0,
                    patience: int = 4, progress: bool = True) -> dict:
    """Greedy coordinate search from ``init`` inserted at ``place`` maximising the mean first-token
    divergence over ``users`` (GCG-style): each step, the gradient of the divergence with respect to the inserted
    tokens' one-hot inputs proposes the ``topk`` swaps per position, ``candidates`` random single
    swaps among them are scored exactly, and the best replaces the current string when it scores
    higher. It stops after ``steps`` steps, or after ``patience`` steps in a row without a gain (on
    the planted models the search gained at its first step, then never in 15 more: 10 minutes
    of 2 cores spent for nothing). Returns ``{"ids", "text", "place", "screen_kl", "history"}``."""
    screen = _Screen(pair, users, (place,), batch_size)
    carrier = screen.carrier
    V = pair.suspect.get_input_embeddings().weight.shape[0]
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[torch.as_tensor(candidate_vocab(pair.tokenizer))] = True
    allowed = allowed.to(pair.device)
    rng = np.random.default_rng(seed)
    current = list(init)
    best = float(screen.kl([(current, place)])[0])
    history = [best]
    for _ in tqdm(range(steps), desc="gradient search", unit="step", disable=not progress):
        with torch.enable_grad():
            grad = _slot_gradient(pair, carrier, users, current, allowed, place)
        top = grad.topk(topk, dim=-1).indices.cpu().numpy()
        trials = set()
        for _ in range(candidates):
            j = int(rng.integers(len(current)))
            t = int(top[j, rng.integers(topk)])
            if t != current[j]:
                trials.add((j, t))
        trials = sorted(trials)
        if not trials:
            break
        cands = []
        for j, t in trials:
            c = list(current)
            c[j] = t
            cands.append(c)
        kl = screen.kl([(c, place) for c in cands])
        i = int(kl.argmax())
        if kl[i] > best:
            best, current = float(kl[i]), cands[i]
        history.append(best)
        if patience and len(history) > patience and history[-1] <= history[-1 - patience]:
            break
    return {"ids": current, "text": pair.tokenizer.decode(current), "place": place, "screen_kl": best,
            "history": history}
