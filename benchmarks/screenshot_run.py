"""Screenshots of a run's report and of one feature page in headless Chromium, to look at.

    python benchmarks/screenshot_run.py runs/demo --out benchmarks/screenshots [--feature ID]

The feature defaults to the live feature with the best ``embedding`` score. Needs Debian's
``chromium`` and the ``playwright`` package (the dev extra); opens the files via file:// URLs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autointerp import open_run
from autointerp.runfolder import RunFolder

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--out", default="benchmarks/screenshots")
    p.add_argument("--feature", type=int, default=None)
    p.add_argument("--prefix", default="demo_")
    args = p.parse_args()
    rf, out = RunFolder(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fid = args.feature if args.feature is not None else open_run(args.run).top(by="embedding", n=1)[0].id
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for name, path in (("report", rf.report), ("feature", rf.feature_page(fid))):
            page.goto(path.resolve().as_uri())
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / f"{args.prefix}{name}.png"), full_page=name == "feature")
            print(f"{out / f'{args.prefix}{name}.png'}  ({path})")
        browser.close()
    print("console/page errors:", errors or "none")


if __name__ == "__main__":
    main()
