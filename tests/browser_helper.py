"""Real headless Chromium for the dashboard tests (Debian's ``chromium`` driven by Playwright).

``chromium_path()`` returns the browser, installing Debian's ``chromium`` package with apt-get when
it is missing and we are root (as in CI). It skips, with the reason, only when the browser is
missing and cannot be installed because we are not root; it never downloads a browser build of its
own (no ``playwright install``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


def _installed() -> str | None:
    for candidate in (os.environ.get("KDTUNE_CHROMIUM"), CHROMIUM, shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_path() -> str:
    """Path of a headless-capable Chromium; installs Debian's package when root and missing."""
    found = _installed()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and we are not root, so it cannot be installed "
                    "(apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for cmd in (["apt-get", *lock, "update"], ["apt-get", *lock, "install", "-y", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    found = _installed()
    if not found:
        pytest.fail("apt-get installed chromium but no /usr/bin/chromium appeared")
    return found


@dataclass
class PageResult:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    expected_figures: int = -1
    title: str = ""


# Per figure: its id, whether plotly drew it (svg), its WebGL canvases, traces and a text sample.
_FIGURES_JS = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
    id: d.id,
    svg: d.querySelectorAll('svg.main-svg').length,
    canvas: d.querySelectorAll('canvas').length,
    traces: (d.data || []).length,
    points: d.querySelectorAll('.scatterlayer .point, .scatterlayer .js-line').length,
    height: d.getBoundingClientRect().height,
    text: d.innerText.slice(0, 2000),
}))
"""


def open_dashboards(html_paths: list[Path], screenshot: Path | None = None,
                    width: int = 1400) -> list[PageResult]:
    """Open each page via file:// in one headless Chromium; collect errors, requests, figures.

    ``screenshot``: a full-page PNG of the first page.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: install the dev dependencies "
                    "(pip install playwright; the browser is Debian's chromium, not playwright's)")
    exe = chromium_path()
    results = []
    with tempfile.TemporaryDirectory(prefix="kdtune-chromium-") as profile, \
            sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=LAUNCH_ARGS,
            viewport={"width": width, "height": 900},
        )
        try:
            for i, html_path in enumerate(html_paths):
                result = PageResult()
                page = ctx.new_page()
                page.on("console", lambda m, r=result: r.console_errors.append(m.text)
                        if m.type == "error" else None)
                page.on("pageerror", lambda e, r=result: r.page_errors.append(str(e)))
                page.on("request", lambda q, r=result: r.requests.append(q.url))
                page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=90_000)
                result.expected_figures = int(page.get_attribute(
                    "meta[name='kdtune-figures']", "content") or -1)
                page.wait_for_function(
                    "n => document.querySelectorAll('.js-plotly-plot').length >= n",
                    arg=result.expected_figures, timeout=30_000)
                page.wait_for_timeout(300)  # let the WebGL panels draw
                result.figures = page.evaluate(_FIGURES_JS)
                result.title = page.title()
                if screenshot is not None and i == 0:
                    page.screenshot(path=str(screenshot), full_page=True)
                page.close()
                results.append(result)
        finally:
            ctx.close()
    return results


if __name__ == "__main__":  # `python tests/browser_helper.py`: install the browser up front
    print(chromium_path())
