"""The report's audit evidence: the model-diff section and feature-page block, circuits embedded in
their target's page and listed in the report, a corrupt circuit file as a note, escaping, and runs
without either left unchanged. The run folders are built by hand (no model, no dictionary weights)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from autointerp.circuits import save_circuit
from autointerp.examples import LatentRecord
from autointerp.featuredb import FeatureDB
from autointerp.report import build_report

DICT = "blocks.1.hook_out"
BASE = "base-<model>"
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
LATENTS = range(6)


def _run(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """features.db with six live latents; latent 0 has a hostile ok explanation."""
    run = tmp_path / "run"
    run.mkdir()
    with FeatureDB(run / "features.db") as db:
        ids = db.put_features(DICT, [LatentRecord(latent=j, density=0.01, max_activation=2.0) for j in LATENTS])
        db.put_explanation(ids[0], "token-activation", "fake-llm", "ok", text=HOSTILE)
        db.put_explanation(ids[0], "token-enrichment", "none", "parse_error", error="x")
    return run, ids


def _diff_rows() -> list[dict]:
    """Latents 0-5 ranked 1-6: latents 0 and 3 significant (latent 3 unexplained), latent 5 without a
    counterpart cosine."""
    rows = []
    for rank, (latent, z, effect, sig) in enumerate(
            [(0, 9.5, 1.0, True), (3, -7.25, -0.5, True), (1, 2.0, 0.1, False), (2, 1.0, 0.05, False),
             (4, 0.5, 0.0, False), (5, 0.0, 0.0, False)], start=1):
        rows.append({"latent": latent, "rank": rank, "freq_base": 0.001 * rank, "freq_tuned": 0.002 * rank,
                     "mean_base": 0.1, "mean_tuned": 0.2, "max_base": 1.5, "max_tuned": 3.25, "n_new": 12,
                     "n_lost": 3, "z": z, "effect": effect, "significant": sig, "n_jump": 7 if latent == 3 else 0,
                     "max_jump": 2.5,
                     "counterpart_cos": None if latent == 5 else 0.125 * (latent + 1)})
    return rows


def _write_diff(run: Path, ids: dict[int, int]) -> None:
    rows = _diff_rows()
    with FeatureDB(run / "features.db") as db:
        db.put_diffs(DICT, BASE, 5.0, rows, jump_min=3, rank_by="tail")
    summary = {"dictionary": DICT, "base": BASE, "tuned": "tuned-model", "tokens": 12345, "fvu_base": 0.4321,
               "fvu_tuned": 0.1234, "n_significant": 2, "z_min": 5.0, "top": rows}
    (run / "diff.json").write_text(json.dumps(summary))


def _graph(feature_id: int | None, latent: int, prompt: str = "x = 1", passed: bool = True) -> dict:
    """A small graph of the layout ``autointerp.circuits.circuit`` writes: input -> feature -> target."""
    label = f"{DICT}/{latent}@1"
    nodes = [
        {"id": "in0", "kind": "input", "layer": 0, "position": 0, "token": "x", "label": "'x'@0",
         "activation": 1.0, "influence": 0.5, "attribution": 0.2},
        {"id": "f1", "kind": "feature", "layer": 1, "position": 1, "token": " =", "dictionary": DICT, "latent": 2,
         "activation": 0.7, "influence": 0.4, "attribution": 0.6, "feature_id": None, "explanation": HOSTILE,
         "label": f"{DICT}/2@1"},
        {"id": "target", "kind": "target", "layer": 2, "position": 1, "token": " =", "label": label,
         "activation": 1.25, "influence": 1.0, "attribution": None},
    ]
    return {
        "version": 1, "prompt": prompt, "tokens": ["x", " ="], "token_ids": [87, 796], "model": "tiny",
        "target": {"spec": f"feature:{DICT}/latent={latent}", "kind": "feature", "dictionary": DICT,
                   "latent": latent, "feature_id": feature_id, "token": None, "token_id": None, "position": 1,
                   "value": 1.25, "label": label},
        "dictionaries": [{"name": DICT, "input_hookpoint": DICT, "target_hookpoint": DICT, "layer": 1}],
        "nodes": nodes,
        "edges": [{"source": "in0", "target": "f1", "weight": 0.3, "score": 0.3},
                  {"source": "f1", "target": "target", "weight": 0.6, "score": 0.6}],
        "pruning": {"node_share": 0.8, "edge_share": 0.98, "kept_share": 0.9, "influence_total": 1.0,
                    "nodes_total": 5, "nodes_kept": 2, "edge_kept_share": 1.0},
        "completeness": {"target_value": 1.25, "linear_value": 1.25, "bias": 0.45, "attribution_sum": 0.8,
                         "relative_error": 3.5e-7, "max_node_relative_error": 1e-6},
        "ablation": {"k": 1, "draws": 4, "seed": 0, "baseline": 1.25, "clean_target": 1.25, "top_nodes": ["f1"],
                     "delta_top": -0.875, "abs_delta_top": 0.875, "delta_random": [0.1, -0.1, 0.2, 0.0],
                     "mean_abs_delta_random": 0.1, "ratio": 8.75, "passed": passed, "note": "n"},
    }


def _pages(run: Path) -> set[int]:
    return {int(p.stem) for p in (run / "features").glob("*.html")}


def _no_raw_hostile(text: str) -> None:
    assert "<script>alert" not in text and "<img" not in text and "alert(1)</script>" not in text


def _section(report: str, heading: str) -> str:
    return report.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]


def test_diff_section_rows_links_and_escaping(tmp_path):
    run, ids = _run(tmp_path)
    _write_diff(run, ids)
    build_report(run, progress=False)
    # explained, plus the unexplained but significant latent 3; not the insignificant ones
    assert _pages(run) == {ids[0], ids[3]}
    report = (run / "report.html").read_text()
    section = _section(report, "Model diff")
    assert html.escape(f"{DICT}: tuned-model (fine-tuned) vs {BASE} (base) on 12,345 tokens; FVU on base "
                       "activations 0.432, on fine-tuned activations 0.123; 2 of 6 latents changed "
                       "significantly (|z| ≥ 5.0 or contexts jumped ≥ 3). Ranked by tail.") in section
    rows = re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>", 1)[1])
    assert len(rows) == 6
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert [c[0] for c in cells] == ["1", "2", "3", "4", "5", "6"]
    assert cells[0][1] == f'<a href="features/{ids[0]}.html">feature {ids[0]}</a>'
    assert cells[1][1] == f'<a href="features/{ids[3]}.html">feature {ids[3]}</a>'
    assert cells[2][1] == f"feature {ids[1]}"  # no page: plain id
    assert cells[0][2] == html.escape(HOSTILE) and cells[1][2] == "—"
    # contexts jumped, effect, z, freq base, freq tuned, max base, max tuned, counterpart cos, significant
    assert cells[1][3:] == ["7", "-0.500", "-7.25", "0.0020", "0.0040", "1.500", "3.250", "0.500", "yes"]
    assert cells[5][10] == "" and cells[5][11] == '<span class="muted">no</span>'
    _no_raw_hostile(report)
    page = (run / "features" / f"{ids[3]}.html").read_text()
    block = _section(page, "Model diff")
    assert html.escape(BASE) in block and "-7.25" in block and "yes" in block
    _no_raw_hostile(page)


def test_diff_top_50_and_missing_summary(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with FeatureDB(run / "features.db") as db:
        db.put_features(DICT, [LatentRecord(latent=j, density=0.01, max_activation=1.0) for j in range(60)])
        db.put_diffs(DICT, BASE, 5.0, [
            {"latent": j, "rank": j + 1, "freq_base": 0.0, "freq_tuned": 0.0, "mean_base": 0.0, "mean_tuned": 0.0,
             "max_base": 0.0, "max_tuned": 0.0, "n_new": 0, "n_lost": 0, "z": 0.0, "effect": 0.0,
             "significant": False, "counterpart_cos": None} for j in range(60)])
    build_report(run, progress=False)
    section = _section((run / "report.html").read_text(), "Model diff")
    assert section.split("<tbody>", 1)[1].count("<tr>") == 50
    assert "0 of 60 latents changed significantly" in section and "not in diff.json" in section
    assert _pages(run) == set()


def test_circuit_on_its_feature_page_and_listed(tmp_path):
    run, ids = _run(tmp_path)
    prompt = f"x = '{HOSTILE}'"
    save_circuit(_graph(ids[0], 0, prompt=prompt), run / "circuits" / "explained.json")
    # recorded id missing: found by (dictionary, latent); unexplained, so paged for its circuit
    save_circuit(_graph(None, 4, passed=False), run / "circuits" / "by-latent.json")
    build_report(run, progress=False)
    assert _pages(run) == {ids[0], ids[4]}
    page = (run / "features" / f"{ids[0]}.html").read_text()
    assert page.count('<script src="../assets/plotly.min.js">') == 1
    circuits = _section(page, "Circuits")
    assert circuits.count('<div class="circuit">') == 1 and 'class="circuit-checks"' in circuits
    for text in (prompt, "3.5e-07", "-0.875", "0.1", "8.75", "passed", "ablate top 1 features: Δ target"):
        assert f"<td>{html.escape(text)}</td>" in circuits, text
    _no_raw_hostile(page)
    other = (run / "features" / f"{ids[4]}.html").read_text()
    assert "<td>FAILED</td>" in _section(other, "Circuits")
    report = (run / "report.html").read_text()
    listed = _section(report, "Circuits")
    assert f'<a href="features/{ids[0]}.html">feature {ids[0]}</a>' in listed
    assert f'<a href="features/{ids[4]}.html">feature {ids[4]}</a>' in listed
    assert f"<code>{html.escape(prompt)}</code>" in listed and "by-latent.json" in listed
    assert "circuit-data" not in report  # the graphs are drawn on the feature pages only
    _no_raw_hostile(report)


def test_corrupt_circuit_json_gives_a_note(tmp_path):
    run, ids = _run(tmp_path)
    save_circuit(_graph(ids[0], 0), run / "circuits" / "good.json")
    (run / "circuits" / "broken<b>.json").write_text("{not json")
    bad = _graph(ids[0], 0)
    del bad["completeness"]
    save_circuit(bad, run / "circuits" / "incomplete.json")
    (run / "circuits" / "old.json").write_text(json.dumps({"version": 0, "nodes": []}))
    build_report(run, progress=False)
    listed = _section((run / "report.html").read_text(), "Circuits")
    assert "could not read circuits/broken&lt;b&gt;.json: cannot read circuit" in listed
    assert "could not read circuits/incomplete.json: malformed graph: KeyError" in listed
    assert "could not read circuits/old.json: " in listed and "format version" in listed
    assert "<b>" not in listed
    page = (run / "features" / f"{ids[0]}.html").read_text()
    assert _section(page, "Circuits").count('<div class="circuit">') == 1  # only the good one


@pytest.mark.parametrize("extra", ["nothing", "empty circuits folder"])
def test_runs_without_diffs_or_circuits_are_unchanged(tmp_path, extra):
    run, ids = _run(tmp_path)
    if extra == "empty circuits folder":
        (run / "circuits").mkdir()
    build_report(run, progress=False)
    assert _pages(run) == {ids[0]}
    report = (run / "report.html").read_text()
    page = (run / "features" / f"{ids[0]}.html").read_text()
    for text in (report, page):
        assert "Model diff" not in text and "Circuits" not in text and "circuit" not in text
    assert re.findall(r"<h2>(.*?)</h2>", page) == [
        "Explanations", "Scores", "Activation histogram", "Output tokens through the unembedding",
        "Nearest features by decoder cosine", "Examples"]


def test_circuit_draws_in_the_browser_without_xss(tmp_path):
    """The feature page in headless Chromium: the circuit is drawn by the page's local plotly, the
    hostile prompt and explanation stay text (skipped like tests/test_browser.py without Chromium)."""
    from test_browser import ARGS, CHROMIUM, Visit, _missing

    reason = _missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    run, ids = _run(tmp_path)
    _write_diff(run, ids)
    save_circuit(_graph(ids[0], 0, prompt=f"x = '{HOSTILE}'"), run / "circuits" / "c.json")
    build_report(run, progress=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            visit = Visit(browser, run / "features" / f"{ids[0]}.html")
            page = visit.page
            assert page.locator(".circuit .js-plotly-plot").count() == 1
            assert page.locator(".js-plotly-plot").count() == 2  # activation histogram + circuit
            assert page.locator(f"text=x = '{HOSTILE}'").count() >= 1  # shown as text
            visit.assert_clean(run)
            report = Visit(browser, run / "report.html")
            assert report.page.locator("h2", has_text="Model diff").count() == 1
            report.assert_clean(run)
        finally:
            browser.close()
