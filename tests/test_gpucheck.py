"""``mlmc gpu-check`` and the ``gpu`` profile: comparison rule, record, and one clear line without a GPU (issue 14).

The comparison runs here with ``device="cpu"`` standing in for the GPU, on throwaway chapters whose gpu profile
shifts one number by a planted amount: within the tolerance it must pass, beyond it it must fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_runner import PARAMS, write_notebook

from mlmc import cli
from mlmc.book.gpucheck import ATOL, RTOL, compare_tables, gpu_check
from mlmc.book.params import resolve

ROOT = Path(__file__).resolve().parents[1]
GPU_PROFILES = sorted((ROOT / "notebooks" / "params" / "gpu").glob("*.yaml"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_check_without_gpu_is_one_line(capsys):
    assert cli.main(["gpu-check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlmc: gpu-check needs a CUDA GPU"), err


@pytest.mark.parametrize("path", GPU_PROFILES, ids=[p.stem for p in GPU_PROFILES])
def test_gpu_profile_is_smoke_on_cuda(path):
    assert str(yaml.safe_load(path.read_text())["device"]).startswith("cuda")
    smoke, _ = resolve(ROOT / "notebooks" / f"{path.stem}.ipynb", "smoke")
    gpu, _ = resolve(ROOT / "notebooks" / f"{path.stem}.ipynb", "gpu")
    assert gpu["device"].startswith("cuda") and gpu["profile"] == "gpu"
    changed = {k for k in gpu if gpu[k] != smoke[k]} - {"device", "profile"}
    assert changed <= set(yaml.safe_load(path.read_text())), "the gpu profile starts from the smoke profile"


def test_compare_tables_rule():
    cpu = pd.DataFrame({"lang": ["a", "b"], "x": [1.0, np.nan], "n": [10, 20]})
    assert compare_tables(cpu, cpu.copy()) == (True, 0.0)
    near = cpu.assign(x=[1.0 + RTOL + ATOL / 2, np.nan])
    assert compare_tables(cpu, near)[0]
    far = cpu.assign(x=[1.0 + RTOL + 2 * ATOL, np.nan])
    assert not compare_tables(cpu, far)[0]
    assert not compare_tables(cpu, cpu.assign(lang=["a", "c"]))[0]
    assert not compare_tables(cpu, cpu.iloc[:1])[0]
    assert not compare_tables(cpu, cpu.assign(x=[1.0, 0.0]))[0], "a number where the CPU run had NaN"


CELL = (
    "import pandas as pd\nfrom mlmc.book import start_run\n"
    "with start_run(CHAPTER, params={'seed': seed, 'profile': profile, 'device': device}) as run:\n"
    "    run.save_table('t', pd.DataFrame({'lang': ['a', 'b'], 'x': [0.5, 1.0 + shift]}))"
)


def test_gpu_check_compares_cpu_and_device_runs(tmp_path):
    nbs = tmp_path / "notebooks"
    params = PARAMS + "shift: float = 0.0  # planted difference of the gpu run\n"
    for stem, shift in (("01_close", 0.001), ("02_apart", 0.5), ("03_nogpu", None)):
        write_notebook(nbs, stem, [f"CHAPTER = {stem!r}\n" + CELL], params=params)
        (nbs / "params" / "smoke").mkdir(parents=True, exist_ok=True)
        (nbs / "params" / "smoke" / f"{stem}.yaml").write_text("n: 1\n")
        if shift is not None:
            (nbs / "params" / "gpu").mkdir(parents=True, exist_ok=True)
            (nbs / "params" / "gpu" / f"{stem}.yaml").write_text(f"device: cuda\nshift: {shift}\n")
    record = tmp_path / "device_checks.json"
    results = {r.chapter: r for r in gpu_check(device="cpu", notebooks_dir=nbs, record=record, jobs=2)}
    assert results["01_close"].passed, results["01_close"]
    assert not results["02_apart"].passed and "t.csv" in results["02_apart"].note
    assert not results["03_nogpu"].passed and "no gpu profile" in results["03_nogpu"].note
    saved = json.loads(record.read_text())
    assert saved["rtol"] == RTOL and saved["atol"] == ATOL and saved["device"].startswith("cpu")
    assert [c["passed"] for c in saved["chapters"]] == [True, False, False]
