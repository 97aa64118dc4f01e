"""``autointerp circuit RUN --prompt "..." --target feature:<dictionary>/<id> | logit:<token>``."""

from __future__ import annotations

import argparse
import sys


def configure(p: argparse.ArgumentParser) -> None:
    """Arguments of ``autointerp circuit``."""
    p.add_argument("run", help="run folder (holding dictionaries/ and, for labels, features.db)")
    p.add_argument("--prompt", required=True, help="the text to trace (at most the dictionaries' context length)")
    p.add_argument("--markup", action="store_true",
                   help="the prompt is chat-template text: keep its special tokens (<|im_start|>) as markup")
    p.add_argument("--target", required=True,
                   help="feature:<dictionary>/<id> (features.db id), feature:<dictionary>/latent=<n>, or "
                        "logit:<token> (mean-centred logit of one token at the last position)")
    p.add_argument("--position", type=int, default=None,
                   help="feature target: the position (default: where the latent is largest)")
    p.add_argument("--node-share", type=float, default=0.8,
                   help="keep the feature/error nodes carrying this share of the influence (default 0.8)")
    p.add_argument("--edge-share", type=float, default=0.98, help="share of edge influence kept (default 0.98)")
    p.add_argument("--max-feature-nodes", type=int, default=300,
                   help="cap on feature nodes; weaker ones are folded into error nodes (default 300)")
    p.add_argument("--ablate-k", type=int, default=5, help="nodes ablated by the causal check (default 5)")
    p.add_argument("--ablate-draws", type=int, default=8, help="random draws of the causal check (default 8)")
    p.add_argument("--dictionary", action="append", default=None,
                   help="only these dictionaries (folder names; repeat the flag); default: all of the run's")
    p.add_argument("--device", default="cpu", help="device of the model")


_ABLATED = {"feature": "features", "input": "input tokens (mean-token ablation)"}


def summary(graph: dict) -> str:
    """A few lines: target, completeness, pruning, ablation check, the most influential nodes, the file."""
    comp, pr, abl = graph["completeness"], graph["pruning"], graph["ablation"]
    lines = [f"target {graph['target']['label']} = {comp['target_value']:.5g} on {len(graph['tokens'])} tokens",
             f"completeness: bias {comp['bias']:.5g} + attributions {comp['attribution_sum']:.5g} "
             f"(relative error {comp['relative_error']:.1e}, tolerance {comp['tolerance']:.0e})",
             f"pruned to {pr['nodes_kept']}/{pr['nodes_total']} nodes ({pr['kept_share']:.0%} of the influence, "
             f"share {pr['node_share']}), {pr['edges_kept']}/{pr['edges_total']} edges"]
    for rec in (abl, abl.get("inputs") or {}):
        what = _ABLATED.get(rec.get("nodes", "feature"), "features")
        if rec.get("k") and rec.get("passed") is not None:
            lines.append(f"ablation check: top {rec['k']} {what} move the target by {rec['delta_top']:+.4g}; "
                         f"{rec['k']} random ones by mean |{rec['mean_abs_delta_random']:.4g}| over {abl['draws']} "
                         f"draws -> {'passed' if rec['passed'] else 'FAILED'}")
        elif rec is abl:
            lines.append(f"ablation check: not run ({rec.get('note', 'nothing to ablate')})")
    ranked = sorted((n for n in graph["nodes"] if n["kind"] in ("feature", "error")), key=lambda n: -n["influence"])
    for n in ranked[:8]:
        extra = f"  {n['explanation']}" if n.get("explanation") else ""
        lines.append(f"  {n['influence']:.3f}  {n['label']}{extra}")
    if graph.get("path"):
        lines.append(f"written to {graph['path']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``autointerp circuit``: compute, save and summarise the graph; exit 2 on a ``CircuitError``."""
    from autointerp.circuits import CircuitError, circuit

    try:
        graph = circuit(args.run, args.prompt, args.target, node_share=args.node_share, edge_share=args.edge_share,
                        max_feature_nodes=args.max_feature_nodes, ablate_k=args.ablate_k,
                        ablate_draws=args.ablate_draws, position=args.position, dictionaries=args.dictionary,
                        device=args.device, markup=args.markup)
    except CircuitError as exc:
        print(f"autointerp circuit: error: {exc}", file=sys.stderr)
        return 2
    print(summary(graph))
    return 0
