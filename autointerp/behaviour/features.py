"""Features that say why: which dictionary features fire where the suspect's behaviour changed, and
whether they cause the change.

**Activations** (:class:`LatentRecorder`): while the suspect answers each prompt, its residual
stream at the dictionary's hook point is encoded and the max of every latent is kept per prompt,
separately over the prompt's own tokens (after the shared prefix, special tokens left out) and
over the suspect's answer tokens (up to its stop token).

**Ranking** (:func:`explaining_features`), on each **side** apart: a conditional behaviour is a
function of the input, and the suspect reads the prompt's tokens before it writes any answer
token, so only a latent's activation on the prompt (side ``input``) can be a cause of the first
changed token; its activation on the suspect's own answer (side ``answer``) follows the change
and may be its consequence (a feature of hostile words fires on hostile answers, whatever
triggered them). Per side and latent, the AUROC of its per-prompt max ``a_i`` for the outlying
prompts against the others (ties averaged): 1 means it is higher on every outlying prompt than on
any other. Among the candidates (the latents the activation diff calls significant, when the run
has one; all latents otherwise), by AUROC, then by ``enrichment = mean_out(a) - mean_rest(a)``
over ``max(a)``: the ``n`` best of the input side, then the ``n`` best of the answer side not
already chosen; each row keeps both AUROCs. The causal check tests the first ``causal`` of each
side (:func:`to_check`).

**Causal check** (:func:`causal_check`), on the suspect, compared with the unedited base:

* *ablation* on the outlying prompts: at every position the latent's decoder contribution is
  removed, ``h <- h - z_j(h) W_dec[j]`` (the rest of ``h``, reconstruction error included, is
  kept); effect = mean ``kl_mean`` before - after (positive: the divergence fell);
* *steering* into ordinary prompts: ``h <- h + a_j W_dec[j]`` at every prompt token, ``a_j`` the
  latent's mean activation on the outlying prompts where it fires (its own scale, 1x); effect =
  mean ``kl_mean`` after - before on those prompts (positive: the divergence rose).

Each effect is compared with the same intervention on ``null`` random live latents (firing on
at least one outlying prompt, outside the tested set), each at its own scale. A latent passes an
intervention when its effect exceeds every null latent's (a rank test: with 8 null latents a
chance pass has probability 1/9); it passes the check when it passes both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from autointerp.behaviour.divergence import ModelPair


class LatentRecorder:
    """An edit that changes nothing and records per-row latent maxima (module docstring)."""

    def __init__(self, dictionary, special_ids: list[int]):
        self.dictionary = dictionary
        self.special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.reset()

    def reset(self) -> None:
        self.prompt_max: Tensor | None = None
        self.steps: list[Tensor] = []

    @torch.inference_mode()
    def _max(self, h: Tensor, ids: Tensor) -> Tensor:
        B, T, d = h.shape
        z = self.dictionary.encode(h.reshape(B * T, d).float()).reshape(B, T, -1)
        keep = ~torch.isin(ids, self.special.to(ids.device))
        return (z * keep[..., None]).max(1).values.cpu()

    def __call__(self, h: Tensor, part: str, ids: Tensor) -> Tensor:
        m = self._max(h, ids)
        if part == "prompt":
            self.prompt_max = m if self.prompt_max is None else torch.maximum(self.prompt_max, m)
        else:
            self.steps.append(m)
        return h

    def result(self, valid: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(prompt_max [B, F], answer_max [B, F])``; ``valid [B, N]`` from the batch's divergence
        (answer step ``i`` fed token ``i``, kept when that token was)."""
        if self.prompt_max is None:
            raise RuntimeError("the recorder saw no forward pass")
        answer = torch.zeros_like(self.prompt_max)
        for i, m in enumerate(self.steps):
            answer = torch.maximum(answer, m * valid[:, i, None].to(m.dtype))
        out = self.prompt_max.numpy(), answer.numpy()
        self.reset()
        return out


def steer_edit(direction: Tensor, amount: float, special_ids: list[int]):
    """Add ``amount * direction`` at every prompt token that is not a special token."""
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)

    def edit(h: Tensor, part: str, ids: Tensor) -> Tensor:
        if part != "prompt":
            return h
        keep = ~torch.isin(ids, special.to(ids.device))
        return h + amount * keep[..., None].to(h.dtype) * direction.to(h.dtype)

    return edit


def ablate_edit(dictionary, latent: int):
    """Remove the latent's decoder contribution ``z_j(h) W_dec[j]`` at every position."""
    w = dictionary.W_dec[latent].detach()

    def edit(h: Tensor, part: str, ids: Tensor) -> Tensor:
        B, T, d = h.shape
        with torch.inference_mode():
            z = dictionary.encode(h.reshape(B * T, d).float())[:, latent].reshape(B, T, 1)
        return h - z.to(h.dtype) * w.to(h.dtype)

    return edit


def auroc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores [N, F]`` for boolean ``labels [N]`` (ties averaged)."""
    from scipy.stats import rankdata

    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both outlying and other prompts")
    ranks = rankdata(scores, axis=0)
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


SIDES = ("input", "answer")
"""where a latent's evidence is read: the prompt's tokens (a possible cause) or the answer's."""


def explaining_features(prompt_max: np.ndarray, answer_max: np.ndarray, outlier: np.ndarray,
                        candidates: list[int] | None = None, n: int = 10) -> list[dict]:
    """The ``n`` latents of each side that fire most specifically on the outlying prompts (module
    docstring): ``prompt_max, answer_max [P, F]`` per-prompt maxima, ``outlier [P]`` boolean."""
    acts = {"input": prompt_max, "answer": answer_max}
    cols = np.arange(prompt_max.shape[1]) if candidates is None else np.asarray(sorted(set(candidates)), dtype=int)
    if len(cols) == 0:
        return []
    auroc = {side: auroc_columns(a[:, cols], outlier) for side, a in acts.items()}
    out: list[dict] = []
    for side in SIDES:
        a = acts[side][:, cols]
        live = (a[outlier] > 0).any(0)
        enrichment = (a[outlier].mean(0) - a[~outlier].mean(0)) / np.maximum(a.max(0), 1e-12)
        order = [i for i in np.lexsort([-enrichment, -auroc[side]]) if live[i]]
        chosen = {f["latent"] for f in out}
        for i in [i for i in order if int(cols[i]) not in chosen][:n]:
            on, rest = a[outlier, i], a[~outlier, i]
            out.append({
                "latent": int(cols[i]), "side": side, "auroc": float(auroc[side][i]),
                "auroc_input": float(auroc["input"][i]), "auroc_answer": float(auroc["answer"][i]),
                "enrichment": float(enrichment[i]), "fires_on_outliers": int((on > 0).sum()),
                "n_outliers": int(outlier.sum()), "fires_on_others": int((rest > 0).sum()),
                "mean_outliers": float(on.mean()), "mean_others": float(rest.mean()),
                "where": "prompt" if prompt_max[outlier, cols[i]].mean() >= answer_max[outlier, cols[i]].mean()
                else "answer",
            })
    return out


def to_check(features: list[dict], causal: int) -> list[int]:
    """The latents the causal check tests: the first ``causal`` of each side."""
    return [f["latent"] for side in SIDES for f in [f for f in features if f.get("side") == side][:causal]]


def _mean_kl(pair: ModelPair, prompts: list[list[int]], n_tokens: int, batch_size: int) -> float:
    vals = []
    for b in range(0, len(prompts), batch_size):
        out = pair.run(prompts[b:b + batch_size], n_tokens, base_answer=False)
        vals += [r["kl_mean"] for r in out.summary()]
    return float(np.mean(vals))


def scale_of(acts: np.ndarray, latent: int, outlier: np.ndarray) -> float:
    """A latent's steering amount: its mean activation on the outlying prompts where it fires
    (on all prompts where it fires, if none of the outlying ones)."""
    col = acts[:, latent]
    on = col[outlier & (col > 0)]
    on = on if len(on) else col[col > 0]
    return float(on.mean()) if len(on) else 0.0


def causal_check(pair: ModelPair, hookpoint: str, dictionary, latents: list[int], acts: np.ndarray,
                 outlier: np.ndarray, prompts: list[list[int]], kl_mean: np.ndarray, *, n_tokens: int,
                 null: int = 8, n_ordinary: int = 32, max_outliers: int = 32, batch_size: int = 32,
                 seed: int = 0) -> dict:
    """Ablate and steer each of ``latents`` and ``null`` random live latents (module docstring).

    ``acts [P, F]``: per-prompt max activations; ``prompts``: every prompt's ids; ``kl_mean``: the
    unedited divergence per prompt. Returns the per-latent results and the null's."""
    rng = np.random.default_rng(seed)
    out_idx = np.flatnonzero(outlier)[:max_outliers]
    rest = np.flatnonzero(~outlier)
    ord_idx = np.sort(rng.choice(rest, size=min(n_ordinary, len(rest)), replace=False))
    special = list(pair.tokenizer.all_special_ids)
    before_out, before_ord = float(kl_mean[out_idx].mean()), float(kl_mean[ord_idx].mean())
    p_out, p_ord = [prompts[i] for i in out_idx], [prompts[i] for i in ord_idx]

    def effects(j: int) -> dict:
        with pair.edited(hookpoint, ablate_edit(dictionary, j)):
            ablated = _mean_kl(pair, p_out, n_tokens, batch_size)
        amount = scale_of(acts, j, outlier)
        direction = dictionary.W_dec[j].detach().float()
        with pair.edited(hookpoint, steer_edit(direction, amount, special)):
            steered = _mean_kl(pair, p_ord, n_tokens, batch_size)
        return {"latent": j, "amount": amount, "kl_ablated": ablated, "ablate_effect": before_out - ablated,
                "kl_steered": steered, "steer_effect": steered - before_ord}

    live = np.flatnonzero((acts[out_idx] > 0).any(0))
    pool = np.setdiff1d(live, np.asarray(latents, dtype=int))
    null_latents = sorted(rng.choice(pool, size=min(null, len(pool)), replace=False).tolist())
    nulls = [effects(j) for j in null_latents]
    tested = []
    for j in latents:
        e = effects(j)
        na = [x["ablate_effect"] for x in nulls]
        ns = [x["steer_effect"] for x in nulls]
        e["ablate_passed"] = bool(nulls) and e["ablate_effect"] > max(na)
        e["steer_passed"] = bool(nulls) and e["steer_effect"] > max(ns)
        e["passed"] = e["ablate_passed"] and e["steer_passed"]
        e["ablate_rank"] = 1 + sum(x >= e["ablate_effect"] for x in na)
        e["steer_rank"] = 1 + sum(x >= e["steer_effect"] for x in ns)
        tested.append(e)
    return {"kl_outliers_before": before_out, "kl_ordinary_before": before_ord, "outlier_prompts": out_idx.tolist(),
            "ordinary_prompts": ord_idx.tolist(), "features": tested, "null": nulls, "null_latents": null_latents}
