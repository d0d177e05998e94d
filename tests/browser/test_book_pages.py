"""The built book in a real browser: Debian's Chromium, headless, driven by Playwright.

Every HTML page of ``_build/html`` is served from 127.0.0.1 and opened in a fresh browser
context. A page fails when it logs a console error or throws, when any request fails or is
answered with an HTTP error, when an image has not loaded (``naturalWidth == 0``), when math
in its source was not typeset by MathJax (or was typeset as a TeX error), when a link to
another page of the book points at a file that does not exist, or when it requests anything
from a host other than this machine: every request is intercepted, and those for other hosts
are blocked and reported. A full-page screenshot of every page is saved under
``_build/screenshots/`` (same layout as ``_build/html``) for a person to look at.

Run by ``make browser`` (part of ``make test``), which builds the book first and installs
Debian's chromium when it is missing; see conftest.py for why ``pytest tests`` skips it.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("MDL_BOOK_HTML", REPO / "_build" / "html"))
SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM = os.environ.get("MDL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium phones home at start-up (and on this
# machine's closed network, fails to); Playwright gives each launch a fresh profile directory.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}


def _pages() -> list[str]:
    if not HTML.is_dir():
        return []
    return sorted(
        path.relative_to(HTML).as_posix() for path in HTML.rglob("*.html")
        if path.relative_to(HTML).parts[0] not in {"_static", "_sources", "_images"}
    )


PAGES = _pages()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        pass


@pytest.fixture(scope="session")
def server_url():
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    assert Path(CHROMIUM).is_file(), (
        f"no Chromium at {CHROMIUM}: `make browser` installs Debian's package (apt-get install chromium)"
    )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


def test_the_book_was_built_with_every_page_of_the_toc():
    assert PAGES, f"no HTML pages in {HTML}: build the book first (make html)"
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    expected = [toc["root"]] + [entry["file"] for entry in toc["chapters"]]
    missing = [f"{name}.html" for name in expected if f"{name}.html" not in PAGES]
    assert not missing, f"pages in _toc.yml that were not built: {missing}"


# Forces lazy images to load, then waits until every image has loaded or failed.
_LOAD_IMAGES = """async () => {
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  return images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.currentSrc || img.src);
}"""

# Waits for MathJax to finish typesetting, when the page loaded it; reports the math elements.
_TYPESET = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const math = [...document.querySelectorAll('.math')];
  return {
    mathjax: Boolean(window.MathJax && MathJax.version),
    math: math.length,
    untypeset: math.filter(el => !el.querySelector('mjx-container')).map(el => el.textContent.slice(0, 80)),
    containers: document.querySelectorAll('mjx-container').length,
    errors: [...document.querySelectorAll('mjx-merror')].map(el => el.getAttribute('data-mjx-error') || el.textContent),
  };
}"""

# Code and printed output wider than its box (cut off, or hidden behind a scroll bar).
_OVERFLOWING = """() => [...document.querySelectorAll('div.cell pre')]
    .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
    .map(pre => pre.textContent.split('\\n').reduce((a, b) => a.length >= b.length ? a : b).slice(0, 80))"""
_TABLES = """() => document.querySelectorAll('div.cell_output table').length"""
_LOCAL_LINKS = """() => [...document.querySelectorAll('a[href]')].map(a => a.href)"""


def _screenshot_path(page_path: str) -> Path:
    return SCREENSHOTS / Path(page_path).with_suffix(".png")


def source_text_of_chapter(page_path: str) -> str:
    """The Jupytext source of a chapter page (empty for other pages)."""
    source = REPO / "notebooks" / f"{Path(page_path).stem}.py"
    return source.read_text(encoding="utf-8") if source.is_file() else ""


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders_offline_with_its_math_and_figures(page_path, server_url, browser):
    source = (HTML / page_path).read_text(encoding="utf-8")
    source_has_math = 'class="math' in source

    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    outside, failed, console_errors = [], [], []

    def keep_local(route):
        url = urlsplit(route.request.url)
        if url.scheme in NETWORK_SCHEMES and url.hostname not in LOCAL_HOSTS:
            outside.append(route.request.url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    context.route("**/*", keep_local)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
    page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: failed.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None)
    try:
        page.goto(f"{server_url}/{page_path}", wait_until="load")
        redirect = re.search(r'http-equiv="refresh" content="\d+;\s*url=([^"]+)"', source, re.I)
        if redirect:  # the stub at the root sends readers to the landing page
            target = urljoin(f"{server_url}/{page_path}", redirect.group(1))
            assert (HTML / urlsplit(target).path.lstrip("/")).is_file(), f"{page_path} redirects to a missing page"
            page.wait_for_url(target)
            page.wait_for_load_state("load")
        broken_images = page.evaluate(_LOAD_IMAGES)
        typeset = page.evaluate(_TYPESET)
        page.wait_for_load_state("networkidle")
        links = page.evaluate(_LOCAL_LINKS)
        overflowing = page.evaluate(_OVERFLOWING)
        tables = page.evaluate(_TABLES)
        if not redirect:  # the stub's screenshot would be the landing page's
            _screenshot_path(page_path).parent.mkdir(parents=True, exist_ok=True)
            # The API page is long: its full-page screenshot took over 30 s on a busy 2-core
            # machine, so the screenshot (an artefact for people, not a check) gets longer.
            page.screenshot(path=str(_screenshot_path(page_path)), full_page=True, timeout=180_000)
    finally:
        context.close()

    assert not outside, f"{page_path} requested other hosts: {outside}"
    assert not failed, f"{page_path} had failed requests: {failed}"
    assert not console_errors, f"{page_path} logged console errors: {console_errors}"
    assert not broken_images, f"{page_path} has images that did not load: {broken_images}"
    if source_has_math:
        assert typeset["mathjax"], f"{page_path} has math but MathJax did not load"
        assert typeset["math"] > 0 and not typeset["untypeset"], (
            f"{page_path}: math left untypeset: {typeset['untypeset']}"
        )
        assert typeset["containers"] >= typeset["math"]
    assert not typeset["errors"], f"{page_path}: TeX errors: {typeset['errors']}"

    assert not overflowing, f"{page_path}: code or output lines cut off by the page width: {overflowing}"
    if page_path.startswith("book/chapters/") and "mdl_utils.tables" in source_text_of_chapter(page_path):
        assert tables > 0, f"{page_path} displays result tables but none rendered as an HTML table"

    dead = []
    for href in links:
        url = urlsplit(href)
        if url.hostname in LOCAL_HOSTS and url.path:
            target = HTML / unquote(url.path).lstrip("/")
            if not (target.is_file() or (target / "index.html").is_file()):
                dead.append(href)
    assert not dead, f"{page_path} links to pages that do not exist: {dead}"


@pytest.mark.parametrize("page_path", [p for p in PAGES if p.startswith("book/chapters/")])
def test_chapter_launch_button_opens_a_notebook_made_from_a_committed_source(page_path):
    """Binder opens notebooks/NAME.ipynb, which the repository's postBuild makes from the
    committed notebooks/NAME.py (the executed chapters are not committed)."""
    stem = Path(page_path).stem
    source = (HTML / page_path).read_text(encoding="utf-8")
    assert f"?urlpath=lab/tree/notebooks/{stem}.ipynb" in source
    assert "book/chapters/" not in "".join(
        line for line in source.splitlines() if "mybinder.org" in line
    )
    assert (REPO / "notebooks" / f"{stem}.py").is_file()
    assert "jupytext --to ipynb notebooks/*.py" in (REPO / "postBuild").read_text()
