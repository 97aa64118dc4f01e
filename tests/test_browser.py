"""The report in headless Chromium: no errors, no network, no XSS, plots drawn, table sorts and filters.

Needs ``/usr/bin/chromium`` and the ``playwright`` Python package (no ``playwright install``).
Skipped when either is missing, unless ``AUTOINTERP_REQUIRE_BROWSER=1`` makes that a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from report_run import build_run

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where the screenshots go: ``$AUTOINTERP_SCREENSHOTS`` (e.g. benchmarks/screenshots), else a temp folder."""
    where = os.environ.get("AUTOINTERP_SCREENSHOTS")
    return Path(where) if where else tmp_path_factory.mktemp("screenshots")


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("AUTOINTERP_REQUIRE_BROWSER") == "1":
            pytest.fail(f"AUTOINTERP_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def built(browser, tiny_model, tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from autointerp.report import build_report

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    info = build_run(tiny_model, tmp_path_factory.mktemp("browser"), tokenizer)
    build_report(info["run"], progress=False)
    return info


class Visit:
    """One page load with every console error, page error, dialog and request recorded."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector(".js-plotly-plot")
        self.page.wait_for_timeout(300)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self, root: Path) -> None:
        assert self.errors == []
        assert self.dialogs == []
        assert self.page.evaluate("typeof window.__xss") == "undefined"
        for url in self.requests:
            parsed = urlparse(url)
            assert parsed.scheme == "file", url
            assert Path(unquote(parsed.path)).resolve().is_relative_to(root.resolve()), url


def _visible_rows(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#features tbody tr", "trs => trs.filter(tr => tr.style.display !== 'none')"
                              ".map(tr => Array.from(tr.cells).map(td => td.textContent))")


def test_report_renders_sorts_filters(browser, built, screenshots):
    run = built["run"]
    visit = Visit(browser, run / "report.html")
    page = visit.page
    assert page.locator(".js-plotly-plot").count() == 2  # density + one scorer
    rows = _visible_rows(page)
    assert len(rows) == 32 and page.locator("#count").text_content() == "showing 32 of 32 features"
    latent = page.locator("#features th", has_text="latent")
    latent.click()
    latent.click()  # descending
    assert [int(r[2]) for r in _visible_rows(page)] == list(range(31, -1, -1))
    page.fill("#filter", "parse_error")
    filtered = _visible_rows(page)
    assert [int(r[0]) for r in filtered] == [built["failed"]] and "parse_error" in filtered[0][5]
    page.fill("#filter", "no such text anywhere")
    assert _visible_rows(page) == []
    page.fill("#filter", "")
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "report.png"), full_page=True)
    page.locator("#features a", has_text=str(built["probe"])).first.click()
    page.wait_for_selector(".js-plotly-plot")
    assert page.url.endswith(f"features/{built['probe']}.html")
    visit.assert_clean(run)


def test_feature_page_renders_without_xss(browser, built, screenshots):
    run = built["run"]
    visit = Visit(browser, run / "features" / f"{built['probe']}.html")
    page = visit.page
    assert page.locator(".js-plotly-plot").count() == 1
    assert page.locator(".example .tok").count() > 20
    assert page.locator("text=<script>alert(1);window.__xss=1</script>").count() >= 1  # shown as text
    titles = page.eval_on_selector_all(".example .tok", "els => els.map(e => e.title)")
    firing = [t for t in titles if t]  # silent tokens carry no hover text; every firing one its value
    assert firing and all("activation" in t for t in firing) and len(firing) < len(titles)
    page.screenshot(path=str(screenshots / "feature.png"), full_page=True)
    visit.assert_clean(run)
