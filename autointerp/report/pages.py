"""HTML of the two kinds of page: the run report and one feature's page (and its fragment)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autointerp.report.data import DictionaryInfo, TokenText
from autointerp.report.figures import CONTROL_LABELS
from autointerp.report.html import esc, fmt, show_whitespace

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


# ----------------------------------------------------------------------------- watchlist flags
_SIGNALS = (("similarity", "explanation similarity"), ("auroc", "activation AUROC"), ("causal", "causal effect"))
FLAG_NOTE = ("A feature is flagged for a concept when at least two of three signals are beyond their nulls: "
             "explanation similarity (z ≥ 2 against all explained features), activation AUROC on the "
             "concept's positive vs matched negative texts (z ≥ 2 against all live features and family-wise "
             "permutation p ≤ 0.05), causal effect of steering up / ablating on the log-prob of concept "
             "completions (z ≥ 3 and above every random feature). — : not measured.")


def _signal_cell(g: dict, sig: str) -> str:
    status = g[f"{sig}_status"]
    if status is None:
        return "—"
    if status != "ok":
        return badge(status)
    z = "" if g[f"{sig}_z"] is None else f" · z {g[f'{sig}_z']:.2f}"
    p = "" if g[f"{sig}_p"] is None else f" · p {fmt(g[f'{sig}_p'])}"
    return esc(f"{fmt(g[sig])}{z}{p}")


def _flag_badge(g: dict) -> str:
    return '<span class="status">flagged</span>' if g["flagged"] else '<span class="muted">not flagged</span>'


def flagged_html(flags: dict[int, list[dict]], features: dict[int, dict], paged: set[int],
                 explanation: dict[int, str | None]) -> str:
    """The report's table of flagged features (concept, evidence, link to the feature page)."""
    rows = sorted((g for gs in flags.values() for g in gs if g["flagged"]), key=lambda g: -g["score"])
    if not flags:
        return ('<p class="muted">Not flagged against a watchlist yet (run <code>autointerp flag RUN</code>).'
                "</p>")
    if not rows:
        n = sum(len(gs) for gs in flags.values())
        return f'<p class="muted">No feature flagged ({esc(n)} feature/concept pairs measured).</p>'
    out = []
    for g in rows:
        fid = g["feature_id"]
        name = f"feature {fid}"
        link = f'<a href="features/{esc(fid)}.html">{esc(name)}</a>' if fid in paged else esc(name)
        f = features.get(fid, {})
        out.append([link, esc(f.get("dictionary", "?")), esc(f.get("latent", "?")), esc(g["concept"]),
                    esc(g["watchlist"]), esc(fmt(g["score"], 2)),
                    *(_signal_cell(g, sig) for sig, _ in _SIGNALS), esc(explanation.get(fid) or "—")])
    headers = ["feature", "dictionary", "latent", "concept", "watchlist", "score",
               *(label for _, label in _SIGNALS), "explanation"]
    return f'<p class="note">{esc(FLAG_NOTE)}</p>' + table(headers, out, num={2, 5})


def flag_evidence_html(flags: list[dict]) -> str:
    """A feature page's evidence: each concept's signals, their nulls and the causal details."""
    blocks = []
    for g in flags:
        d = g["causal_details"] or {}
        rows = [[esc(label), _signal_cell(g, sig)] for sig, label in _SIGNALS]
        detail = ""
        if g["causal_status"] == "ok":
            detail = cards([("steer Δ log-prob", fmt(d.get("steer_dlogp"))),
                            ("ablate Δ log-prob", fmt(d.get("ablate_dlogp"))),
                            ("steer KL", fmt(d.get("steer_kl"))), ("ablate KL", fmt(d.get("ablate_kl"))),
                            ("steering amount", fmt(d.get("scale"))),
                            ("null mean ± std", f"{fmt(d.get('null_mean'))} ± {fmt(d.get('null_std'))}"),
                            ("null features", str(d.get("null_n", "—")))])
            detail += ('<p class="note">causal completions: '
                       + ", ".join(f"<code>{esc(c)}</code>" for c in d.get("completions", [])) + "</p>")
        null = d.get("auroc_null") or {}
        if null:
            detail += (f'<p class="note">AUROC null: live features {esc(fmt(null.get("mean")))} ± '
                       f'{esc(fmt(null.get("std")))} (n {esc(null.get("n"))}); {esc(null.get("permutations"))} '
                       f'label permutations, 95% of their max over latents below '
                       f'{esc(fmt(null.get("perm_max_q95")))}; per-latent permutation p '
                       f'{esc(fmt(null.get("p_latent")))}</p>')
        error = f'<p class="muted">{esc(g["error"])}</p>' if g["error"] else ""
        blocks.append(f"<h3>{esc(g['concept'])} <small class=\"muted\">({esc(g['watchlist'])})</small> "
                      f"{_flag_badge(g)} <small>score {esc(fmt(g['score'], 2))}</small></h3>"
                      + table(["signal", "value · z · p"], rows) + detail + error)
    return f'<p class="note">{esc(FLAG_NOTE)}</p>' + "".join(blocks)


# ------------------------------------------------------------------------------ model diff
DIFF_NOTE = ("Per latent, over the same contexts read by the base and the fine-tuned model: contexts jumped = "
             "the number of contexts in which the fine-tune raises the latent's peak by more than the base "
             "model's largest activation of it anywhere in the corpus (a backdoor's trigger shows this way: rare "
             "contexts, far beyond the base range; capped at 64); effect = (tokens where it fires only in the "
             "fine-tuned model − only in the base) / its firing count in the model where it fires more, in "
             "[−1, 1] (1: new in the fine-tune, −1: switched off); z = McNemar's paired statistic of the same "
             "counts. Significant when contexts jumped ≥ jump_min or |z| ≥ z_min. Ranked by the ranking "
             "named in the summary (tail: contexts jumped first; frequency: significant |effect| first). "
             "Counterpart cos: the largest decoder cosine to a base-model dictionary (blank: no base "
             "dictionary given; below 0.5: no counterpart).")
DIFF_TOP = 50
_DIFF_HEADERS = ["rank", "feature", "explanation", "contexts jumped", "effect", "z", "freq base", "freq tuned", "max base",
                 "max tuned", "counterpart cos", "significant"]


def _diff_numbers(d: dict) -> list[str]:
    """effect … significant cells of one diff row (escaped)."""
    cos = "" if d["counterpart_cos"] is None else fmt(d["counterpart_cos"])
    jumped = "—" if d.get("n_jump") is None else esc(d["n_jump"])
    return [jumped, esc(f"{d['effect']:+.3f}"), esc(f"{d['z']:+.2f}"), esc(fmt(d["freq_base"], 4)),
            esc(fmt(d["freq_tuned"], 4)), esc(fmt(d["max_base"])), esc(fmt(d["max_tuned"])), esc(cos),
            "yes" if d["significant"] else '<span class="muted">no</span>']


def diff_summary_line(base: str, dictionary: str, rows: list[dict], summary: dict | None) -> str:
    """One sentence on a diff: models, tokens, FVUs (from ``diff.json`` when it describes this
    base and dictionary; it holds the latest diff only), significant latents and the z threshold."""
    n_sig = sum(d["significant"] for d in rows)
    z_min = rows[0]["z_min"] if rows else None
    jump_min = rows[0].get("jump_min") if rows else None
    rule = f"|z| ≥ {fmt(z_min, 1)}" + ("" if jump_min is None else f" or contexts jumped ≥ {jump_min}")
    rank_by = rows[0].get("rank_by") if rows else None
    ranked = "" if rank_by is None else f" Ranked by {rank_by}."
    s = summary if summary and summary.get("base") == base and summary.get("dictionary") == dictionary else None
    if s is None:
        return (f"{dictionary}: fine-tuned model vs {base} (base); {n_sig} of {len(rows)} latents changed "
                f"significantly ({rule}). Tokens and FVU: not in diff.json (it holds the "
                f"latest diff only).{ranked}")

    def num(key: str, digits: int = 3) -> str:
        v = s.get(key)
        return fmt(v, digits) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"

    tokens = s.get("tokens")
    tokens = f"{tokens:,}" if isinstance(tokens, int) else "?"
    return (f"{dictionary}: {s.get('tuned', '?')} (fine-tuned) vs {base} (base) on {tokens} tokens; FVU on "
            f"base activations {num('fvu_base')}, on fine-tuned activations {num('fvu_tuned')}; {n_sig} of "
            f"{len(rows)} latents changed significantly ({rule}).{ranked}")


def diff_html(rows: list[dict], summary: dict | None, summary_error: str | None, paged: set[int],
              explanation: dict[int, str | None]) -> str:
    """The report's model-diff section body: per (base, dictionary), the summary line and the top
    :data:`DIFF_TOP` latents by rank, linked to their pages."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for d in rows:
        groups.setdefault((d["base"], d["dictionary"]), []).append(d)
    out = [f'<p class="note">{esc(DIFF_NOTE)}</p>']
    if summary_error:
        out.append(f'<p><span class="status">error</span> {esc(summary_error)}</p>')
    for (base, dictionary), group in groups.items():
        group = sorted(group, key=lambda d: d["rank"])
        cells = []
        for d in group[:DIFF_TOP]:
            fid = d["feature_id"]
            name = f"feature {fid}"
            link = f'<a href="features/{esc(fid)}.html">{esc(name)}</a>' if fid in paged else esc(name)
            cells.append([esc(d["rank"]), link, esc(explanation.get(fid) or "—"), *_diff_numbers(d)])
        out.append(f"<h3>{esc(dictionary)} vs {esc(base)}</h3>"
                   f"<p>{esc(diff_summary_line(base, dictionary, group, summary))}</p>"
                   f'<p class="note">top {esc(min(DIFF_TOP, len(group)))} of {esc(len(group))} by rank</p>'
                   + table(_DIFF_HEADERS, cells, num={0, 3, 4, 5, 6, 7, 8, 9, 10}))
    return "".join(out)


def diff_evidence_html(diffs: list[dict]) -> str:
    """A feature page's model-diff rows (one per base model)."""
    rows = [[esc(d["base"]), esc(d["rank"]), *_diff_numbers(d), esc(d["n_new"]), esc(d["n_lost"])]
            for d in diffs]
    headers = ["base model", "rank", *_DIFF_HEADERS[3:], "tokens new", "tokens lost"]
    return f'<p class="note">{esc(DIFF_NOTE)}</p>' + table(headers, rows, num={1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12})


# -------------------------------------------------------------------------------- circuits
CIRCUIT_NOTE = ("Attribution graphs (autointerp circuit) whose target is this feature. Completeness: the "
                "target equals its bias plus the sum of the direct attributions, up to the relative error "
                "shown. Ablation: setting the top-k most influential features to 0 should move the target "
                "more than k random active ones (mean |Δ| over draws); passed when it does.")


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return f"{value:.{digits}g}"


def circuit_numbers(graph: dict) -> list[tuple[str, str]]:
    """(label, text) pairs of a graph's checks; ``KeyError`` / ``TypeError`` for a malformed graph."""
    comp, abl = graph["completeness"], graph.get("ablation") or {}
    items = [("prompt", str(graph["prompt"])), ("target", str(graph["target"]["label"])),
             ("target value", _num(comp["target_value"])),
             ("completeness relative error", f"{comp['relative_error']:.1e}")]
    for rec in (abl, abl.get("inputs") or {}):
        what = "input tokens" if rec.get("nodes") == "input" else "features"
        if rec.get("k"):
            passed = {True: "passed", False: "FAILED"}.get(rec.get("passed"), "—")
            items += [(f"ablate top {rec['k']} {what}: Δ target", _num(rec["delta_top"])),
                      (f"ablate {rec['k']} random {what}: mean |Δ|", _num(rec["mean_abs_delta_random"])),
                      (f"ratio |Δ top| / mean |Δ random| ({what})", _num(rec.get("ratio"), 3)),
                      (f"ablation check ({what})", passed)]
        elif rec is abl:
            items.append(("ablation check", f"not run ({rec.get('note') or 'k = 0'})"))
    return items


def circuit_block_html(name: str, graph: dict, fragment: str) -> str:
    """A feature page's block for one circuit: its checks as text, then the drawn graph."""
    rows = [[esc(k), esc(v)] for k, v in circuit_numbers(graph)]
    return f"<h3>circuits/{esc(name)}</h3>" + table(["", "value"], rows) + fragment


def circuits_html(entries: list, paged: set[int]) -> str:
    """The report's list of circuits (``data.CircuitFile``): prompt, target, link to the target's
    page; an unreadable file as a note with the reason."""
    rows, notes = [], []
    for c in entries:
        if c.graph is None:
            notes.append(f'<p><span class="status">error</span> could not read circuits/{esc(c.name)}: '
                         f"{esc(c.error)}</p>")
            continue
        fid = c.feature_id
        if fid is None:
            page = '<span class="muted">—</span>'
        else:
            name = f"feature {fid}"
            page = f'<a href="features/{esc(fid)}.html">{esc(name)}</a>' if fid in paged else esc(name)
        abl = (c.graph.get("ablation") or {}).get("passed")
        rows.append([esc(c.name), f"<code>{esc(c.graph['prompt'])}</code>", esc(c.graph["target"]["label"]),
                     page, {True: "passed", False: "FAILED"}.get(abl, "—")])
    listed = table(["file", "prompt", "target", "feature page", "ablation check"], rows) if rows else ""
    return listed + "".join(notes)


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
