"""The CI budget (issue 14): ``make test`` on a fresh clone must stay within 45 minutes on the project's 2-core machine
while nbval re-executes every committed chapter, so the committed chapters' default runtimes are capped.

nbval takes about as long as the run recorded in each executed chapter (papermill's ``duration``, or the runner's
``metadata.mlmc.runtime_s``). The caps: each chapter's default run at most ``PER_CHAPTER_S`` (the 4-minute budget of
a chapter plus a quarter for a loaded machine), and all chapters together at most ``NBVAL_S``, which leaves 15
minutes of the 45 for the install, the zoo build and every other test. A chapter over its cap fails here, in the
chapter's own branch, before it makes CI slow for everyone.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "book" / "chapters").glob("*.ipynb"))
PER_CHAPTER_S = 300
NBVAL_S = 30 * 60


def runtime_s(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    return float(nb.metadata.get("mlmc", {}).get("runtime_s") or nb.metadata["papermill"]["duration"])


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_default_run_fits_its_budget(path):
    assert runtime_s(path) <= PER_CHAPTER_S, (
        f"{path.stem}: its default run took {runtime_s(path):.0f} s; nbval re-executes it in every CI run, so keep "
        f"it under {PER_CHAPTER_S} s (smaller default sizes; the full sizes belong in the full profile)"
    )


def test_all_chapters_fit_the_nbval_budget():
    total = sum(runtime_s(p) for p in CHAPTERS)
    assert total <= NBVAL_S, f"the committed chapters take {total / 60:.1f} min together, over {NBVAL_S / 60:.0f} min"
