"""Notebook contract: the rules every chapter source and every executed chapter follows (see book/reproducing.md)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mlmc.book.params import notebook_parameters, parameters_cell, profile_path, resolve
from mlmc.book.postprocess import HIDE_TAG, RUN_TABLE_TAG
from mlmc.book.project import toc_files

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = ROOT / "book" / "chapters"
EXPECTED = [
    "00_world",
    "01_data_sharing",
    "02_subnetworks",
    "03_modularity",
    "04_stereotypes",
    "05_cultural_shifts",
    "06_self_alignment",
    "07_debiasing",
]
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXECUTED = sorted(CHAPTERS.glob("*.ipynb"))
TOC_CHAPTERS = [f.split("/", 1)[1] for f in toc_files(ROOT / "_toc.yml") if f.startswith("chapters/")]


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_toc_lists_every_chapter_once_with_one_page_each():
    assert TOC_CHAPTERS == EXPECTED
    for stem in TOC_CHAPTERS:
        pages = [p.name for p in (CHAPTERS / f"{stem}.md", CHAPTERS / f"{stem}.ipynb") if p.exists()]
        assert len(pages) == 1, f"chapter {stem} needs exactly one page (placeholder .md or executed .ipynb): {pages}"


def test_profile_files_belong_to_a_chapter():
    stems = {p.stem for p in SOURCES}
    for path in sorted((NOTEBOOKS / "params").glob("*/*.yaml")):
        assert path.parent.name in ("smoke", "full", "gpu"), f"{path}: profiles are 'smoke', 'full' and 'gpu' only"
        assert path.stem in stems, f"{path} has no notebook notebooks/{path.stem}.ipynb"


def test_there_are_chapter_sources_or_none_yet():
    if not SOURCES:
        pytest.skip("no chapter notebooks under notebooks/ yet")
    assert all(p.stem in EXPECTED for p in SOURCES), f"unexpected chapter names: {ids(SOURCES)} vs {EXPECTED}"


@pytest.mark.parametrize("path", SOURCES, ids=ids(SOURCES))
def test_source_parameters_cell(path):
    assert re.fullmatch(r"0[0-7]_[a-z0-9_]+", path.stem), "name must be NN_slug with NN in 00..07"
    # one parameters cell; every line annotated, with '# help' and a literal default; seed, device and profile declared
    params = notebook_parameters(path)
    assert all(p.help for p in params.values())


@pytest.mark.parametrize("path", SOURCES, ids=ids(SOURCES))
@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_source_profiles_exist_and_check(path, profile):
    assert profile_path(path, profile).exists(), f"missing {profile_path(path, profile).relative_to(ROOT)}"
    values, declared = resolve(path, profile)  # every key declared, every value of the declared type
    assert set(values) == set(declared)


@pytest.mark.parametrize("path", SOURCES, ids=ids(SOURCES))
def test_source_outputs_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has outputs: strip them"
        assert "injected-parameters" not in cell.metadata.get("tags", []), f"cell {i} was injected by papermill"
    assert "papermill" not in nb.metadata, "commit the source, not an executed copy"


@pytest.mark.parametrize("path", EXECUTED, ids=ids(EXECUTED))
def test_executed_chapter(path):
    assert (NOTEBOOKS / path.name).exists(), f"{path.name} has no source notebooks/{path.name}"
    nb = nbformat.read(path, as_version=4)
    assert not nb.metadata.get("papermill", {}).get("exception"), "written by a failed papermill run"
    index, _ = parameters_cell(nb)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert "injected-parameters" in tags[index + 1] and HIDE_TAG in tags[index + 1], "run it with `mlmc run`"
    assert RUN_TABLE_TAG in tags[index + 2], "the run-parameters table must follow the parameters"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell must have been executed"
