"""Build the HTML book with Jupyter Book 1.x, warnings as errors, and check every page in ``_toc.yml`` was written.

The build never executes code (``execute_notebooks: "off"``): it renders the committed ``book/chapters/*.ipynb``.
Before it runs, ``mlmc.book.pages`` writes the generated pages (what reproduced, runs and reproducibility), and the
configuration is ``_config.yml`` with the repository URL taken from ``$MLMC_REPO_URL`` when set (launch, download
and repository buttons). ``edition="student"`` builds a copy of the book without the cells tagged ``solution`` into
``_build/student/html``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml

from mlmc.book.pages import write_pages
from mlmc.book.project import project_root, toc_files

REPO_URL_ENV = "MLMC_REPO_URL"
EDITIONS = ("instructor", "student")
SOLUTION_TAG = "solution"
_GITHUB = re.compile(r"^https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class BookBuildFailed(RuntimeError):
    """``jupyter-book build`` failed (a warning under ``-W`` counts), or a page of the table of contents is missing."""


def _jupyter_book() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if not found:
        raise BookBuildFailed("jupyter-book is not installed; run `make setup`")
    return found


def book_config(root: Path, edition: str = "instructor") -> dict:
    """``_config.yml`` with ``repository.url`` from ``$MLMC_REPO_URL`` (a ``https://github.com/OWNER/REPO`` URL; the
    launch buttons of sphinx-book-theme need GitHub) and the edition in the title."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    url = os.environ.get(REPO_URL_ENV, "").strip().rstrip("/")
    if url:
        if not _GITHUB.match(url):
            raise ValueError(f"parameter {REPO_URL_ENV!r} must look like https://github.com/OWNER/REPO, got {url!r}")
        config.setdefault("repository", {})["url"] = url
    if edition == "student":
        config["title"] = f"{config['title']} (student edition)"
    return config


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without the cells tagged ``solution`` (the student edition of a chapter)."""
    out = nbformat.from_dict(nb)
    out.cells = [c for c in out.cells if SOLUTION_TAG not in c.get("metadata", {}).get("tags", [])]
    return out


def _student_source(root: Path, tmp: Path) -> Path:
    """Copy ``root``'s book into ``tmp`` with the solution cells of every chapter removed; return the copy's root."""
    src = tmp / "src"
    shutil.copytree(root / "book", src / "book", ignore=shutil.ignore_patterns("_build", ".*"))
    shutil.copy(root / "_toc.yml", src / "_toc.yml")
    for path in sorted((src / "book" / "chapters").glob("*.ipynb")):
        nbformat.write(student_notebook(nbformat.read(path, as_version=4)), path)
    return src


_INLINE_SCRIPT = re.compile(r"^\s*<script>.*</script>\s*$")


def _dedupe_inline_scripts(html: Path) -> None:
    """Drop repeated identical inline ``<script>`` lines from every page. Jupyter Book 1.0.4 registers the config
    scripts of sphinx-thebe and sphinx-togglebutton twice; the second ``const THEBE_JS_URL`` is a SyntaxError in the
    browser console (the browser test in ``tests/test_website.py`` checks every page)."""
    for page in html.rglob("*.html"):
        seen: set[str] = set()
        lines = page.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            if _INLINE_SCRIPT.match(line):
                if line.strip() in seen:
                    continue
                seen.add(line.strip())
            kept.append(line)
        if len(kept) != len(lines):
            page.write_text("".join(kept))


def build_book(
    root: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    quiet: bool = True,
    edition: str = "instructor",
    smoke_dir: str | Path | None = None,
) -> Path:
    """Build ``<root>/book`` with ``<root>/_config.yml`` and ``_toc.yml`` using ``-W -n --keep-going --all``; return
    the HTML folder after checking that ``index.html`` and one HTML file per table-of-contents entry exist.

    The instructor edition goes to ``<out_dir>/_build/html`` (``out_dir`` defaults to ``root``), the student edition
    to ``<out_dir>/_build/student/html``. ``smoke_dir`` holds smoke-run notebooks for the runs page.
    """
    if edition not in EDITIONS:
        raise ValueError(f"parameter 'edition' must be one of {list(EDITIONS)}, got {edition!r}")
    root = Path(root) if root is not None else project_root()
    out = Path(out_dir) if out_dir is not None else root
    write_pages(root, Path(smoke_dir) if smoke_dir else None)
    with tempfile.TemporaryDirectory(prefix="mlmc-build-") as tmp:
        tmp = Path(tmp)
        src = _student_source(root, tmp) if edition == "student" else root
        config = tmp / "_config.yml"
        config.write_text(yaml.safe_dump(book_config(root, edition), sort_keys=False, allow_unicode=True))
        build_root = tmp / "out" if edition == "student" else out
        cmd = [_jupyter_book(), "build", str(src / "book"), "--config", str(config), "--toc", str(src / "_toc.yml")]
        cmd += ["--path-output", str(build_root), "-W", "-n", "--keep-going", "--all"]
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode != 0:
            log = (proc.stdout or "") + (proc.stderr or "")
            details = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "rror" in line]
            raise BookBuildFailed(f"jupyter-book build failed (exit {proc.returncode}):\n" + "\n".join(details[-30:]))
        html = build_root / "_build" / "html"
        if edition == "student":
            target = out / "_build" / "student" / "html"
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(html), target)
            html = target
    _dedupe_inline_scripts(html)
    pages = ["index", *toc_files(root / "_toc.yml")]
    missing = [f"{page}.html" for page in pages if not (html / f"{page}.html").is_file()]
    if missing:
        raise BookBuildFailed(f"the build did not write {missing} under {html}")
    return html
