"""Generated book pages (what reproduced, runs), the student edition and the repository setting (issue 14)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest

from mlmc import evidence as ev
from mlmc.book.build import SOLUTION_TAG, book_config, build_book, student_notebook
from mlmc.book.pages import evidence_records, reproduced_page, runs_page, slug
from mlmc.book.params import parse_parameters
from mlmc.book.postprocess import RUN_TABLE_TAG, run_table

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = sorted((ROOT / "book" / "chapters").glob("*.ipynb"))


def _checks() -> list[ev.Check]:
    rng = np.random.default_rng(0)
    good = ev.compare(
        "trained beats shuffled | by a margin",
        rng.normal(1, 0.1, 30),
        rng.normal(0, 0.1, 30),
        control_name="shuffled labels",
    )
    null = ev.compare("no effect here", rng.normal(0, 0.1, 30), rng.normal(0, 0.1, 30), control_name="shuffled")
    return [good, null]


def _evidence_output(checks: list[ev.Check], chapter: str) -> nbformat.NotebookNode:
    records = [{**c.as_dict(), "chapter": chapter} for c in checks]
    data = {"text/plain": ev.table(checks).to_string(), ev.MIME: {"chapter": chapter, "checks": records}}
    return nbformat.v4.new_output("display_data", data=data)


def _chapter(stem: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = nbformat.v4.new_code_cell("ev.show(checks, chapter=...)", execution_count=1)
    code.outputs = [_evidence_output(_checks(), stem)]
    solution = nbformat.v4.new_markdown_cell(
        "```{admonition} Solution\n:class: dropdown\nThe hidden answer is forty-two.\n```",
        metadata={"tags": [SOLUTION_TAG]},
    )
    declared = parse_parameters('seed: int = 0  # random seed\nlangs: list[str] = ["a|b"]  # languages\n')
    table = run_table({"seed": 1, "profile": "smoke"}, declared, runtime_s=1.5, device="cpu", git="abc")
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A tiny chapter\n\nSome text."),
        nbformat.v4.new_markdown_cell(table, metadata={"tags": [RUN_TABLE_TAG]}),
        nbformat.v4.new_markdown_cell("## Planted ground-truth check ({term}`Run id`)"),
        code,
        nbformat.v4.new_markdown_cell("## Exercises\n\n1. Why? (~2 min)"),
        solution,
    ]
    return nb


@pytest.fixture
def tiny_book(tmp_path: Path) -> Path:
    """A book with one executed chapter that embeds evidence records and a solution cell."""
    (tmp_path / "book" / "chapters").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    for name in ("references.bib", "glossary.md", "references.md", "reproducing.md"):
        shutil.copy(ROOT / "book" / name, tmp_path / "book" / name)
    shutil.copytree(ROOT / "book" / "_static", tmp_path / "book" / "_static")
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nThe book.\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - caption: Chapters\n    chapters:\n      - file: chapters/01_tiny\n"
        "  - caption: Using the book\n    chapters:\n      - file: reproduced\n      - file: runs\n"
        "      - file: reproducing\n      - file: glossary\n      - file: references\n"
    )
    nbformat.write(_chapter("01_tiny"), tmp_path / "book" / "chapters" / "01_tiny.ipynb")
    return tmp_path


def test_evidence_records_carry_their_section(tiny_book):
    records = evidence_records(tiny_book / "book" / "chapters" / "01_tiny.ipynb")
    assert [r["claim"] for r in records] == ["trained beats shuffled | by a margin", "no effect here"]
    assert {r["section"] for r in records} == {"Planted ground-truth check (Run id)"}
    assert records[0]["verdict"] == "pass" and records[1]["verdict"] != "pass"


def test_reproduced_page_is_one_table_built_from_the_records(tiny_book):
    page = reproduced_page(tiny_book)
    rows = [line for line in page.splitlines() if line.startswith("| {doc}`chapters/01_tiny`")]
    assert len(rows) == 2
    assert "trained beats shuffled \\| by a margin" in rows[0] and "| **pass** |" in rows[0]
    assert f'<a href="chapters/01_tiny.html#{slug("Planted ground-truth check (Run id)")}">' in rows[0]
    assert "2 planted checks, of which 1 pass" in page or "consistency" in page


def test_no_records_is_said_plainly(tmp_path):
    (tmp_path / "book" / "chapters").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/05_later\n")
    page = reproduced_page(tmp_path)
    assert "No executed chapter records planted-truth checks yet." in page
    assert "{doc}`chapters/05_later` (not written yet)" in page


@pytest.mark.book
def test_tiny_book_builds_with_links_and_student_edition(tiny_book):
    html = build_book(tiny_book)
    page = (html / "reproduced.html").read_text()
    assert "trained beats shuffled | by a margin" in page
    assert f'href="chapters/01_tiny.html#{slug("Planted ground-truth check (Run id)")}"' in page
    chapter = (html / "chapters" / "01_tiny.html").read_text()
    assert "forty-two" in chapter
    assert '<div class="dropdown admonition">\n<p class="admonition-title">Run parameters. Profile' in chapter
    student = build_book(tiny_book, edition="student")
    assert student == tiny_book / "_build" / "student" / "html"
    text = (student / "chapters" / "01_tiny.html").read_text()
    assert "forty-two" not in text and "Exercises" in text and "student edition" in text


@pytest.mark.parametrize("path", EXECUTED, ids=[p.stem for p in EXECUTED])
def test_student_notebook_is_instructor_minus_solution_cells(path):
    nb = nbformat.read(path, as_version=4)
    student = student_notebook(nb)
    keep = [c for c in nb.cells if SOLUTION_TAG not in c.metadata.get("tags", [])]
    assert student.cells == keep and student.metadata == nb.metadata
    assert len(nb.cells) == len(student.cells) + sum(SOLUTION_TAG in c.metadata.get("tags", []) for c in nb.cells)
    assert not any("{admonition} Solution" in c.source for c in student.cells if c.cell_type == "markdown"), (
        "a Solution admonition outside a cell tagged 'solution' would reach the student edition"
    )


def test_runs_page_takes_runtimes_from_papermill_metadata():
    page = runs_page(ROOT)
    for path in EXECUTED:
        nb = nbformat.read(path, as_version=4)
        seconds = nb.metadata.get("mlmc", {}).get("runtime_s", nb.metadata["papermill"]["duration"])
        row = next(line for line in page.splitlines() if f"chapters/{path.stem}`" in line)
        assert f"| {seconds:.0f} s |" in row, row


def test_runs_page_reads_smoke_runs(tmp_path):
    smoke = tmp_path / "smoke"
    smoke.mkdir()
    nb = nbformat.read(EXECUTED[0], as_version=4)
    nb.metadata["mlmc"] = {"profile": "smoke", "runtime_s": 12.3}
    nbformat.write(nb, smoke / EXECUTED[0].name)
    row = next(line for line in runs_page(ROOT, smoke).splitlines() if f"chapters/{EXECUTED[0].stem}`" in line)
    assert "| 12 s |" in row


def test_repository_url_comes_from_one_setting(monkeypatch):
    monkeypatch.delenv("MLMC_REPO_URL", raising=False)
    assert book_config(ROOT)["repository"]["url"] == "https://github.com/mlmc-book/mlmc"
    monkeypatch.setenv("MLMC_REPO_URL", "https://github.com/someone/mlmc-fork/")
    assert book_config(ROOT)["repository"]["url"] == "https://github.com/someone/mlmc-fork"
    monkeypatch.setenv("MLMC_REPO_URL", "https://gitlab.com/someone/mlmc")
    with pytest.raises(ValueError, match="parameter 'MLMC_REPO_URL' must look like https://github.com/OWNER/REPO"):
        book_config(ROOT)
