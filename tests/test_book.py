"""The HTML book builds with warnings as errors, and every page of the table of contents is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmc.book import BookBuildFailed, build_book
from mlmc.book.project import toc_files

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.book


def test_book_builds_strict_and_every_chapter_has_html(tmp_path):
    html = build_book(ROOT, out_dir=tmp_path)
    assert html == tmp_path / "_build" / "html"
    pages = toc_files(ROOT / "_toc.yml")
    assert [p for p in pages if p.startswith("chapters/")], "the table of contents lists no chapters"
    for page in ["index", *pages]:
        assert (html / f"{page}.html").stat().st_size > 0, page
    intro = (html / "intro.html").read_text()
    assert "Choenni" in intro and "references.html" in intro, "the intro's citations must link to the references"


def test_warning_fails_the_build(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (tmp_path / "book" / "references.bib").write_text("")
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nSee {doc}`no_such_page`.\n")
    with pytest.raises(BookBuildFailed, match="no_such_page"):
        build_book(tmp_path, out_dir=tmp_path)
