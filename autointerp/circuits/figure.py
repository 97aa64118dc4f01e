"""An attribution graph as a plotly figure, and as an HTML fragment for a feature page.

Layout: x = token position (tick labels: the prompt's tokens), y = layer (inputs at 0, each
dictionary in firing order, the target on top); nodes sharing a (layer, position) cell are spread
horizontally. Marker size grows with the node's influence on the target; colour by kind (input,
feature, error, target). Edges are straight lines, blue for a positive attribution and red for a
negative one, in three widths by ``|weight|``.

Every text that reaches the figure (tokens, labels, explanations) is HTML-escaped first: plotly
renders hover and tick text as (a subset of) HTML, and dataset tokens are untrusted. The figure
itself travels in a ``<script type="application/json">`` block written by
:func:`autointerp.report.html.json_block`, which cannot end the script element.
"""

from __future__ import annotations

import hashlib
import html
from itertools import count

COLOURS = {"input": "#7f7f7f", "feature": "#1f77b4", "error": "#bcbd22", "target": "#d62728"}
_ids = count()


def _e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _positions(graph: dict) -> dict[str, tuple[float, float]]:
    cells: dict[tuple[int, int], list[dict]] = {}
    for n in graph["nodes"]:
        cells.setdefault((n["layer"], n["position"]), []).append(n)
    xy = {}
    for (layer, pos), ns in cells.items():
        ns.sort(key=lambda n: -(n.get("influence") or 0))
        width = min(0.8, 0.12 * (len(ns) - 1))
        for j, n in enumerate(ns):
            off = 0.0 if len(ns) == 1 else -width / 2 + width * j / (len(ns) - 1)
            xy[n["id"]] = (pos + off, float(layer))
    return xy


def _hover(n: dict) -> str:
    lines = [f"<b>{_e(n.get('label'))}</b>", f"kind: {_e(n['kind'])}", f"token: {_e(repr(n.get('token')))}",
             f"activation: {n.get('activation', 0) or 0:.4g}"]
    if n.get("influence") is not None:
        lines.append(f"influence on target: {n['influence']:.3g}")
    if n.get("attribution") is not None:
        lines.append(f"direct attribution: {n['attribution']:.4g}")
    if n.get("feature_id") is not None:
        lines.append(f"feature id: {_e(n['feature_id'])}")
    if n.get("explanation"):
        lines.append(f"explanation: {_e(n['explanation'])}")
    return "<br>".join(lines)


def circuit_figure(graph: dict) -> dict:
    """The graph as a plotly figure in plain dict form (``{"data": [...], "layout": {...}}``);
    ``plotly.graph_objects.Figure(circuit_figure(g))`` shows it in a notebook."""
    xy = _positions(graph)
    weights = [abs(e["weight"]) for e in graph["edges"]] or [1.0]
    top = max(weights) or 1.0
    data = []
    for sign, colour in ((1, "rgba(31,119,180,{a})"), (-1, "rgba(214,39,40,{a})")):
        for lo, hi, width, alpha in ((0, 0.2, 0.6, 0.35), (0.2, 0.6, 1.6, 0.55), (0.6, 1.01, 3.2, 0.8)):
            xs, ys = [], []
            for e in graph["edges"]:
                rel = abs(e["weight"]) / top
                if (e["weight"] >= 0) == (sign > 0) and lo <= rel < hi and e["source"] in xy and e["target"] in xy:
                    (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
                    xs += [x0, x1, None]
                    ys += [y0, y1, None]
            if xs:
                data.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys, "hoverinfo": "skip",
                             "showlegend": False, "line": {"width": width, "color": colour.format(a=alpha)}})
    for kind in ("input", "error", "feature", "target"):
        ns = [n for n in graph["nodes"] if n["kind"] == kind]
        if not ns:
            continue
        data.append({
            "type": "scatter", "mode": "markers", "name": kind,
            "x": [xy[n["id"]][0] for n in ns], "y": [xy[n["id"]][1] for n in ns],
            "text": [_hover(n) for n in ns], "hovertemplate": "%{text}<extra></extra>",
            "marker": {"color": COLOURS[kind], "line": {"width": 1, "color": "#333"},
                       "size": [8 + 22 * min(1.0, abs(n.get("influence") or 0) ** 0.5) for n in ns]},
        })
    tokens = graph["tokens"]
    layers = ["input"] + [d["name"] for d in graph["dictionaries"]] + ["target"]
    abl = graph.get("ablation") or {}
    title = f"circuit of {graph['target']['label']}"
    if abl.get("k"):
        title += (f"  |  ablating top {abl['k']} {'input tokens' if abl.get('nodes') == 'input' else 'features'}: "
                  f"\u0394 {abl['delta_top']:.3g}, random {abl['k']}: "
                  f"mean |\u0394| {abl['mean_abs_delta_random']:.3g}")
    layout = {
        "title": {"text": _e(title), "font": {"size": 13}},
        "xaxis": {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [_e(repr(t)) for t in tokens],
                  "title": {"text": "token"}, "zeroline": False},
        "yaxis": {"tickmode": "array", "tickvals": list(range(len(layers))), "ticktext": [_e(n) for n in layers],
                  "zeroline": False},
        "hovermode": "closest", "height": 160 + 90 * len(layers), "margin": {"l": 160, "r": 20, "t": 50, "b": 60},
        "legend": {"orientation": "h"},
    }
    return {"data": data, "layout": layout}


_SCRIPT = """(function(){var el=document.getElementById(%s);var fig=JSON.parse(el.textContent);
var div=document.getElementById(%s);
if(window.Plotly){Plotly.newPlot(div,fig.data,fig.layout,{responsive:true,displaylogo:false});}
else{div.textContent='plotly.min.js not loaded: the circuit graph cannot be drawn';}})();"""


def circuit_fragment_html(graph: dict, plotly_src: str | None = None) -> str:
    """An HTML fragment that draws the graph with plotly and lists its checks (completeness,
    ablation). The page must load plotly (the run's ``assets/plotly.min.js``) before the fragment
    runs, or pass ``plotly_src`` (e.g. ``"../assets/plotly.min.js"`` from ``features/<id>.html``)
    to load it here; nothing is fetched from a network."""
    from autointerp.report.html import json_block

    # unique on a page that shows several graphs, also when fragments come from different processes
    n = hashlib.blake2b(f"{graph['target']['spec']}\0{graph['prompt']}\0{next(_ids)}".encode(),
                        digest_size=5).hexdigest()
    div, data = f"circuit-{n}", f"circuit-data-{n}"
    comp, abl, pr = graph["completeness"], graph.get("ablation") or {}, graph["pruning"]
    checks = (f"completeness: target {comp['target_value']:.4g} = bias {comp['bias']:.4g} + attributions "
              f"{comp['attribution_sum']:.4g} (relative error {comp['relative_error']:.1e}); "
              f"kept {pr['nodes_kept']}/{pr['nodes_total']} nodes carrying {pr['kept_share']:.0%} of the influence")
    if abl.get("k"):
        what = "input tokens (mean-token ablation)" if abl.get("nodes") == "input" else "features"
        checks += (f"; ablating the top {abl['k']} {what} moves the target by {abl['delta_top']:.4g}, "
                   f"{abl['k']} random ones by {abl['mean_abs_delta_random']:.4g} on average "
                   f"({'passed' if abl['passed'] else 'FAILED'})")
    script = _SCRIPT % (f'"{data}"', f'"{div}"')
    head = f'<script src="{_e(plotly_src)}"></script>' if plotly_src else ""
    return (f'<div class="circuit">{head}<p class="circuit-prompt">prompt: <code>{_e(graph["prompt"])}</code> '
            f'&rarr; {_e(graph["target"]["label"])}</p><div id="{div}"></div>'
            f'<p class="circuit-checks">{_e(checks)}</p>{json_block(data, circuit_figure(graph))}'
            f"<script>{script}</script></div>")
