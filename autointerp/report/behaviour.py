"""The report's "Behaviour diff" section (``autointerp diff RUN --behaviour``): the divergence
histogram, the shape verdict, the outlying prompts with both models' answers side by side, and the
explaining features with their causal check. All dataset and model text is escaped."""

from __future__ import annotations

from autointerp.report.html import esc, fmt
from autointerp.report.pages import table
from autointerp.runfolder import RunFolder

OUTLIERS_SHOWN = 30
FIGURE_ID = "fig-behaviour"


def behaviour_figure(rows: list[dict]) -> dict:
    """Histogram of every prompt's mean answer KL, outlying prompts as their own trace."""
    def trace(xs, name, colour):
        return {"type": "histogram", "x": xs, "name": f"{name} (n={len(xs)})", "opacity": 0.8, "nbinsx": 60,
                "marker": {"color": colour}}

    inside = [round(r["kl_mean"], 5) for r in rows if not r.get("outlier")]
    out = [round(r["kl_mean"], 5) for r in rows if r.get("outlier")]
    return {"data": [trace(inside, "other prompts", "#4c78a8"), trace(out, "outlying prompts", "#e45756")],
            "layout": {"title": {"text": "Mean KL(suspect || base) over the suspect's answer, per prompt"},
                       "xaxis": {"title": {"text": "nats per answer token"}},
                       "yaxis": {"title": {"text": "prompts"}, "type": "log"}, "barmode": "overlay",
                       "margin": {"t": 40}, "height": 320}}


def _feature_cell(f: dict, paged: set[int]) -> str:
    if "feature" not in f:
        return esc(f"latent {f['latent']}")
    name = f"feature {f['feature']} (latent {f['latent']})"
    return f'<a href="features/{esc(f["feature"])}.html">{esc(name)}</a>' if f["feature"] in paged else esc(name)


def _causal_cell(c: dict | None) -> str:
    if not c:
        return "—"
    verdict = "passed" if c["passed"] else "failed"
    return esc(f"{verdict}: ablation {c['ablate_effect']:+.3f} nats (rank {c['ablate_rank']}), "
               f"steering {c['steer_effect']:+.3f} (rank {c['steer_rank']})")


def behaviour_section(run: RunFolder, paged: set[int]) -> tuple[str, dict]:
    """``(html, {figure id: figure})``; empty when the run has no behaviour diff."""
    from autointerp.behaviour import BehaviourError, load_behaviour

    try:
        r = load_behaviour(run.root)
    except BehaviourError:
        return "", {}
    st = r.stats
    out = [f"<h2>Behaviour diff</h2><p>{esc(r.suspect)} (suspect) vs {esc(r.base)} (base): {esc(r.n_prompts)} "
           f"prompts of {esc(r.corpus)}, {esc(r.n_tokens)} answer tokens each.</p>",
           f'<p><b>Shape: {esc(r.shape)}</b>: {esc(r.shape_text)}.</p>',
           f'<p class="note">Median KL of the first answer token {esc(fmt(st["kl_first"]["median"]))}, '
           f'of the answer {esc(fmt(st["kl_mean"]["median"]))} nats; an outlying prompt has a robust z of at least '
           f'{esc(st["z_min"])} and at least {esc(st["kl_min"])} nat; {esc(st["n_outliers"])} outlying.</p>',
           f'<div class="plot" id="{FIGURE_ID}"></div>']
    if r.outliers:
        cells = [[esc(o["rank"]), esc(o["prompt"]), esc(fmt(o["kl_first"])), esc(fmt(o["kl_mean"])), esc(o["text"]),
                  esc(o["suspect_answer"]), esc(o["base_answer"] or "—")] for o in r.outliers[:OUTLIERS_SHOWN]]
        out.append(f"<h3>Outlying prompts ({len(r.outliers)})</h3>"
                   + table(["rank", "prompt", "KL first", "KL mean", "prompt text", "suspect's answer",
                            "base's answer"], cells, num={0, 1, 2, 3}))
    if r.features:
        cells = [[_feature_cell(f, paged), esc(f.get("side", "—")), esc(fmt(f["auroc"])),
                  esc(fmt(f.get("auroc_input"))), esc(fmt(f.get("auroc_answer"))),
                  esc(f"{f['fires_on_outliers']}/{f['n_outliers']}"), esc(f["fires_on_others"]),
                  esc(f.get("explanation") or "—"), _causal_cell(f.get("causal"))] for f in r.features]
        out.append(f"<h3>Features that say why</h3><p class=\"note\">Ranked on each side apart by AUROC of the "
                   f"per-prompt max activation, outlying vs other prompts, among "
                   f"{esc(st.get('candidates', 'all latents'))}: side <i>input</i> (its activation on the prompt, "
                   f"read before any answer token: a possible cause) first, then side <i>answer</i> (on the "
                   f"suspect's answer: possibly a consequence). Causal check: ablating the feature on the outlying "
                   f"prompts must lower the divergence and steering it into ordinary prompts must raise it, each "
                   f"beyond every random live feature of the null.</p>"
                   + table(["feature", "side", "AUROC", "AUROC input", "AUROC answer", "fires on outlying",
                            "fires on others", "explanation", "causal check"], cells, num={2, 3, 4, 6}))
    return "".join(out), {FIGURE_ID: behaviour_figure(r.rows)}
