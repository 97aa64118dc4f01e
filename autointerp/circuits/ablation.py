"""The causal check of an attribution graph: do its top nodes matter more than random ones?

The check runs the *real* model (attention patterns, normalisations and MLPs live, nothing
linearised) with every dictionary spliced in::

    x_out[p] = decode(z'[p]) + err[p]        z' = encode(x_in) (0 at excluded positions),
                                             with the ablated features set to 0

where ``err`` is the clean prompt's error (held fixed, as error nodes are in the graph), so with
nothing ablated the spliced model reproduces the clean target exactly. Features downstream of an
ablated one are re-encoded from their changed input.

* **top**: the ``k`` feature nodes with the largest influence on the target, ablated together;
  effect ``delta_top = target' - target``.
* **random**: ``k`` feature nodes drawn uniformly from all active feature nodes upstream of the
  target, ablated together, ``draws`` times (seeded); ``delta_random`` is the mean of
  ``|target' - target|`` over the draws.

The graph records both, their ratio ``|delta_top| / delta_random`` and ``passed = |delta_top| >
delta_random``.
"""

from __future__ import annotations

import numpy as np
import torch


def _ablated_target(tracer, nodes: list, chosen: list[int]) -> float:
    ablate: dict[str, list[tuple[int, int]]] = {}
    for i in chosen:
        ablate.setdefault(nodes[i].dictionary, []).append((nodes[i].position, nodes[i].latent))
    with torch.no_grad():
        pres, logits = tracer.forward("spliced", ablate=ablate)
    return float(tracer._target_value(pres, logits)[0])


def ablation_check(tracer, nodes: list, influence: np.ndarray, k: int = 5, draws: int = 8, seed: int = 0) -> dict:
    """Ablate the ``k`` most influential feature nodes, and ``k`` random active ones ``draws``
    times; return the record stored as ``graph["ablation"]`` (see the module docstring)."""
    features = [i for i, n in enumerate(nodes) if n.kind == "feature"]
    base = _ablated_target(tracer, nodes, [])
    record = {"k": 0, "draws": draws, "seed": seed, "baseline": base, "clean_target": tracer.value,
              "top_nodes": [], "delta_top": 0.0, "abs_delta_top": 0.0, "delta_random": [],
              "mean_abs_delta_random": 0.0, "ratio": None, "passed": None,
              "note": "the spliced model (dictionaries + fixed errors) with the chosen features set to 0"}
    if not features or k <= 0:
        record["note"] += "; no active feature upstream of the target: nothing to ablate"
        return record
    k = min(k, len(features))
    top = sorted(features, key=lambda i: -influence[i])[:k]
    delta_top = _ablated_target(tracer, nodes, top) - base
    rng = np.random.default_rng(seed)
    random = [_ablated_target(tracer, nodes, rng.choice(features, size=k, replace=False).tolist()) - base
              for _ in range(draws)]
    mean_random = float(np.mean(np.abs(random)))
    record.update(k=k, top_nodes=[nodes[i].id for i in top], delta_top=delta_top, abs_delta_top=abs(delta_top),
                  delta_random=random, mean_abs_delta_random=mean_random,
                  ratio=abs(delta_top) / mean_random if mean_random > 0 else None,
                  passed=abs(delta_top) > mean_random)
    return record
