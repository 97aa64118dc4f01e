"""Plotly figures of the report as plain ``{"data": [...], "layout": {...}}`` dicts.

Plain dicts (not ``plotly.graph_objects``) keep writing thousands of pages fast; the pages
embed them with :func:`autointerp.report.html.script_json` and call ``Plotly.newPlot``. No
dataset text goes into a figure: only numbers and the names of dictionaries, scorers and kinds.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

CONTROL_LABELS = {"none": "explanation", "random_explanation": "random explanation", "baseline": "baseline"}
CONTROL_COLOURS = {"none": "#0969da", "random_explanation": "#8c959f", "baseline": "#bc4c00"}
KIND_COLOURS = {"top": "#bc4c00", "quantile": "#0969da", "random": "#8c959f"}
_MARGIN = {"l": 60, "r": 20, "t": 50, "b": 50}


def _layout(title: str, xaxis: str, yaxis: str, **extra) -> dict:
    return {"title": {"text": title, "font": {"size": 14}}, "margin": _MARGIN, "height": 340,
            "xaxis": {"title": {"text": xaxis}}, "yaxis": {"title": {"text": yaxis}},
            "plot_bgcolor": "#fff", "legend": {"orientation": "h", "y": -0.25}, **extra}


def density_figure(features: list[dict]) -> dict:
    """Histogram of log10 firing density of the live features, one trace per dictionary."""
    by_dict: dict[str, list[float]] = {}
    for f in features:
        if not f["dead"] and f["density"] > 0:
            by_dict.setdefault(f["dictionary"], []).append(round(math.log10(f["density"]), 4))
    data = [{"type": "histogram", "x": xs, "name": f"{name} (n={len(xs)})", "opacity": 0.75, "nbinsx": 50}
            for name, xs in sorted(by_dict.items())]
    n_dead = sum(f["dead"] for f in features)
    return {"data": data, "layout": _layout(f"Firing density of live features ({n_dead} dead not shown)",
                                            "log10 firing density (fraction of held-out tokens)",
                                            "features", barmode="overlay")}


def score_figure(scorer: str, values: dict[str, list[float]]) -> dict:
    """Box plots (every point shown) of one scorer's values: explanation vs its two controls."""
    data = []
    for control, label in CONTROL_LABELS.items():
        xs = values.get(control, [])
        median = f"median {statistics.median(xs):.3f}" if xs else "no value"
        data.append({"type": "box", "y": xs, "name": f"{label}<br>n={len(xs)}, {median}", "boxpoints": "all",
                     "jitter": 0.4, "pointpos": 0, "marker": {"color": CONTROL_COLOURS[control], "size": 4},
                     "line": {"color": CONTROL_COLOURS[control]}, "showlegend": False})
    return {"data": data, "layout": _layout(f"{scorer}: explanation vs controls", "", "score")}


def activation_figure(examples: list[dict], bins: int = 40) -> dict:
    """Stacked histogram of the non-zero activations in the stored example windows, by kind."""
    by_kind = {kind: [a for e in examples if e["kind"] == kind for a in e["activations"] if a > 0]
               for kind in KIND_COLOURS}
    everything = [a for acts in by_kind.values() for a in acts]
    data = []
    if everything:
        edges = np.histogram_bin_edges(everything, bins=bins)
        centres = ((edges[:-1] + edges[1:]) / 2).round(5).tolist()
        width = float(edges[1] - edges[0]) if len(edges) > 1 else 1.0
        for kind, acts in by_kind.items():
            if acts:
                counts = np.histogram(acts, bins=edges)[0].tolist()
                data.append({"type": "bar", "x": centres, "y": counts, "width": width,
                             "name": f"{kind} examples", "marker": {"color": KIND_COLOURS[kind]}})
    title = ("Non-zero activations in the stored example windows "
             "(not a uniform sample: top examples are over-represented)")
    layout = _layout(title, "activation", "tokens", barmode="stack")
    layout["title"]["font"]["size"] = 12
    return {"data": data, "layout": layout}
