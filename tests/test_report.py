"""The run report on a tiny run: pages written, table contents, links, offline, XSS-safe."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from autointerp.report import build_report, feature_fragment_html, feature_histogram
from autointerp.report.data import TokenText, decoder_views, load_model_cached, read_dictionaries
from autointerp.report.html import script_json
from autointerp.runfolder import RunFolder
from report_run import HP, PROBES, build_run

ALLOWED_SCRIPT_TAGS = {'<script src="assets/plotly.min.js">', '<script src="../assets/plotly.min.js">',
                       '<script type="application/json" id="figures">',
                       '<script type="application/json" id="table-data">', "<script>"}


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def built(tiny_model, tok, tmp_path_factory):
    info = build_run(tiny_model, tmp_path_factory.mktemp("report"), tok)
    build_report(info["run"], progress=False)
    return info


def _copy(built: dict, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(built["run"], run, ignore=shutil.ignore_patterns("report.html", "features", "assets"))
    return run


def _pages(run: Path) -> list[Path]:
    return [run / "report.html", *sorted((run / "features").glob("*.html"))]


def _table(run: Path) -> dict:
    text = (run / "report.html").read_text()
    block = re.search(r'<script type="application/json" id="table-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(block)


def test_writes_report_assets_and_explained_pages(built):
    run = RunFolder(built["run"])
    assert run.report.exists() and (run.assets / "plotly.min.js").stat().st_size > 1_000_000
    written = {int(p.stem) for p in run.feature_pages.glob("*.html")}
    assert written == {built["probe"], built["failed"], built["failed_scores"]}


def test_table_holds_every_feature_and_failures_show_status(built):
    from autointerp.featuredb import FeatureDB

    table = _table(built["run"])
    with FeatureDB(built["run"] / "features.db") as db:
        assert sorted(r["id"] for r in table["rows"]) == sorted(f["id"] for f in db.features())
    rows = {r["id"]: r for r in table["rows"]}
    failed = rows[built["failed"]]
    assert failed["expl"] == {"text": None, "explainer": "token-activation", "model": "fake-llm",
                              "status": "parse_error"}
    scores = rows[built["failed_scores"]]
    assert scores["embedding|none"] == {"v": None, "s": "timeout"}
    assert scores["embedding|random_explanation"] == {"v": None, "s": "error"}
    assert scores["embedding|baseline"] == {"v": 0.5, "s": "ok"}
    probe = rows[built["probe"]]
    # the best explanation is the higher-scored one, with its own scores and controls
    assert probe["expl"]["text"] == PROBES[1] and probe["embedding|none"]["v"] == 0.8
    assert probe["embedding|random_explanation"]["v"] == 0.4
    assert {r["page"] for r in table["rows"] if r["page"]} == {
        f"features/{i}.html" for i in (built["probe"], built["failed"], built["failed_scores"])}


def test_failed_rows_on_feature_pages_show_status_not_values(built):
    page = (built["run"] / "features" / f"{built['failed_scores']}.html").read_text()
    assert '<span class="status">timeout</span>' in page and '<span class="status">error</span>' in page
    failed = (built["run"] / "features" / f"{built['failed']}.html").read_text()
    assert '<span class="status">parse_error</span>' in failed
    assert html.escape(PROBES[2]) in failed  # the raw response, escaped


def test_links_resolve_and_nothing_remote(built):
    run = built["run"]
    for path in _pages(run):
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path
        for ref in re.findall(r'(?:href|src)="([^"]+)"', text):
            assert not re.match(r"^[a-z]+:", ref), (path, ref)
            assert (path.parent / html.unescape(ref)).resolve().exists(), (path, ref)
    for row in _table(run)["rows"]:
        assert row["page"] is None or (run / row["page"]).exists()


def test_xss_probes_escaped_everywhere(built):
    run = built["run"]
    for path in _pages(run):
        text = path.read_text()
        tags = re.findall(r"<script[^>]*>", text)
        assert set(tags) <= ALLOWED_SCRIPT_TAGS, (path, set(tags) - ALLOWED_SCRIPT_TAGS)
        assert len(tags) == text.count("</script>"), path
        assert "<img" not in text and "<!--" not in text and "alert(2)</script>" not in text
    page = (run / "features" / f"{built['probe']}.html").read_text()
    for probe in PROBES[:2]:
        assert html.escape(probe) in page
    assert "&lt;script&gt;" in page and "onerror=&quot;" in page
    report = (run / "report.html").read_text()
    assert html.escape(PROBES[0]) in report  # in the escaped config.yaml
    assert script_json(PROBES[1]) in report  # the best explanation in the table data
    assert "\\u003c/script\\u003e\\u003cscript\\u003e" in script_json(PROBES[2])


def test_script_json_escapes_and_round_trips():
    obj = {"t": "</script><!--\u2028\u2029&", "x": float("nan")}
    text = script_json(obj)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == {"t": obj["t"], "x": None}


def test_page_selection_all_and_count(built, tmp_path):
    run = _copy(built, tmp_path)
    build_report(run, progress=False, feature_pages="all")
    assert {int(p.stem) for p in (run / "features").glob("*.html")} == set(built["live"])
    run2 = _copy(built, tmp_path / "two")
    build_report(run2, progress=False, feature_pages=2)
    assert {int(p.stem) for p in (run2 / "features").glob("*.html")} == set(built["live"][:2])
    with pytest.raises(ValueError):
        build_report(run2, progress=False, feature_pages="some")


def test_missing_config_and_unloadable_model_are_reported(built, tmp_path):
    run = _copy(built, tmp_path)
    (run / "config.yaml").unlink()
    prov_file = run / "dictionaries" / HP / "autointerp.json"
    prov = json.loads(prov_file.read_text())
    prov["model"]["spec"] = "no-such-model-anywhere"
    prov_file.write_text(json.dumps(prov))
    build_report(run, progress=False)
    assert "No config.yaml in this run folder" in (run / "report.html").read_text()
    page = (run / "features" / f"{built['probe']}.html").read_text()
    assert "could not be loaded" in page and "Nearest features" in page


def test_decoder_views_match_direct_computation(built, tiny_model_dir):
    import dictionaries as dl

    info = read_dictionaries(RunFolder(built["run"]))[HP]
    model = load_model_cached(info.spec)
    text = TokenText(model.tokenizer)
    latents = [1, 2]
    views = decoder_views(info, latents, model, text)
    W = dl.load(info.folder).W_dec.detach()
    unit = W / W.norm(dim=-1, keepdim=True)
    W_U = model.hf_model.lm_head.weight.detach() * model.hf_model.model.norm.weight.detach()
    logits = unit[1] @ W_U.T
    assert [t for t, _ in views.logits[1][0]] == text(logits.topk(10).indices.tolist())
    assert [t for t, _ in views.logits[1][1]] == text((-logits).topk(10).indices.tolist())
    cos = unit @ unit[2]
    cos[2] = -2
    assert [lat for lat, _ in views.neighbours[2]] == cos.topk(10).indices.tolist()
    page = (built["run"] / "features" / f"{built['probe']}.html").read_text()
    assert "Promoted" in page and "Suppressed" in page


def test_fragment_and_histogram(built):
    frag = feature_fragment_html(built["run"], built["probe"])
    assert "<script" not in frag.lower() and "plotly" not in frag.lower()
    assert f"Feature {built['probe']}" in frag and html.escape(PROBES[1]) in frag
    assert "body {" not in frag  # styles are scoped to the fragment
    fig = feature_histogram(built["run"], built["probe"])
    assert fig.data and all(t.type == "bar" for t in fig.data)
    assert sum(sum(t.y) for t in fig.data) == sum(1 for e in _probe_acts(built) if e > 0)


def _probe_acts(built: dict) -> list[float]:
    from autointerp.featuredb import FeatureDB

    with FeatureDB(built["run"] / "features.db") as db:
        return [a for e in db.examples(built["probe"]) for a in e["activations"]]
