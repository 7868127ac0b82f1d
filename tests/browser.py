"""Open a local HTML file in a real headless Chromium (Debian's package) through Playwright:
what it rendered, what its console said, and every request it made."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    """Chromium's path; without it the test is skipped, except in CI, where .ci/run installs it."""
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium (apt-get install chromium; .ci/run does it)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return path


def open_page(path: Path) -> dict:
    """Load `path` and report: console errors, requests to anything but the file itself and
    data: URIs, the images (alt, natural width), and the headings."""
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
            headings = page.eval_on_selector_all("h1, h2, h3", "els => els.map(e => e.textContent)")
        finally:
            browser.close()
    outside = [u for u in requests if u != path.resolve().as_uri() and not u.startswith("data:")]
    return {"errors": errors, "requests": outside, "images": images, "headings": headings}
