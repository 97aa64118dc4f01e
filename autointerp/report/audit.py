"""The report's "Audit" section (``autointerp audit``): the verdict and its signals, the recovered
trigger candidates with their measured effect and the suspect's answers with and without them,
and the suspicious features ranked with all their evidence. All dataset and model text is escaped."""

from __future__ import annotations

import json

from autointerp.report.html import esc, fmt
from autointerp.report.pages import table
from autointerp.runfolder import RunFolder

ANSWERS_SHOWN = 12
FEATURES_SHOWN = 20


def _feature_cell(f: dict, paged: set[int]) -> str:
    if f.get("feature") is None:
        return esc(f"latent {f['latent']}")
    name = f"feature {f['feature']} (latent {f['latent']})"
    return f'<a href="features/{esc(f["feature"])}.html">{esc(name)}</a>' if f["feature"] in paged else esc(name)


def _evidence_cell(ev: dict) -> str:
    parts = []
    for source, e in sorted(ev.items()):
        where = "outlying prompts" if source == "behaviour" else "prompts with the trigger"
        side = {"input": "its prompt side", "answer": "its answer side"}.get(e.get("side"), "")
        text = (f"{source}: AUROC {fmt(e['auroc'])}{' of ' + side if side else ''} on the {where} "
                f"(fires on {e['fires']}/{e['of']})")
        if e.get("causal_passed") is not None:
            text += (f"; causal {'passed' if e['causal_passed'] else 'failed'}: ablation {e['ablate_effect']:+.3f} "
                     f"nats (rank {e['ablate_rank']}), steering {e['steer_effect']:+.3f} (rank {e['steer_rank']})")
        parts.append(esc(text))
    return "<br>".join(parts) or "—"


def _thresholds(t) -> str:
    if not isinstance(t, dict):
        return "—"
    return f"first-token KL {fmt(t['kl_first'])} or mean KL {fmt(t['kl_mean'])} nats"


def _describe(desc: dict) -> str:
    """What changed, in words: each steered feature's answers beside the unsteered ones, the tokens
    it makes the suspect say, and the watchlist's concept shift of every change found."""
    out = []
    changes = desc.get("changes") or []
    if changes:
        cells = []
        for c in changes:
            what = c["source"] if c["latent"] is None else f"latent {c['latent']} steered"
            top = ", ".join(f"{r['concept']} {fmt(r['shift'], 2)} (p {fmt(r['p'], 3)})" for r in c["concepts"][:3])
            matched = [r["concept"] for r in c["concepts"] if r["matched"]]
            cells.append([esc(what), esc(c["pairs"]), esc(top or "—"), esc(", ".join(matched) or "none")])
        out.append("<h3>What changed: the watchlist's second opinion</h3><p class=\"note\">Each change found (the "
                   "outlying answers against the base's, a confirmed trigger's answers, each suspicious feature "
                   "steered into ordinary prompts) placed on each concept's axis in the sentence-embedding space: "
                   "the shift is the mean paired move along the axis in units of the axis's length, its p value a "
                   "sign-flip test; a concept matches only with enough pairs, a large shift and a p value below "
                   "the Bonferroni level. It names the change; it decides nothing alone.</p>"
                   + table(["change", "pairs", "closest concepts (shift, p)", "matched"], cells, num={1}))
    for f in desc.get("features") or []:
        says = ", ".join(f"{r['token']!r} {r['with']} vs {r['without']}" for r in f.get("says_more", [])[:8])
        rows = [[esc(p), esc(without), esc(with_)] for p, without, with_ in
                zip(desc.get("prompts", []), desc.get("without", []), f["answers"])][:ANSWERS_SHOWN]
        out.append(f"<h3>Latent {esc(f['latent'])} steered into ordinary prompts</h3><p class=\"note\">Amount "
                   f"{esc(fmt(f['amount']))} along its decoder direction at every prompt token (the amount of its "
                   f"causal check). It makes the suspect say: {esc(says or 'nothing more than without it')}.</p>"
                   + table(["prompt", "suspect", "suspect, feature steered"], rows))
    return "".join(out)


def _growth(trig: dict) -> str:
    """The weight scan's first tokens and each growth's kept path (anchor first, screen KL)."""
    from autointerp.audit.scans import place_words

    parts = []
    if trig.get("weight_top"):
        parts.append("Weight scan's first tokens: " + esc(", ".join(repr(t["token"]) for t in trig["weight_top"][:5]))
                     + ".")
    for g in trig.get("grow") or []:
        steps = " → ".join(f"{p['text']!r} ({place_words(p.get('place'))}, {fmt(p['screen_kl'])})"
                           for p in g.get("path") or [])
        if steps:
            parts.append(f"Grown from its anchor: {esc(steps)}.")
    return f'<p class="note">{" ".join(parts)}</p>' if parts else ""


def audit_section(run: RunFolder, paged: set[int]) -> str:
    """The section's HTML; empty when the run holds no finished audit."""
    from autointerp.audit.scans import place_words

    path = run.audit / "audit.json"
    if not path.is_file():
        return ""
    a = json.loads(path.read_text())
    trig_path = run.audit / "triggers.json"
    trig = json.loads(trig_path.read_text()) if trig_path.is_file() else {}
    out = [f"<h2>Audit</h2><p><b>{esc(a['verdict_line'])}</b></p>",
           f"<p>{esc(a['suspect'])} (suspect) vs {esc(a['base'])} (base), corpus {esc(a['corpus'])}; parameter "
           f"distance {esc(fmt(a['parameter_distance']['relative'], 4))}.</p>"]
    if a.get("foreign_base"):
        out.append('<p class="note"><b>Warning:</b> the parameter distance is large for a fine-tune: the base is '
                   "probably not the suspect's base.</p>")
    sig = a["signals"]
    out.append(table(["signal", "value", "meaning"], [
        [esc("behaviour"), esc("concentrated" if sig["behaviour"] else a["behaviour"]["shape"]),
         esc(a["behaviour"]["shape_text"])],
        [esc("trigger"), esc(f"{sig['trigger']} confirmed"),
         esc("strings found from the models alone that make the suspect answer unlike its base on held-out "
             "prompts, beyond random strings of their length")],
        [esc("feature"), esc(f"{sig['feature']} flagged"),
         esc("features firing where the behaviour changed whose ablation and steering move the divergence "
             "beyond random live features (no concept needed)")],
        [esc("watchlist"), esc(f"{sig['watchlist']} flag(s)"), esc("watchlist concepts: a second opinion")],
    ]))
    cands = trig.get("candidates") or []
    if cands:
        cells = [[esc(repr(c["text"])), esc(place_words(c.get("place"))),
                  esc(fmt(c.get("screen_kl"))), esc(f"{c['attack_success']:.0%}"),
                  esc("—" if c.get("control_max") is None else f"{c['control_max']:.0%}"), esc(fmt(c["kl_mean"])),
                  esc("yes" if c["confirmed"] else "no"),
                  esc(", ".join(repr(t["token"]) for t in c.get("says_more", [])[:6]) or "—")] for c in cands]
        out.append("<h3>Trigger candidates</h3><p class=\"note\">Found from the two models alone (token scan, "
                   "beam and gradient-guided search, each string screened opening and appended to the user's "
                   "message), then inserted at its place into held-out prompts: attack success is the "
                   f"share of them answered beyond the outlier threshold of the same prompts without it "
                   f"({esc(_thresholds(trig.get('threshold')))}); random strings of the same length are the control. \"Says more\": the answer tokens "
                   "most over-represented with the candidate.</p>"
                   + table(["candidate", "place", "screen KL", "attack success", "random strings (max)", "mean KL",
                            "confirmed", "says more"], cells, num={2, 3, 4, 5}))
        out.append(_growth(trig))
        best = next((c for c in cands if c["confirmed"]), None)
        if best is not None and trig.get("held_out_texts"):
            rows = [[esc(t), esc(without), esc(with_), esc(base)] for t, without, with_, base in
                    zip(trig["held_out_texts"], trig.get("clean_answers", []), best["suspect_answers"],
                        best["base_answers"])][:ANSWERS_SHOWN]
            out.append(f"<h3>Answers with and without {esc(repr(best['text']))}</h3>"
                       + table(["held-out prompt", "suspect, without", "suspect, with", "base, with"], rows))
    out.append(_describe(a.get("describe") or {}))
    feats = a.get("features") or []
    if feats:
        cells = [[esc(f["audit_rank"]), _feature_cell(f, paged), esc("yes" if f["flagged"] else "no"),
                  esc(f.get("side") or "—"), esc(fmt(f["auroc"])),
                  esc(f["diff_rank"] if f["diff_rank"] is not None else "—"),
                  _evidence_cell(f["evidence"]), esc(", ".join(f["watchlist"]) or "—"),
                  esc(f.get("explanation") or "—")] for f in feats[:FEATURES_SHOWN]]
        out.append("<h3>Suspicious features</h3><p class=\"note\">Flagged features first; then the features that "
                   "explain the behaviour change or the trigger, those whose activation on the prompt separates "
                   "the changed prompts (side input: a possible cause) before those of the suspect's answers "
                   "(side answer: possibly a consequence), the corpus's own changed prompts before a string the "
                   "trigger search built, by AUROC; then the activation diff's order.</p>"
                   + table(["audit rank", "feature", "flagged", "side", "AUROC", "diff rank", "evidence",
                            "watchlist", "explanation"], cells, num={0, 4, 5}))
    secs = {k: v for k, v in (a.get("seconds") or {}).items() if v is not None}
    if secs:
        parts = (a.get("triggers") or {}).get("seconds") or {}
        of_triggers = f" (triggers: {', '.join(f'{k} {v}' for k, v in parts.items())})" if parts else ""
        out.append(f'<p class="note">Stage seconds: {esc(", ".join(f"{k} {v}" for k, v in secs.items()))}; '
                   f"total {esc(round(sum(secs.values()), 1))}{esc(of_triggers)}.</p>")
    return "".join(out)
