"""The book tested like a website: build it, serve ``_build/html`` on 127.0.0.1 and drive headless Chromium (issue 14).

Every page of the table of contents loads without console errors, every executed chapter shows its figures (each
image decoded, ``naturalWidth > 0``, at least as many as the notebook has image outputs), every internal link and
anchor resolves, the search page finds a glossary term, and the launch (Binder, Colab) and download buttons of every
chapter point at the chapter's notebook in the repository set by ``MLMC_REPO_URL``.

Uses Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when missing) through Selenium; no
browser is downloaded. Without them the test skips, except under ``CI=true``, where it fails. The browser resolves no
host but 127.0.0.1, so external resources (MathJax from a CDN) fail fast; their network errors are the only console
errors that do not count.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from mlmc.book import build_book
from mlmc.book.build import book_config
from mlmc.book.project import toc_files

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "book" / "chapters"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
GLOSSARY_TERM = "TracIn"

pytestmark = [pytest.mark.book]


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skip (fail under CI=true) when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {why}; .ci/run installs them")
    pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The book built into a temp folder and served on 127.0.0.1; yields the base URL."""
    _browser()
    html = build_book(ROOT, out_dir=tmp_path_factory.mktemp("site"))
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _load(driver: object, url: str) -> list[str]:
    """Open ``url``, wait until it has loaded, and return its console errors (external network errors dropped)."""
    driver.get(url)
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.1)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return [m for m in errors if "127.0.0.1" in m or "net::ERR_NAME_NOT_RESOLVED" not in m and "://" not in m]


def _pages() -> list[str]:
    return ["index", *toc_files(ROOT / "_toc.yml")]


def _image_outputs(stem: str) -> int:
    nb = nbformat.read(CHAPTERS / f"{stem}.ipynb", as_version=4)
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code" and "remove-cell" not in c.metadata.get("tags", [])
        for o in c.get("outputs", [])
        if any(k.startswith("image/") for k in o.get("data", {}))
    )


def test_every_page_loads_without_console_errors(site, browser):
    failures = {}
    for page in _pages():
        errors = _load(browser, urllib.parse.urljoin(site, f"{page}.html"))
        if errors:
            failures[page] = errors
    assert not failures, f"console errors: {failures}"


def test_every_chapter_shows_its_figures(site, browser):
    executed = sorted(p.stem for p in CHAPTERS.glob("*.ipynb"))
    assert executed, "no executed chapter to check"
    for stem in executed:
        _load(browser, urllib.parse.urljoin(site, f"chapters/{stem}.html"))
        images = browser.execute_script(
            "return Array.from(document.querySelectorAll('main img, article img')).map("
            "i => [i.currentSrc || i.src, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        broken = [src for src, complete, w, h in images if not (complete and w > 0 and h > 0)]
        assert not broken, f"{stem}: images not decoded: {broken}"
        assert len(images) >= _image_outputs(stem), f"{stem}: {len(images)} images for {_image_outputs(stem)} figures"


def test_internal_links_and_anchors_resolve(site, browser):
    links: set[str] = set()
    for page in _pages():
        _load(browser, urllib.parse.urljoin(site, f"{page}.html"))
        links |= set(browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"))
    internal = sorted(u for u in links if u.startswith(site))
    assert len(internal) > 20, internal
    ids: dict[str, set[str]] = {}
    bad = []
    for url in internal:
        target, _, anchor = url.partition("#")
        if target not in ids:
            try:
                with urllib.request.urlopen(target, timeout=10) as response:
                    body = response.read().decode("utf-8", "replace")
                ids[target] = set(re.findall(r'\sid="([^"]+)"', body))
            except urllib.error.URLError as err:
                bad.append(f"{url}: {err}")
                ids[target] = set()
                continue
        if anchor and target.endswith(".html") and urllib.parse.unquote(anchor) not in ids[target]:
            bad.append(f"{url}: no element with id {anchor!r}")
    assert not bad, "broken internal links:\n" + "\n".join(bad)


def test_search_finds_a_glossary_term(site, browser):
    _load(browser, urllib.parse.urljoin(site, f"search.html?q={GLOSSARY_TERM}"))
    deadline, hits = time.monotonic() + 30, []
    while time.monotonic() < deadline and not hits:
        hits = browser.execute_script(
            "return Array.from(document.querySelectorAll('#search-results li a, ul.search li a')).map(a => a.href)"
        )
        time.sleep(0.2)
    assert any("glossary.html" in h for h in hits), f"searching {GLOSSARY_TERM!r} found {hits}"


def test_launch_and_download_buttons_point_at_the_chapter_notebooks(site, browser):
    repo = book_config(ROOT)["repository"]
    owner_repo = repo["url"].removeprefix("https://github.com/")
    for path in sorted(CHAPTERS.glob("*.ipynb")):
        _load(browser, urllib.parse.urljoin(site, f"chapters/{path.stem}.html"))
        hrefs = set(browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"))
        notebook = f"{repo['path_to_book']}/chapters/{path.name}"
        assert (ROOT / notebook).is_file()
        binder = f"https://mybinder.org/v2/gh/{owner_repo}/{repo['branch']}?urlpath=lab/tree/{notebook}"
        colab = f"https://colab.research.google.com/github/{owner_repo}/blob/{repo['branch']}/{notebook}"
        download = urllib.parse.urljoin(site, f"_sources/chapters/{path.name}")
        for url in (binder, colab, download):
            assert url in hrefs, f"{path.stem}: no button linking {url}"
        with urllib.request.urlopen(download, timeout=10) as response:
            assert nbformat.reads(response.read().decode(), as_version=4).cells, "the download is the notebook"
