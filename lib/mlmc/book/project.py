"""Where the book's files are: project root, chapter notebooks, executed chapters, table of contents (all chapters)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

CHAPTER_RE = re.compile(r"^(\d\d)_[a-z0-9_]+$")


def project_root() -> Path:
    """The nearest folder with ``_toc.yml`` at or above the cwd, else the source checkout of this package."""
    checkout = Path(__file__).resolve().parents[3]
    for candidate in (Path.cwd(), *Path.cwd().parents, checkout):
        if (candidate / "_toc.yml").is_file():
            return candidate
    raise FileNotFoundError("cannot find the mlmc project root (a folder with _toc.yml); run from inside the project")


def results_root() -> Path:
    """Root of run results: ``$MLMC_RESULTS`` if set, else ``<project>/results``."""
    env = os.environ.get("MLMC_RESULTS")
    return Path(env) if env else project_root() / "results"


def list_chapters(notebooks_dir: str | Path | None = None) -> list[Path]:
    """Chapter notebooks ``NN_slug.ipynb`` in ``notebooks_dir`` (default ``<project>/notebooks``), sorted by NN."""
    folder = Path(notebooks_dir) if notebooks_dir else project_root() / "notebooks"
    return sorted(p for p in folder.glob("*.ipynb") if CHAPTER_RE.match(p.stem))


def find_notebook(chapter: str, notebooks_dir: str | Path | None = None) -> Path:
    """The notebook of ``chapter``, given as ``NN`` or ``NN_slug``; raise naming the available chapters otherwise."""
    chapters = list_chapters(notebooks_dir)
    key = chapter.strip()
    key = key.zfill(2) if key.isdigit() else key
    hits = [p for p in chapters if key in (p.stem, p.stem[:2])]
    if len(hits) != 1:
        allowed = [p.stem for p in chapters]
        raise ValueError(f"parameter 'chapter' must be NN or NN_slug of one of {allowed}, got {chapter!r}")
    return hits[0]


def toc_files(toc: str | Path | None = None) -> list[str]:
    """Every ``file`` entry of ``_toc.yml`` (root first), as paths relative to ``book/`` without suffix."""
    data = yaml.safe_load(Path(toc or project_root() / "_toc.yml").read_text())
    files = [data["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key, []))

    walk([data])
    return files
