"""Chapter 02 notebook: the smoke profile runs end to end, and bad parameters fail in the setup cell, before compute."""

from __future__ import annotations

import time

import nbformat
import pytest

from mlmc.book import ChapterFailed, run_chapter


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMC_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "results"


def _outputs(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_smoke_profile_runs_end_to_end(tmp_path, results):
    path = run_chapter("02", profile="smoke", out_dir=tmp_path / "out")
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = _outputs(nb)
    for expected in ["transfer language", "sn_static", "pct_conflict", "protection", "Unstructured"]:
        assert expected in text, expected
    (run_dir,) = (results / "02_subnetworks").iterdir()
    tables = {p.stem for p in run_dir.glob("*.csv")}
    assert {"fewshot_las", "training_language_las", "gradient_conflicts", "ablations", "planted_checks"} <= tables


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"train_langs": ["cs", "klingon"]}, "parameter 'train_langs' has unknown value"),
        ({"ablation_random_off": [3, 99]}, "parameter 'ablation_random_off' must be <= 32"),
        ({"stage2_iters": -3}, "parameter 'stage2_iters' must be >= 1"),
    ],
)
def test_bad_parameters_fail_in_the_setup_cell(tmp_path, results, overrides, match):
    start = time.perf_counter()
    with pytest.raises(ChapterFailed, match=match) as info:
        run_chapter("02", profile="smoke", overrides=overrides, out_dir=tmp_path / "out")
    assert info.value.user_error and "cell" in str(info.value)  # one user-error line naming the setup cell
    assert time.perf_counter() - start < 45
    assert not (tmp_path / "out" / "02_subnetworks.ipynb").exists()
