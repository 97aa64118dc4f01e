"""HTML of one feature's page (and its fragment): explanations, scores, examples, logits, neighbours."""

from __future__ import annotations

from dataclasses import dataclass, field

from autointerp.report.data import TokenText
from autointerp.report.figures import CONTROL_LABELS
from autointerp.report.html import esc, fmt, show_whitespace

from autointerp.report.findings import CIRCUIT_NOTE, diff_evidence_html, flag_evidence_html
from autointerp.report.pages import badge, cards, table


# ---------------------------------------------------------------------------- feature page
@dataclass
class Neighbour:
    latent: int
    cosine: float
    href: str | None
    feature_id: int | None
    explanation: str | None


@dataclass
class FeatureContent:
    """Everything one feature page shows."""

    feature: dict
    explanations: list[dict]
    scores: list[dict]
    examples: list[dict]
    text: TokenText
    spec: str | None
    logits: tuple[list[tuple[str, float]], list[tuple[str, float]]] | None
    logit_note: str
    neighbours: list[Neighbour]
    report_href: str | None = None
    flags: list[dict] = field(default_factory=list)
    """the feature's watchlist flag rows (``autointerp flag``)."""
    diffs: list[dict] = field(default_factory=list)
    """the feature's model-diff rows (``autointerp diff``), one per base model."""
    circuits: list[str] = field(default_factory=list)
    """HTML blocks of the circuits that target this feature (:func:`circuit_block_html`; scripts
    included, so only on a page that loads plotly)."""


def _explanations_html(explanations: list[dict]) -> str:
    if not explanations:
        return '<p class="muted">No explanation yet.</p>'
    rows = []
    for e in explanations:
        if e["status"] == "ok":
            body = esc(e["text"])
        else:
            body = (f'<span class="muted">error:</span> {esc(e["error"] or "—")}'
                    '<details><summary>raw response</summary>'
                    f'<pre>{esc(e["raw_response"] or "(none)")}</pre></details>')
        rows.append([esc(e["explainer"]), esc(e["model"]), badge(e["status"]), body])
    return table(["explainer", "model", "status", "explanation (raw response for failures)"], rows)


def _control_detail(s: dict) -> str:
    d = s["details"] or {}
    if s["control"] == "random_explanation" and "control_latent" in d:
        return f'explanation of latent {esc(d["control_latent"])}'
    if s["control"] == "baseline" and "control_text" in d:
        return esc(d["control_text"])
    return ""


def _scores_html(scores: list[dict], explanations: list[dict]) -> str:
    if not scores:
        return '<p class="muted">No score yet.</p>'
    by_id = {e["id"]: e for e in explanations}
    rows = []
    order = list(CONTROL_LABELS)
    for s in sorted(scores, key=lambda s: (s["scorer"], s["explanation_id"] or 0, order.index(s["control"]))):
        expl = by_id.get(s["explanation_id"])
        ci = f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" if s["ci_low"] is not None else "—"
        value = esc(fmt(s["value"])) if s["status"] == "ok" else badge(s["status"])
        error = f'<br><span class="muted">{esc(s["error"])}</span>' if s["error"] else ""
        rows.append([esc(s["scorer"]), esc(s["model"]), esc(expl["explainer"]) if expl else "—",
                     esc(CONTROL_LABELS[s["control"]]), value, esc(s["n"] if s["n"] is not None else "—"),
                     esc(ci), _control_detail(s) + error])
    headers = ["scorer", "model", "explainer", "control", "value", "n", "95% CI", "control used / error"]
    return table(headers, rows, num={4, 5, 6})


def token_spans(tokens: list[str], acts: list[float], scale: float, peak: int | None = None) -> str:
    """Tokens as inline spans, background by activation / ``scale``, the value on hover.

    Tokens where the feature is silent (most of them) get a bare span with no hover text: a page
    holds thousands of tokens, and this keeps it about a third of the size."""
    out = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        pk = " pk" if i == peak else ""
        if a == 0 and not pk:
            out.append(f'<span class="tok">{esc(show_whitespace(tok))}</span>')
            continue
        alpha = min(1.0, max(0.0, a / scale)) * 0.85 if scale > 0 else 0.0
        style = f' style="background:rgba(255,140,0,{alpha:.2f})"' if alpha >= 0.01 else ""
        out.append(f'<span class="tok{pk}"{style} title="{esc(f"{tok!r} activation {a:.4f}")}">'
                   f"{esc(show_whitespace(tok))}</span>")
    return "".join(out)


def _examples_html(examples: list[dict], text: TokenText, scale: float) -> str:
    def one(e: dict) -> str:
        peak = esc(fmt(max(e["activations"], default=0.0)))
        spans = token_spans(text(e["tokens"]), e["activations"], scale, e["peak"])
        return f'<div class="example"><span class="peak">{peak}</span>{spans}</div>'

    def block(exs: list[dict]) -> str:
        return "".join(one(e) for e in exs)

    top = [e for e in examples if e["kind"] == "top"]
    quantiles = sorted({e["quantile"] for e in examples if e["kind"] == "quantile"},
                       key=lambda q: (q is None, q or 0))
    random = [e for e in examples if e["kind"] == "random"]
    parts = ['<p class="note">Token background is proportional to the activation (relative to the feature\'s '
             "max activation); hover a token for its value. The number left of each window is its peak "
             "activation; the outlined token is the peak position.</p>",
             f"<h3>Top activations ({len(top)})</h3>" + (block(top) or '<p class="muted">none stored</p>')]
    for q in quantiles:
        exs = [e for e in examples if e["kind"] == "quantile" and e["quantile"] == q]
        parts.append(f"<h3>Quantile bin {esc(q if q is not None else '?')} ({len(exs)})</h3>{block(exs)}")
    if random:
        parts.append(f"<details><summary>Random contexts ({len(random)})</summary>{block(random)}</details>")
    return "".join(parts)


def _chips(items: list[tuple[str, float]]) -> str:
    return '<div class="chips">' + "".join(
        f'<span class="tok" title="{esc(repr(t))}">{esc(show_whitespace(t))}'
        f'<small>{esc(f"{v:+.2f}")}</small></span>' for t, v in items) + "</div>"


def _logits_html(c: FeatureContent) -> str:
    if not c.logits:
        return f'<p class="muted">{esc(c.logit_note)}</p>'
    up, down = c.logits
    return (f'<p class="note">{esc(c.logit_note)}</p><div class="grid2">'
            f"<div><h3>Promoted</h3>{_chips(up)}</div><div><h3>Suppressed</h3>{_chips(down)}</div></div>")


def _neighbours_html(neighbours: list[Neighbour]) -> str:
    if not neighbours:
        return '<p class="muted">No decoder available.</p>'
    rows = []
    for n in neighbours:
        name = f"feature {n.feature_id}" if n.feature_id is not None else "not in features.db"
        link = f'<a href="{esc(n.href)}">{esc(name)}</a>' if n.href else esc(name)
        rows.append([link, esc(n.latent), esc(f"{n.cosine:.3f}"), esc(n.explanation or "—")])
    return table(["feature", "latent", "cosine", "explanation"], rows, num={1, 2})


def feature_body(c: FeatureContent, plot_div: str = "") -> str:
    """The page content of one feature (no scripts); ``plot_div`` goes where the histogram belongs."""
    f = c.feature
    nav = f'<nav><a href="{esc(c.report_href)}">← run report</a></nav>' if c.report_href else ""
    head = (f"{nav}<h1>Feature {esc(f['id'])}</h1><div class=\"muted\">{esc(f['dictionary'])} · latent "
            f"{esc(f['latent'])}</div>")
    facts = cards([("density", fmt(f["density"], 5)), ("max activation", fmt(f["max_act"])),
                   ("dead", "yes" if f["dead"] else "no"), ("model", c.spec or "unknown")])
    scale = f["max_act"] if f["max_act"] > 0 else max((a for e in c.examples for a in e["activations"]),
                                                      default=0)
    evidence = f"<h2>Watchlist flags</h2>{flag_evidence_html(c.flags)}" if c.flags else ""
    if c.diffs:
        evidence += f"<h2>Model diff</h2>{diff_evidence_html(c.diffs)}"
    if c.circuits:
        evidence += f"<h2>Circuits</h2><p class=\"note\">{esc(CIRCUIT_NOTE)}</p>" + "".join(c.circuits)
    return (head + facts + evidence + "<h2>Explanations</h2>" + _explanations_html(c.explanations)
            + "<h2>Scores</h2>" + _scores_html(c.scores, c.explanations)
            + (f"<h2>Activation histogram</h2>{plot_div}" if plot_div else "")
            + "<h2>Output tokens through the unembedding</h2>" + _logits_html(c)
            + "<h2>Nearest features by decoder cosine</h2>" + _neighbours_html(c.neighbours)
            + "<h2>Examples</h2>" + _examples_html(c.examples, c.text, scale))
