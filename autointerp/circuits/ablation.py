"""The causal check of an attribution graph: do its top nodes matter more than random ones?

The check runs the *real* model (attention patterns, normalisations and MLPs live, nothing
linearised) with every dictionary spliced in::

    x_out[p] = decode(z'[p]) + err[p]        z' = encode(x_in) (0 at excluded positions),
                                             with the ablated features set to 0

where ``err`` is the clean prompt's error (held fixed, as error nodes are in the graph), so with
nothing ablated the spliced model reproduces the clean target exactly (``baseline`` =
``clean_target``). Features downstream of an ablated node are re-encoded from their changed input.

The ablated nodes are the graph's **feature** nodes (``nodes: "feature"``) when the target has any
upstream of it; otherwise (e.g. a feature of the first dictionary, whose only upstream nodes are
input tokens and error nodes) its **input** nodes (``nodes: "input"``):

* a feature node is ablated by setting its activation to 0;
* an input node is ablated by a *mean-token* ablation: its token embedding (``embed.hook_out``)
  is replaced by the mean row of the model's token-embedding matrix, ``e'[p] = mean_v W_E[v]``.
  Everything downstream runs live, every dictionary re-encodes its changed input, and every error
  term stays the clean one, exactly as for a feature ablation: the check measures the paths the
  graph draws (through attention, MLPs and features), not the part of the change that the
  dictionaries fail to reconstruct (that would go through error nodes, which are leaves).

  The candidate input positions are those every dictionary encodes (not the BOS / attention sink /
  special tokens the cache excludes, whose ablation wrecks any model) at or before the target's
  position (later tokens cannot reach it). The target's own token is a candidate: replacing it
  leaves the target computed by the live model from the rest of the context, a real intervention,
  and top and random sets draw from the same candidates.

For either kind:

* **top**: the ``k`` candidate nodes with the largest influence on the target, ablated together;
  effect ``delta_top = target' - target``.
* **random**: ``k`` nodes drawn uniformly from the candidates (all active feature nodes upstream
  of the target; the candidate input positions) that are NOT among the top ``k``, ablated
  together, ``draws`` times (seeded; with a small pool a set can repeat); ``delta_random`` lists
  ``target' - target`` per draw (``random_nodes`` the sets), ``mean_abs_delta_random`` is the
  mean of ``|target' - target|``. Drawing outside the top set compares the graph's choice with
  the nodes it did not choose: with a few candidates (a short prompt's ~10 input tokens,
  ``k = 5``) a draw from all of them nearly always contains the top node itself, and the check
  could neither fail nor pass on the merits. ``k`` is capped at half the candidates, so the pool
  holds at least ``k`` nodes; with fewer than 2 candidates there is no comparison and ``passed``
  is ``None``.

The graph records both, their ratio ``|delta_top| / mean_abs_delta_random`` and ``passed =
|delta_top| > mean_abs_delta_random``. When the feature check runs, the input check is recorded
too, under ``inputs`` (same keys). ``k = 0`` runs nothing (``passed: None``).
"""

from __future__ import annotations

import numpy as np
import torch

FEATURE_NOTE = "the spliced model (dictionaries + fixed errors) with the chosen features set to 0"
INPUT_NOTE = ("the spliced model (dictionaries + fixed errors) with the chosen input tokens' embeddings replaced "
              "by the mean token embedding")


def _ablated_target(tracer, nodes: list, chosen: list[int]) -> float:
    ablate: dict[str, list[tuple[int, int]]] = {}
    positions = []
    for i in chosen:
        if nodes[i].kind == "input":
            positions.append(nodes[i].position)
        else:
            ablate.setdefault(nodes[i].dictionary, []).append((nodes[i].position, nodes[i].latent))
    with torch.no_grad():
        pres, logits = tracer.forward("spliced", ablate=ablate, ablate_positions=positions)
    return float(tracer._target_value(pres, logits)[0])


def input_candidates(tracer, nodes: list) -> list[int]:
    """Indices of the input nodes the check may ablate (see the module docstring)."""
    keep = torch.stack([s.keep_T.cpu() for s in tracer.spliced]).all(dim=0)
    return [i for i, n in enumerate(nodes)
            if n.kind == "input" and bool(keep[n.position]) and n.position <= tracer.target.position]


def _compare(tracer, nodes: list, influence: np.ndarray, candidates: list[int], k: int, draws: int, seed: int,
             base: float) -> dict:
    """Ablate the ``k`` most influential candidates, and ``k`` random ones ``draws`` times."""
    top = sorted(candidates, key=lambda i: -influence[i])[:k]
    chosen_top = set(top)
    pool = [i for i in candidates if i not in chosen_top]
    delta_top = _ablated_target(tracer, nodes, top) - base
    rng = np.random.default_rng(seed)
    sets = [rng.choice(pool, size=k, replace=False).tolist() for _ in range(draws)]
    random = [_ablated_target(tracer, nodes, chosen) - base for chosen in sets]
    mean_random = float(np.mean(np.abs(random)))
    return {"k": k, "candidates": len(candidates), "random_pool": len(pool),
            "top_nodes": [nodes[i].id for i in top], "random_nodes": [[nodes[i].id for i in c] for c in sets],
            "delta_top": delta_top,
            "abs_delta_top": abs(delta_top), "delta_random": random, "mean_abs_delta_random": mean_random,
            "ratio": abs(delta_top) / mean_random if mean_random > 0 else None,
            "passed": abs(delta_top) > mean_random}


def _empty(nodes_kind: str, note: str, candidates: int = 0) -> dict:
    return {"nodes": nodes_kind, "k": 0, "candidates": candidates, "top_nodes": [], "random_nodes": [],
            "delta_top": 0.0,
            "abs_delta_top": 0.0, "delta_random": [], "mean_abs_delta_random": 0.0, "ratio": None, "passed": None,
            "note": note}


def _input_check(tracer, nodes, influence, k, draws, seed, base) -> dict:
    cands = input_candidates(tracer, nodes)
    if len(cands) < 2:
        return _empty("input", INPUT_NOTE + f"; {len(cands)} ablatable input position(s): no random comparison",
                      len(cands))
    rec = _compare(tracer, nodes, influence, cands, min(k, max(1, len(cands) // 2)), draws, seed, base)
    return {"nodes": "input", **rec, "note": INPUT_NOTE}


def ablation_check(tracer, nodes: list, influence: np.ndarray, k: int = 5, draws: int = 8, seed: int = 0) -> dict:
    """Ablate the ``k`` most influential feature nodes (input nodes when the target has no feature
    upstream), and ``k`` random ones ``draws`` times; return the record stored as
    ``graph["ablation"]`` (see the module docstring)."""
    features = [i for i, n in enumerate(nodes) if n.kind == "feature"]
    base = _ablated_target(tracer, nodes, [])
    record = {"draws": draws, "seed": seed, "baseline": base, "clean_target": tracer.value}
    if k <= 0:
        return {**record, **_empty("feature" if features else "input", "k = 0: no ablation check run")}
    inputs = _input_check(tracer, nodes, influence, k, draws, seed, base)
    if not features:
        return {**record, **inputs}
    if len(features) < 2:
        return {**record, **_empty("feature", FEATURE_NOTE + "; 1 feature node upstream: no random comparison", 1),
                "inputs": inputs}
    rec = _compare(tracer, nodes, influence, features, min(k, len(features) // 2), draws, seed, base)
    return {**record, "nodes": "feature", **rec, "note": FEATURE_NOTE, "inputs": inputs}
