"""HTML of the report's findings: watchlist flags with their evidence, the model diff, the circuits."""

from __future__ import annotations


from autointerp.report.html import esc, fmt

from autointerp.report.pages import badge, cards, table


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
