"""Build the HTML book with Jupyter Book 1.x, warnings as errors, and check every page in ``_toc.yml`` was written.

The build never executes code (``execute_notebooks: "off"``): it renders the committed ``book/chapters/*.ipynb``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mlmc.book.project import project_root, toc_files


class BookBuildFailed(RuntimeError):
    """``jupyter-book build`` failed (a warning under ``-W`` counts), or a page of the table of contents is missing."""


def _jupyter_book() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if not found:
        raise BookBuildFailed("jupyter-book is not installed; run `make setup`")
    return found


def build_book(root: str | Path | None = None, out_dir: str | Path | None = None, *, quiet: bool = True) -> Path:
    """Build ``<root>/book`` with ``<root>/_config.yml`` and ``_toc.yml`` into ``<out_dir>/_build/html`` (``out_dir``
    defaults to ``root``) using ``-W -n --keep-going --all``; return the HTML folder after checking that
    ``index.html`` and one HTML file per table-of-contents entry exist."""
    root = Path(root) if root is not None else project_root()
    out = Path(out_dir) if out_dir is not None else root
    cmd = [
        _jupyter_book(),
        "build",
        str(root / "book"),
        "--config",
        str(root / "_config.yml"),
        "--toc",
        str(root / "_toc.yml"),
        "--path-output",
        str(out),
        "-W",
        "-n",
        "--keep-going",
        "--all",
    ]
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode != 0:
        log = (proc.stdout or "") + (proc.stderr or "")
        details = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "rror" in line]
        raise BookBuildFailed(f"jupyter-book build failed (exit {proc.returncode}):\n" + "\n".join(details[-30:]))
    html = out / "_build" / "html"
    pages = ["index", *toc_files(root / "_toc.yml")]
    missing = [f"{page}.html" for page in pages if not (html / f"{page}.html").is_file()]
    if missing:
        raise BookBuildFailed(f"the build did not write {missing} under {html}")
    return html
