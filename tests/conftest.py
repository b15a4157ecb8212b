"""Shared pytest setup: one torch thread, results and cache in temp folders, and the ``book`` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "book: builds the HTML book with jupyter-book (deselect with -m 'not book')")


@pytest.fixture(autouse=True, scope="session")
def _results_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs started by tests write under a temp folder, never into the project's ``results/``."""
    root = tmp_path_factory.mktemp("results")
    old = os.environ.get("MLMC_RESULTS")
    os.environ["MLMC_RESULTS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MLMC_RESULTS", None)
    else:
        os.environ["MLMC_RESULTS"] = old


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$MLMC_CACHE`` for tests that must build models from scratch."""
    cache = tmp_path / "mlmc-cache"
    monkeypatch.setenv("MLMC_CACHE", str(cache))
    return cache


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; skips the test when it is absent (as on a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data samples not found at {SHARED_DATA}")
    return SHARED_DATA
