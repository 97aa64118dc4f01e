"""Assemble and write the report: ``report.html``, ``features/<id>.html`` and ``assets/plotly.min.js``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from autointerp.featuredb import FeatureDB
from autointerp.report import feature_page, findings, pages
from autointerp.report.audit import audit_section
from autointerp.report.behaviour import behaviour_section
from autointerp.report.data import (
    CircuitFile, DecoderViews, DictionaryInfo, StoreData, TokenText, best_explanation, decoder_views,
    load_model_cached, load_tokenizer_cached, ok_explanation, read_circuits, read_diff_summary,
    read_dictionaries, read_store)
from autointerp.report.figures import activation_figure, density_figure, score_figure
from autointerp.report.html import esc, page, scoped_css, scripts
from autointerp.runfolder import RunFolder

PLOTLY_FROM_REPORT = "assets/plotly.min.js"
PLOTLY_FROM_FEATURE = "../assets/plotly.min.js"
FRAGMENT_CLASS = "autointerp-feature"
_CONTROL_SUFFIXES = (("none", ""), ("random_explanation", " · random"), ("baseline", " · baseline"))


@dataclass
class DictionaryContext:
    """Per dictionary: its info, token text and the decoder views of the paged latents."""

    info: DictionaryInfo | None
    text: TokenText
    views: DecoderViews


def select_pages(store: StoreData, which: str | int, evidence: set[int] = frozenset()) -> list[dict]:
    """Features to write a page for: ``"explained"`` (at least one explanation row, ok or failed),
    ``"all"`` (every live feature) or an int N (the first N live features). ``"explained"`` also
    pages every flagged feature, every significantly diffed one and the ids in ``evidence`` (circuit
    targets): the report links their evidence, explained or not."""
    live = [f for f in store.features if not f["dead"]]
    if which == "explained":
        flagged = {fid for fid, gs in store.flags.items() if any(g["flagged"] for g in gs)}
        diffed = {fid for fid, ds in store.diffs.items() if any(d["significant"] for d in ds)}
        audit = flagged | diffed | set(evidence)
        return [f for f in store.features if store.explanations.get(f["id"]) or f["id"] in audit]
    if which == "all":
        return live
    if isinstance(which, int) and not isinstance(which, bool) and which >= 0:
        return live[:which]
    raise ValueError(f"feature_pages must be 'explained', 'all' or a count >= 0, got {which!r}")


def dictionary_context(info: DictionaryInfo | None, latents: list[int]) -> DictionaryContext:
    """Load the dictionary's model once (cached) and compute the decoder views of ``latents``."""
    if info is None:
        missing = DecoderViews({}, "the dictionary folder is missing", {})
        return DictionaryContext(None, TokenText(None), missing)
    spec = info.spec
    if spec is None:
        model = "no model recorded for this dictionary (autointerp.json missing)"
        tokenizer = None
    else:
        model = load_model_cached(spec)
        tokenizer = load_tokenizer_cached(spec) if isinstance(model, str) else model.tokenizer
    text = TokenText(tokenizer)
    return DictionaryContext(info, text, decoder_views(info, latents, model, text))


def _neighbours(feature: dict, ctx: DictionaryContext, store: StoreData, paged: set[int],
                prefix: str) -> list[feature_page.Neighbour]:
    out = []
    for latent, cos in ctx.views.neighbours.get(feature["latent"], []):
        fid = store.index.get((feature["dictionary"], latent))
        best = best_explanation(store.explanations.get(fid, []), store.scores.get(fid, [])) if fid else None
        out.append(feature_page.Neighbour(latent, cos, f"{prefix}{fid}.html" if fid in paged else None, fid,
                                   best["text"] if best and best["status"] == "ok" else None))
    return out


def feature_content(feature: dict, ctx: DictionaryContext, store: StoreData, examples: list[dict],
                    paged: set[int], prefix: str = "", report_href: str | None = None,
                    circuits: list[str] = ()) -> feature_page.FeatureContent:
    """The content of one feature page; neighbour links are ``prefix + <id>.html`` for paged ids;
    ``circuits``: the HTML blocks of the circuits that target the feature."""
    fid = feature["id"]
    return feature_page.FeatureContent(
        feature=feature, explanations=store.explanations.get(fid, []), scores=store.scores.get(fid, []),
        examples=examples, text=ctx.text, spec=ctx.info.spec if ctx.info else None,
        logits=ctx.views.logits.get(feature["latent"]), logit_note=ctx.views.logit_note,
        neighbours=_neighbours(feature, ctx, store, paged, prefix), report_href=report_href,
        flags=store.flags.get(fid, []), diffs=store.diffs.get(fid, []), circuits=list(circuits))


def feature_page_html(content: feature_page.FeatureContent) -> str:
    body = feature_page.feature_body(content, plot_div='<div class="plot" id="fig-activations"></div>')
    figs = {"fig-activations": activation_figure(content.examples)}
    return page(f"Feature {content.feature['id']}", body, PLOTLY_FROM_FEATURE, scripts(figs))


# ------------------------------------------------------------------------------ the table
def _score_columns(store: StoreData) -> list[tuple[str, str]]:
    """(scorer, model) pairs of the run, in name order."""
    return sorted({(s["scorer"], s["model"]) for rows in store.scores.values() for s in rows})


def _cell(s: dict | None) -> dict | None:
    return None if s is None else {"v": s["value"], "s": s["status"]}


def table_data(store: StoreData, paged: set[int]) -> dict:
    """The feature table as JSON-ready columns and rows (values, or status for failures)."""
    pairs = _score_columns(store)
    names = Counter(scorer for scorer, _ in pairs)
    cols = [{"key": key, "label": label, "kind": kind} for key, label, kind in (
        ("id", "id", "id"), ("dictionary", "dictionary", "text"), ("latent", "latent", "num"),
        ("density", "density", "num"), ("max_act", "max act", "num"), ("expl", "best explanation", "expl"))]
    for scorer, model in pairs:
        name = scorer if names[scorer] == 1 else f"{scorer} ({model})"
        cols += [{"key": f"{name}|{c}", "label": f"{name}{suffix}", "kind": "score"}
                 for c, suffix in _CONTROL_SUFFIXES]
    rows = []
    for f in store.features:
        expl, scores = store.explanations.get(f["id"], []), store.scores.get(f["id"], [])
        best = best_explanation(expl, scores)
        row = {k: f[k] for k in ("id", "dictionary", "latent", "density", "max_act")}
        row["page"] = f"features/{f['id']}.html" if f["id"] in paged else None
        row["expl"] = None if best is None else {k: best[k] for k in ("text", "explainer", "model", "status")}
        row["others"] = [{"explainer": e["explainer"], "status": e["status"]} for e in expl if e is not best]
        for scorer, model in pairs:
            name = scorer if names[scorer] == 1 else f"{scorer} ({model})"
            for control in ("none", "random_explanation", "baseline"):
                match = [s for s in scores
                         if (s["scorer"], s["model"], s["control"]) == (scorer, model, control)
                         and (control == "baseline" or s["explanation_id"] == (best or {}).get("id"))]
                row[f"{name}|{control}"] = _cell(match[0] if match else None)
        search = [str(f["id"]), f["dictionary"], str(f["latent"]),
                  *(f"{e['explainer']} {e['status']} {e['text'] or ''}" for e in expl)]
        row["search"] = " ".join(search).lower()
        rows.append(row)
    return {"columns": cols, "rows": rows}


def _score_values(store: StoreData) -> tuple[dict[str, dict[str, list[float]]], Counter]:
    values: dict[str, dict[str, list[float]]] = {}
    failed: Counter = Counter()
    for rows in store.scores.values():
        for s in rows:
            if s["status"] == "ok":
                values.setdefault(s["scorer"], {}).setdefault(s["control"], []).append(s["value"])
            else:
                values.setdefault(s["scorer"], {})
                failed[(s["scorer"], s["control"])] += 1
    return values, failed


def _ok_texts(store: StoreData, ids) -> dict[int, str | None]:
    """The best ``ok`` explanation text of each feature in ``ids``."""
    return {fid: ok_explanation(store, fid) for fid in ids}


def render_circuits(files: list[CircuitFile]) -> tuple[list[CircuitFile], dict[int, list[str]]]:
    """The circuits' page blocks by target feature id. A graph that loads but cannot be drawn
    (missing or mistyped fields) comes back as an error entry, like an unreadable file."""
    from autointerp.circuits import circuit_fragment_html

    out, blocks = [], {}
    for c in files:
        if c.graph is not None:
            try:  # plotly is loaded by the feature page's head, so no plotly_src here
                block = findings.circuit_block_html(c.name, c.graph, circuit_fragment_html(c.graph))
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                c = CircuitFile(c.name, None, error=f"malformed graph: {type(exc).__name__}: {exc}")
            else:
                if c.feature_id is not None:
                    blocks.setdefault(c.feature_id, []).append(block)
        out.append(c)
    return out, blocks


def _audit_sections(run: RunFolder, store: StoreData, paged: set[int], circuits: list[CircuitFile]) -> str:
    """The model-diff and circuits sections; empty for a run that has neither."""
    out = ""
    if store.diffs:
        rows = [d for ds in store.diffs.values() for d in ds]
        summary = read_diff_summary(run)
        out += "<h2>Model diff</h2>" + findings.diff_html(rows, summary.summary, summary.error, paged,
                                                      _ok_texts(store, store.diffs))
    if circuits:
        out += "<h2>Circuits</h2>" + findings.circuits_html(circuits, paged)
    return out


def report_html(run: RunFolder, store: StoreData, dicts: dict[str, DictionaryInfo], paged: set[int],
                circuits: list[CircuitFile] = ()) -> str:
    """The run report page; ``circuits``: the run's circuit files (after :func:`render_circuits`)."""
    values, failed = _score_values(store)
    figs = {"fig-density": density_figure(store.features)}
    figs.update({f"fig-score-{i}": score_figure(scorer, values[scorer])
                 for i, scorer in enumerate(sorted(values))})
    all_expl = [e for rows in store.explanations.values() for e in rows]
    all_scores = [s for rows in store.scores.values() for s in rows]
    score_divs = "".join(f'<div class="plot" id="fig-score-{i}"></div>' for i in range(len(values)))
    behaviour_html, behaviour_figs = behaviour_section(run, paged)
    figs.update(behaviour_figs)
    db_note = "" if run.db.exists() else '<p class="muted">No features.db in this run folder yet.</p>'
    body = (f"<h1>autointerp run report</h1><div class=\"muted mono\">{esc(run.root.resolve())}</div>"
            + audit_section(run, paged) +
            f"<h2>Config</h2>{pages.config_html(run.config)}"
            f"<h2>Model</h2>{pages.models_html(dicts)}"
            f"<h2>Dictionaries</h2>{pages.dictionaries_html(dicts)}"
            f"<h2>Features</h2>{db_note}{pages.counts_html(store.features, all_expl, all_scores)}"
            '<div class="plot" id="fig-density"></div>'
            "<h2>Flagged features</h2>" + findings.flagged_html(store.flags, store.by_id, paged,
                                                                  _ok_texts(store, store.flags))
            + behaviour_html + _audit_sections(run, store, paged, list(circuits))
            + "<h2>Scores against controls</h2>"
            '<p class="note">Each scorer scores an explanation, the explanation of a random other feature '
            "(random explanation) and the no-LLM token-enrichment explanation (baseline) on the same "
            "contexts. "
            "Failed scores are counted, never plotted.</p>"
            + (f'<div class="grid2">{score_divs}</div>{pages.score_summary_html(values, failed)}' if values
               else '<p class="muted">No score yet.</p>')
            + "<h2>All features</h2>"
            '<p><input id="filter" type="search" aria-label="filter features" '
            'placeholder="filter: id, dictionary, explanation, status…"> '
            '<span id="count" class="muted"></span></p><p class="note">Click a header to sort. Scores are '
            "those of the best explanation; a failed score or explanation shows its status instead of a "
            "value.</p>"
            '<div class="tablewrap"><table id="features"><thead></thead><tbody></tbody></table></div>')
    return page("autointerp run report", body, PLOTLY_FROM_REPORT, scripts(figs, table_data(store, paged)))


# ---------------------------------------------------------------------------------- build
def write_assets(run: RunFolder) -> None:
    """``assets/plotly.min.js`` from the installed plotly (rewritten only when it changed)."""
    from plotly.offline import get_plotlyjs

    run.assets.mkdir(parents=True, exist_ok=True)
    target, js = run.assets / "plotly.min.js", get_plotlyjs()
    if not target.exists() or target.read_text(encoding="utf-8") != js:
        target.write_text(js, encoding="utf-8")


def build_report(run_dir: str | Path, *, progress: bool = True,
                 feature_pages: str | int = "explained") -> Path:
    """Write ``report.html``, the feature pages and the assets of the run at ``run_dir``; returns the
    report's path. ``feature_pages``: ``"explained"``, ``"all"`` (live features) or a count."""
    run = RunFolder(run_dir)
    store, dicts = read_store(run), read_dictionaries(run)
    circuits, circuit_blocks = render_circuits(read_circuits(run, store))
    chosen = select_pages(store, feature_pages, set(circuit_blocks))
    paged = {f["id"] for f in chosen}
    write_assets(run)
    run.feature_pages.mkdir(parents=True, exist_ok=True)
    by_dict: dict[str, list[dict]] = {}
    for f in chosen:
        by_dict.setdefault(f["dictionary"], []).append(f)
    if chosen:
        with FeatureDB(run.db) as db:
            for name, feats in by_dict.items():
                ctx = dictionary_context(dicts.get(name), [f["latent"] for f in feats])
                for f in tqdm(feats, desc=f"feature pages {name}", disable=not progress):
                    content = feature_content(f, ctx, store, db.examples(f["id"]), paged,
                                              report_href="../report.html",
                                              circuits=circuit_blocks.get(f["id"], []))
                    run.feature_page(f["id"]).write_text(feature_page_html(content), encoding="utf-8")
    run.report.write_text(report_html(run, store, dicts, paged, circuits), encoding="utf-8")
    return run.report


# ------------------------------------------------------------------------- notebook helpers
def _one_feature(run_dir: str | Path, feature_id: int) -> feature_page.FeatureContent:
    run = RunFolder(run_dir)
    store = read_store(run)
    feature = store.by_id.get(feature_id)
    if feature is None:
        raise KeyError(f"no feature {feature_id} in {run.db}")
    info = read_dictionaries(run).get(feature["dictionary"])
    ctx = dictionary_context(info, [feature["latent"]])
    with FeatureDB(run.db) as db:
        examples = db.examples(feature_id)
    paged = {int(p.stem) for p in run.feature_pages.glob("*.html") if p.stem.isdigit()}
    prefix = run.feature_pages.resolve().as_uri() + "/"
    return feature_content(feature, ctx, store, examples, paged, prefix=prefix)


def feature_fragment_html(run_dir: str | Path, feature_id: int) -> str:
    """One feature's page content as an HTML fragment (styles inline, no scripts, no plotly), for a
    notebook's ``_repr_html_``."""
    body = feature_page.feature_body(_one_feature(run_dir, feature_id))
    return f'<div class="{FRAGMENT_CLASS}"><style>{scoped_css(FRAGMENT_CLASS)}</style>{body}</div>'


def feature_histogram(run_dir: str | Path, feature_id: int):
    """The feature's activation histogram (stored example windows) as a plotly Figure."""
    import plotly.graph_objects as go

    run = RunFolder(run_dir)
    with FeatureDB(run.db) as db:
        examples = db.examples(feature_id)
    return go.Figure(activation_figure(examples))
