"""Attribution graphs: from the prompt's tokens through every dictionary of a run to a target.

**Replacement model.** At each dictionary's target hook point (``blocks.L.hook_out`` for an SAE,
``blocks.L.mlp.hook_out`` for a transcoder reading ``blocks.L.mlp.hook_in``) the activation is
rewritten as::

    x_out[p] = z[p] @ W_dec + b_dec (+ x_in[p] @ W_skip) + err[p]      err[p] = x_out[p] - decode(z[p])

with ``z = encode(x_in)`` on the clean prompt. At the positions the cache excluded (the first
``exclude.first_positions`` positions, attention sinks, and special tokens) ``z = 0``, so the
whole activation there is in the error node.

**Linearisation.** Everything that is not linear in the residual stream is frozen at its value on
the clean prompt: every attention pattern (``attn.hook_pattern``), every normalisation scale
(``ln*.hook_scale``, ``ln_final.hook_scale``) and every MLP activation ``act(gate(x))`` of a
gated MLP (``down(act(gate x) * up x)`` becomes linear in ``x``). The leaves of the
computation are then

* the token embeddings ``e[p]`` (one *input* node per position),
* every feature activation ``z_D[p, f] > 0`` (one *feature* node per dictionary, position, latent),
* every error ``err_D[p]`` (one *error* node per dictionary and position),

and every downstream quantity ``y`` (a feature's pre-activation ``x_in[p] @ W_enc[:, f] +
b_enc[f]``, or the target) is an affine function of the upstream leaves ``s``::

    y = c_y + sum_s A[y, s]        A[y, s] = <dy/ds, s>          (gradient x activation)

``c_y`` (the "bias": ``b_enc``, ``b_dec`` and any model biases carried to ``y``) is ``y`` with
every leaf set to 0. Each leaf is treated as fixed when another is varied, so ``A[y, s]`` is the
*direct* effect of ``s`` on ``y`` (paths through other nodes are not counted: they are edges of
their own). The identity above is exact; ``completeness`` in the graph reports how exactly it
holds in floating point (the tests require a relative error below ``COMPLETENESS_TOL``). For an
active TopK / ReLU / JumpReLU latent ``z = pre``, so a feature node's incoming edges plus its
bias sum to its activation.

**Targets.**

* ``feature:<dictionary>/<id>``: ``id`` is the ``features.db`` row id of a feature of that
  dictionary; ``feature:<dictionary>/latent=<n>`` names the latent directly. The target is the
  latent's pre-activation at ``position`` (default: the position where the latent is largest on
  the prompt, the last kept position when it never fires).
* ``logit:<token>``: the logit of ``<token>`` (which must be one token of the tokenizer) at the
  last position minus the mean logit over the vocabulary there (the mean-centred logit, which
  a constant shift of every logit leaves unchanged).

**Influence and pruning.** With ``Â[y, s] = |A[y, s]| / sum_s' |A[y, s']|`` (row-normalised
absolute attributions), the influence of every node on the target, over all paths, is the
target's row of ``(I - Â)^-1 - I``. Feature and error nodes are kept, most influential first,
until they carry ``node_share`` of the total influence; inputs and the target are always kept.
Edges between kept nodes are scored by ``influence(y) * Â[y, s]`` (1 for the target) and kept,
largest first, until they carry ``edge_share`` of the kept total.

**Cost.** One forward pass records the frozen values; incoming edges take one backward pass per
feature node and the target, batched ``batch_size`` nodes per forward/backward (each row of the
batch has its own copy of the leaves). ``max_feature_nodes`` caps the feature nodes: the weakest
(by ``|z| * ||W_dec[f]||``) are folded into their position's error node, which keeps the
identity exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from autointerp.circuits.store import FORMAT_VERSION, circuit_slug, save_circuit
from autointerp.circuits.targets import (CircuitError, Spliced, Target, _feature_rows, _run_dictionaries,
                                         parse_target, tokenize_prompt)
from autointerp.circuits.tracer import Tracer
from autointerp.runfolder import RunFolder

COMPLETENESS_TOL = 1e-4
"""relative tolerance on ``y = c_y + sum_s A[y, s]`` (against ``|c_y| + sum_s |A[y, s]|``)."""




# ---------------------------------------------------------------------------------------- nodes
@dataclass
class Node:
    id: str
    kind: str
    """``input``, ``feature``, ``error`` or ``target``."""
    layer: int
    """0 for inputs, 1 + the dictionary's index in firing order, last + 1 for the target."""
    position: int
    dictionary: str | None = None
    latent: int | None = None
    activation: float = 0.0


def _nodes(tr: Tracer, max_feature_nodes: int) -> tuple[list[Node], dict[str, Tensor]]:
    """Input, feature and error nodes upstream of the target, and the leaves' values (weakest
    features beyond ``max_feature_nodes`` folded into the error nodes)."""
    T = len(tr.ids_T)
    nodes = [Node(id=f"input/{p}", kind="input", layer=0, position=p, activation=float(tr.emb_Td[p].norm()))
             for p in range(T)]
    ups = tr.upstream()
    cands = []
    for s in ups:
        strength_TF = s.z_TF.abs() * s.dictionary.W_dec.detach().norm(dim=-1)[None]
        for p, f in (s.z_TF != 0).nonzero().tolist():
            cands.append((float(strength_TF[p, f]), s.name, p, f))
    cands.sort(key=lambda c: -c[0])
    keep = {(c[1], c[2], c[3]) for c in cands[:max_feature_nodes]}
    values: dict[str, tuple[Tensor, Tensor]] = {}
    for li, s in enumerate(ups, start=1):
        z, err = s.z_TF.clone(), s.err_Td.clone()
        for p, f in (z != 0).nonzero().tolist():
            if (s.name, p, f) in keep:
                nodes.append(Node(id=f"feature/{s.name}/{p}/{f}", kind="feature", layer=li, position=p,
                                  dictionary=s.name, latent=f, activation=float(z[p, f])))
            else:  # folded into the error node: err + z W_dec keeps x_out unchanged
                err[p] += z[p, f] * s.dictionary.W_dec.detach()[f].to(err.dtype)
                z[p, f] = 0.0
        values[s.name] = (z, err)
        for p in range(T):
            nodes.append(Node(id=f"error/{s.name}/{p}", kind="error", layer=li, position=p, dictionary=s.name,
                              activation=float(err[p].norm())))
    return nodes, values


def _leaves(tr: Tracer, values: dict, batch: int, zero: bool = False) -> dict:
    def rep(t: Tensor) -> Tensor:
        t = torch.zeros_like(t) if zero else t
        return t[None].expand(batch, *t.shape).clone().requires_grad_(True)

    out = {"embed": rep(tr.emb_Td)}
    for name, (z, err) in values.items():
        out[name] = (rep(z), rep(err))
    return out


def _row_value(tr: Tracer, node: Node | None, pres: dict, logits) -> Tensor:
    if node is None:
        return tr._target_value(pres, logits)
    return pres[node.dictionary][:, node.position, node.latent]


def attributions(tr: Tracer, nodes: list[Node], values: dict, batch_size: int = 32
                 ) -> tuple[Float[np.ndarray, "N N"], Float[np.ndarray, " N"], Float[np.ndarray, " N"]]:
    """``(A, c, y)`` over ``nodes + [target]``: ``A[y, s]`` the direct attribution of node ``s`` to
    the pre-activation of feature node ``y`` (or to the target, last row), ``c[y]`` its bias (every
    leaf 0) and ``y`` its value in the linearised model at the clean leaves. Rows of input and
    error nodes are 0 (they have no inputs)."""
    N = len(nodes) + 1
    A = np.zeros((N, N), dtype=np.float64)
    c = np.zeros(N)
    y = np.zeros(N)
    index = {n.id: i for i, n in enumerate(nodes)}
    rows = [i for i, n in enumerate(nodes) if n.kind == "feature"] + [N - 1]
    ups = {s.name for s in tr.upstream()}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        B = len(chunk)
        for zero in (False, True):
            leaves = _leaves(tr, values, B, zero=zero)
            pres, logits = tr.forward("linear", batch=B, leaves=leaves)
            vals = torch.stack([_row_value(tr, nodes[r] if r < N - 1 else None, pres, logits)[b]
                                for b, r in enumerate(chunk)])
            if zero:
                c[chunk] = vals.detach().double().numpy()
                continue
            y[chunk] = vals.detach().double().numpy()
            flat = [leaves["embed"]] + [t for name in ups for t in leaves[name]]
            grads = torch.autograd.grad(vals.sum(), flat, allow_unused=True)
            g = dict(zip(["embed"] + [f"{name}/{k}" for name in ups for k in ("z", "err")], grads))
            emb = tr.emb_Td.to(torch.float32)
            if g["embed"] is not None:
                A[np.ix_(chunk, range(len(tr.ids_T)))] = (g["embed"] * emb[None]).sum(-1).double().numpy()
            for name in ups:
                z, err = values[name]
                gz, ge = g[f"{name}/z"], g[f"{name}/err"]
                if gz is not None:
                    a_BTF = (gz * z[None]).double()
                    for p, f in (z != 0).nonzero().tolist():
                        A[chunk, index[f"feature/{name}/{p}/{f}"]] = a_BTF[:, p, f].numpy()
                if ge is not None:
                    a_BT = (ge * err[None]).sum(-1).double().numpy()
                    for p in range(len(tr.ids_T)):
                        A[chunk, index[f"error/{name}/{p}"]] = a_BT[:, p]
    return A, c, y


def influence(A: Float[np.ndarray, "N N"]) -> Float[np.ndarray, " N"]:
    """Influence of every node on the target (the last node) over all paths: the target's row of
    ``(I - Â)^-1 - I`` with ``Â`` the row-normalised ``|A|``."""
    absA = np.abs(A)
    sums = absA.sum(axis=1, keepdims=True)
    An = np.divide(absA, sums, out=np.zeros_like(absA), where=sums > 0)
    N = len(A)
    e = np.zeros(N)
    e[-1] = 1.0
    row = np.linalg.solve((np.eye(N) - An).T, e)
    row[-1] -= 1.0
    return row


def prune(nodes: list[Node], A: np.ndarray, infl: np.ndarray, node_share: float, edge_share: float
          ) -> tuple[list[int], list[tuple[int, int, float]], dict]:
    """Kept node indices (into ``nodes + [target]``), kept edges ``(target, source, score)`` and
    the pruning record (see the module docstring)."""
    N = len(A)
    cand = [i for i, n in enumerate(nodes) if n.kind in ("feature", "error")]
    total = float(sum(infl[i] for i in cand))
    kept_c, acc = [], 0.0
    for i in sorted(cand, key=lambda i: -infl[i]):
        if total <= 0 or acc >= node_share * total:
            break
        kept_c.append(i)
        acc += float(infl[i])
    kept = sorted([i for i, n in enumerate(nodes) if n.kind == "input"] + kept_c + [N - 1])
    absA = np.abs(A)
    sums = absA.sum(axis=1, keepdims=True)
    An = np.divide(absA, sums, out=np.zeros_like(absA), where=sums > 0)
    weight = infl.copy()
    weight[-1] = 1.0
    ks = np.array(kept)
    sub = An[np.ix_(ks, ks)] * weight[ks][:, None]
    pairs = [(int(ks[a]), int(ks[b]), float(sub[a, b])) for a, b in zip(*np.nonzero(sub))]
    pairs.sort(key=lambda e: -e[2])
    etotal = sum(p[2] for p in pairs)
    edges, eacc = [], 0.0
    for p in pairs:
        if eacc >= edge_share * etotal:
            break
        edges.append(p)
        eacc += p[2]
    record = {"node_share": node_share, "edge_share": edge_share, "kept_share": acc / total if total > 0 else 1.0,
              "influence_total": total, "nodes_total": N, "nodes_kept": len(kept),
              "edges_total": int(np.count_nonzero(A)), "edges_kept": len(edges),
              "edge_kept_share": eacc / etotal if etotal > 0 else 1.0}
    return kept, edges, record


# -------------------------------------------------------------------------------------- the API
def _setup(run: RunFolder, prompt: str, target: str, dictionaries: list[str] | None, model, device: str,
           position: int | None, markup: bool = False) -> Tracer:
    import dictionaries as dl
    from autointerp.data import ExclusionRules
    from autointerp.search import _keep_mask, _load_model

    found = _run_dictionaries(run, dictionaries)
    provs = [prov for _, _, prov in found]
    specs = {p["model"]["spec"] for p in provs}
    if len(specs) > 1:
        raise CircuitError(f"the run's dictionaries come from different models {sorted(specs)}")
    if model is None:
        model = _load_model(provs[0]["model"]["spec"], provs[0]["model"].get("dtype", "float32"), device)
    if len({p["context"]["prepend_bos"] for p in provs}) > 1:
        raise CircuitError("the run's dictionaries disagree on BOS: their caches cut contexts differently")
    context = dict(provs[0]["context"], ctx_len=min(p["context"]["ctx_len"] for p in provs))
    tok = model.tokenizer
    ids_T = tokenize_prompt(tok, prompt, context, markup)
    spliced = []
    for name, d, prov in found:
        keep = _keep_mask(ids_T, ExclusionRules(**prov["context"]["exclude"]), tok.all_special_ids)
        dic = dl.load(d, device=model.device).eval()
        for p in dic.parameters():
            p.requires_grad_(False)
        spliced.append(Spliced(name=name, dictionary=dic, input_hookpoint=prov["input_hookpoint"],
                               target_hookpoint=prov["target_hookpoint"], keep_T=keep.to(model.device)))
    tgt = parse_target(target, run, spliced, tok)
    if tgt.kind == "logit" and getattr(model.hf_model.config, "final_logit_softcapping", None):
        raise CircuitError(f"{model.spec} soft-caps its logits (c * tanh(z / c)), which no linear attribution "
                           f"sums to: trace a feature target instead")
    tr = Tracer(model=model, ids_T=ids_T, spliced=spliced, target=Target(spec=target, kind="logit", token_id=0),
                markup=markup)
    with torch.no_grad():
        tr.forward("record")
    T = len(ids_T)
    if tgt.kind == "feature":
        s = next(s for s in spliced if s.name == tgt.dictionary)
        if position is None:
            z = s.z_TF[:, tgt.latent]
            kept_pos = s.keep_T.nonzero().flatten().tolist() or [T - 1]
            position = int(z.argmax()) if float(z.max()) > 0 else kept_pos[-1]
        if not -T <= position < T:
            raise CircuitError(f"position {position} is outside the prompt's {T} tokens")
        tgt.position = position % T
        tr.value = float(s.pre_TF[tgt.position, tgt.latent])
    else:
        tgt.position = T - 1
    tr.target = tgt
    if tgt.kind == "logit":
        tr.value = float(tr._target_value({}, tr.clean_logits)[0])
    return tr


def circuit(run_dir: str | Path, prompt: str, target: str, *, node_share: float = 0.8, edge_share: float = 0.98,
            max_feature_nodes: int = 300, ablate_k: int = 5, ablate_draws: int = 8, seed: int = 0,
            position: int | None = None, dictionaries: list[str] | None = None, batch_size: int = 32,
            save: bool = True, model=None, device: str = "cpu", markup: bool = False) -> dict:
    """The attribution graph of ``target`` on ``prompt`` over the run's dictionaries, as a
    JSON-ready dict (see the module docstring and :func:`save_circuit`), checked causally
    (:func:`autointerp.circuits.ablation.ablation_check`) and, with ``save``, written to
    ``RUN/circuits/<slug>.json`` (the path is in ``graph["path"]``).

    ``target``: ``feature:<dictionary>/<id>``, ``feature:<dictionary>/latent=<n>`` or
    ``logit:<token>``; ``position``: a feature target's position (default: its largest).
    ``node_share`` / ``edge_share``: the influence kept by pruning. ``max_feature_nodes``: cap on
    feature nodes (the rest folded into error nodes). ``ablate_k``, ``ablate_draws``, ``seed``: the
    causal check (feature nodes; input tokens, mean-token ablated, when no feature is upstream). ``dictionaries``: only these (folder names; default all of the run's).
    ``batch_size``: nodes per batched backward pass. ``model``: an already loaded model (default:
    the dictionaries' model, kept loaded between calls). ``markup``: the prompt is chat-template
    text (its special tokens stay markup, as in a chat corpus). Raises ``CircuitError`` for bad input.
    """
    from autointerp.circuits.ablation import ablation_check

    if not 0 < node_share <= 1 or not 0 < edge_share <= 1:
        raise CircuitError(f"node_share and edge_share must be in (0, 1], got {node_share}, {edge_share}")
    run = RunFolder(run_dir)
    tr = _setup(run, prompt, target, dictionaries, model, device, position, markup)
    nodes, values = _nodes(tr, max_feature_nodes)
    A, c, y = attributions(tr, nodes, values, batch_size=batch_size)
    infl = influence(A)
    kept, edges, pruning = prune(nodes, A, infl, node_share, edge_share)
    rows = [i for i, n in enumerate(nodes) if n.kind == "feature"] + [len(A) - 1]
    scale = np.abs(c[rows]) + np.abs(A[rows]).sum(axis=1)
    resid = np.abs(y[rows] - c[rows] - A[rows].sum(axis=1))
    rel = resid / np.maximum(scale, 1e-12)
    completeness = {"target_value": tr.value, "linear_value": float(y[-1]), "bias": float(c[-1]),
                    "attribution_sum": float(A[-1].sum()), "relative_error": float(rel[-1]),
                    "max_node_relative_error": float(rel.max()), "tolerance": COMPLETENESS_TOL,
                    "note": "target = bias + sum of direct attributions, relative to |bias| + sum |attributions|"}
    ablation = ablation_check(tr, nodes, infl, k=ablate_k, draws=ablate_draws, seed=seed)
    graph = _graph_dict(run, tr, prompt, nodes, A, infl, kept, edges, pruning, completeness, ablation)
    if save:
        path = run.root / "circuits" / f"{circuit_slug(prompt, target)}.json"
        graph["path"] = str(path)
        save_circuit(graph, path)
    return graph


def _graph_dict(run, tr, prompt, nodes, A, infl, kept, edges, pruning, completeness, ablation) -> dict:
    tok = tr.model.tokenizer
    tokens = [tok.decode([i]) for i in tr.ids_T.tolist()]
    by_dict: dict[str, list[int]] = {}
    for i in kept[:-1]:
        if nodes[i].kind == "feature":
            by_dict.setdefault(nodes[i].dictionary, []).append(nodes[i].latent)
    rows = {d: _feature_rows(run, d, lats) for d, lats in by_dict.items()}
    t = tr.target
    target_label = (f"{t.dictionary}/{t.latent}@{t.position}" if t.kind == "feature"
                    else f"logit {t.token!r}")
    n_layers = 1 + len(tr.upstream())
    out_nodes = []
    for i in kept:
        if i == len(A) - 1:
            out_nodes.append({"id": "target", "kind": "target", "layer": n_layers, "position": t.position,
                              "label": target_label, "activation": tr.value, "influence": 1.0,
                              "attribution": None, "token": tokens[t.position]})
            continue
        n = nodes[i]
        d = {"id": n.id, "kind": n.kind, "layer": n.layer, "position": n.position, "token": tokens[n.position],
             "dictionary": n.dictionary, "latent": n.latent, "activation": n.activation,
             "influence": float(infl[i]), "attribution": float(A[-1, i])}
        if n.kind == "input":
            d["label"] = f"{tokens[n.position]!r}@{n.position}"
        elif n.kind == "error":
            excluded = not bool(next(s for s in tr.spliced if s.name == n.dictionary).keep_T[n.position])
            d["label"] = f"error {n.dictionary}@{n.position}" + (" (not encoded)" if excluded else "")
        else:
            fid, expl = rows.get(n.dictionary, {}).get(n.latent, (None, None))
            d.update(feature_id=fid, explanation=expl, label=f"{n.dictionary}/{n.latent}@{n.position}")
        out_nodes.append(d)
    ids = [nodes[i].id if i < len(nodes) else "target" for i in range(len(A))]
    return {
        "version": FORMAT_VERSION, "prompt": prompt, "markup": tr.markup, "tokens": tokens, "token_ids": tr.ids_T.tolist(),
        "model": tr.model.spec, "target": {**t.to_dict(), "value": tr.value, "label": target_label},
        "dictionaries": [{"name": s.name, "input_hookpoint": s.input_hookpoint, "target_hookpoint": s.target_hookpoint,
                          "layer": li} for li, s in enumerate(tr.upstream(), start=1)],
        "nodes": out_nodes,
        "edges": [{"source": ids[s], "target": ids[y], "weight": float(A[y, s]), "score": sc} for y, s, sc in edges],
        "pruning": pruning, "completeness": completeness, "ablation": ablation,
    }
