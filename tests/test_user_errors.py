"""Errors name the parameter the user typed (issue 7 §3): every ``mlmc.errors.check_*("name", ...)`` call written in a
chapter notebook names a parameter declared in its parameters cell, so the runner's one-line error and its
``-p name=...`` hint use the name the user can pass."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mlmc.book.params import notebook_parameters
from mlmc.book.runner import _user_error_line

SOURCES = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
_CHECK_CALL = re.compile(r"\bcheck_\w+\(\s*[\"'](\w+)[\"']")


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_checks_in_notebooks_name_declared_parameters(path):
    declared = notebook_parameters(path)
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    named = [name for src in cells for name in _CHECK_CALL.findall(src)]
    assert not [n for n in named if n not in declared], f"{path.stem}: check_* names no parameter of the chapter"


def test_fix_hint_only_for_declared_names():
    declared = {"n_train_per_lang": object()}
    line = _user_error_line("01_x", "cell 3", "ValueError", "parameter 'n_train' must be > 0, got -1", declared)
    assert line == "01_x: cell 3: parameter 'n_train' must be > 0, got -1"
    line = _user_error_line("01_x", "cell 3", "ValueError", "parameter 'n_train_per_lang' must be > 0", declared)
    assert line.endswith("; fix: rerun with -p n_train_per_lang=<allowed value>")
