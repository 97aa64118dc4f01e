"""HTML of the run report's own sections (config, models, dictionaries, counts, score summary) and
the small pieces every page uses (badges, cards, tables). A feature's page is
:mod:`autointerp.report.feature_page`; the flags, diff and circuit sections
:mod:`autointerp.report.findings`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from autointerp.report.data import DictionaryInfo
from autointerp.report.figures import CONTROL_LABELS
from autointerp.report.html import esc, fmt

METRICS = [("fvu", "FVU", 4), ("l0", "L0", 1), ("dead_fraction", "dead fraction", 4),
           ("ce_recovered_zero", "CE recovered (zero abl.)", 4),
           ("ce_recovered_mean", "CE recovered (mean abl.)", 4),
           ("kl_clean_to_dict", "KL clean→dict", 4), ("heldout_tokens", "held-out tokens", 0)]
"""metrics.json "evaluation" keys shown per dictionary: (key, label, digits)."""


def badge(status: str) -> str:
    return f'<span class="status{" ok" if status == "ok" else ""}">{esc(status)}</span>'


def cards(items: list[tuple[str, str]]) -> str:
    """A row of key/value cards; values are escaped here."""
    inner = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                    for k, v in items)
    return f'<div class="cards">{inner}</div>'


def table(headers: list[str], rows: list[list[str]], num: set[int] = frozenset()) -> str:
    """A table of already-escaped cell HTML; columns in ``num`` are right-aligned numbers."""
    cls = lambda i: ' class="num"' if i in num else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------ run report
def config_html(config: Path) -> str:
    if not config.exists():
        return (f'<p class="muted">No {esc(config.name)} in this run folder: the run was not made by '
                "<code>autointerp run</code>, or the file was removed.</p>")
    return f"<details><summary>{esc(config.name)}</summary><pre>{esc(config.read_text())}</pre></details>"


def dictionaries_html(dicts: dict[str, DictionaryInfo]) -> str:
    if not dicts:
        return '<p class="muted">No dictionary in this run folder.</p>'
    rows = []
    for info in dicts.values():
        prov = info.provenance or {}
        hp = prov.get("input_hookpoint", "?")
        if prov.get("target_hookpoint") not in (None, hp):
            hp += f" → {prov['target_hookpoint']}"
        ev = info.evaluation
        cells = [esc(info.name), esc(hp), esc(info.spec or "unknown")]
        cells += [esc(fmt(ev[k], digits)) if isinstance(ev.get(k), (int, float)) else "—"
                  for k, _, digits in METRICS]
        rows.append(cells)
    note = "" if all(i.evaluation for i in dicts.values()) else (
        '<p class="note">— : not measured (no metrics.json "evaluation" block, or evaluated without the '
        "model).</p>")
    return table(["dictionary", "hook point", "model", *[label for _, label, _ in METRICS]], rows,
                 num=set(range(3, 3 + len(METRICS)))) + note


def models_html(dicts: dict[str, DictionaryInfo]) -> str:
    models = {}
    for info in dicts.values():
        m = (info.provenance or {}).get("model")
        if m:
            models[m.get("spec", "?")] = m
    if not models:
        return '<p class="muted">No model recorded (no autointerp.json in the dictionary folders).</p>'
    rows = [[esc(spec), esc(m.get("n_layers", "?")), esc(m.get("d_model", "?")), esc(m.get("dtype", "?")),
             f'<span class="mono">{esc(str(m.get("sha256", ""))[:16])}</span>'] for spec, m in models.items()]
    return table(["model", "layers", "d_model", "dtype", "sha256"], rows)


def counts_html(features: list[dict], explanations: list[dict], scores: list[dict]) -> str:
    n_dead = sum(f["dead"] for f in features)
    items = [("features", str(len(features))), ("live", str(len(features) - n_dead)), ("dead", str(n_dead))]
    expl = Counter((e["explainer"], e["status"]) for e in explanations)
    sc = Counter((s["scorer"], s["status"]) for s in scores)
    rows = [[esc(kind), esc(name), badge(status), esc(n)]
            for kind, counter in (("explainer", expl), ("scorer", sc))
            for (name, status), n in sorted(counter.items())]
    return cards(items) + (table(["kind", "name", "status", "rows"], rows, num={3}) if rows else "")


def score_summary_html(values: dict[str, dict[str, list[float]]], failed: Counter) -> str:
    import statistics

    rows = []
    for scorer, by_control in sorted(values.items()):
        for control, label in CONTROL_LABELS.items():
            xs = by_control.get(control, [])
            rows.append([esc(scorer), esc(label), esc(len(xs)), esc(failed[(scorer, control)]),
                         esc(fmt(statistics.median(xs)) if xs else "—")])
    return table(["scorer", "scored", "n ok", "n failed", "median"], rows, num={2, 3, 4})
