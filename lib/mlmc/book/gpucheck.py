"""``mlmc gpu-check``: every chapter's smoke path on a GPU, compared with the same smoke run on the CPU (every chapter).

A chapter takes part when it has ``notebooks/params/gpu/NN_slug.yaml`` (the ``gpu`` profile: its smoke profile plus
``device: cuda``). For each one the check runs ``mlmc run NN --profile smoke`` on the CPU and ``mlmc run NN --profile
gpu`` on the GPU, each into its own temp results root, then compares

- every saved table (``results/<chapter>/<run-id>/*.csv``): same files, columns and shape; every number within
  ``|gpu - cpu| <= ATOL + RTOL * |cpu|``; every other cell equal;
- the evidence verdicts that the chapter embeds (``mlmc.evidence.show``): equal for every claim.

The CPU runs go in parallel (``jobs``) while the GPU runs go one after another, so the whole check fits in
``BUDGET_S``. The outcome is written to ``book/device_checks.json``, which the book's runs page shows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlmc.book.pages import DEVICE_CHECKS, evidence_records
from mlmc.book.params import profile_path
from mlmc.book.project import list_chapters, project_root
from mlmc.book.provenance import git_sha

RTOL = 0.05
ATOL = 0.02
BUDGET_S = 600


class NoGPU(RuntimeError):
    """No CUDA device is visible to torch."""


@dataclass
class ChapterCheck:
    """The outcome for one chapter."""

    chapter: str
    passed: bool
    cpu_s: float | None = None
    gpu_s: float | None = None
    max_diff: str = "–"
    note: str = ""


def _run(stem: str, profile: str, device: str | None, work: Path, notebooks: Path | None) -> tuple[bool, float, str]:
    """``mlmc run`` one chapter in a subprocess into ``work``; return (ok, seconds, last error line)."""
    cmd = [sys.executable, "-m", "mlmc.cli", "run", stem, "--profile", profile, "--out", str(work / "chapters")]
    cmd += ["-p", f"device={device}"] if device else []
    cmd += ["--notebooks", str(notebooks)] if notebooks else []
    env = {**os.environ, "MLMC_RESULTS": str(work / "results")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the runner stops the chapter's kernel and workers before it exits
        proc.communicate(timeout=60)
        return False, time.perf_counter() - start, f"mlmc: {stem} ran past the {BUDGET_S} s budget of the check"
    lines = [line for line in err.splitlines() if line.startswith("mlmc:")] or err.splitlines()[-1:]
    return proc.returncode == 0, time.perf_counter() - start, (lines[0] if lines else "")


def _tables(results: Path, stem: str) -> dict[str, Path]:
    """The CSV files of every run of ``stem`` under ``results``, keyed by file name (run ids differ by profile)."""
    out: dict[str, Path] = {}
    for path in sorted((results / stem).glob("*/*.csv")):
        key, n = path.name, 1
        while key in out:
            n += 1
            key = f"{path.name}#{n}"
        out[key] = path
    return out


def compare_tables(cpu: pd.DataFrame, gpu: pd.DataFrame, rtol: float = RTOL, atol: float = ATOL) -> tuple[bool, float]:
    """(agree, largest excess |gpu - cpu| - rtol * |cpu|): same columns and shape, numbers within tolerance, other
    cells equal."""
    if list(cpu.columns) != list(gpu.columns) or cpu.shape != gpu.shape:
        return False, float("inf")
    worst = 0.0
    for col in cpu.columns:
        a, b = cpu[col], gpu[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(float), b.to_numpy(float)
            both_nan = np.isnan(x) & np.isnan(y)
            excess = np.where(both_nan, 0.0, np.abs(y - x) - rtol * np.abs(x))
            excess = np.nan_to_num(excess, nan=np.inf)
            worst = max(worst, float(excess.max(initial=0.0)))
        elif not a.astype(str).equals(b.astype(str)):
            return False, float("inf")
    return worst <= atol, worst


def compare_chapter(stem: str, cpu: Path, gpu: Path) -> tuple[bool, str, str]:
    """Compare the tables and evidence verdicts of one chapter's CPU and GPU runs: (agree, largest excess, note)."""
    cpu_tables, gpu_tables = _tables(cpu / "results", stem), _tables(gpu / "results", stem)
    if set(cpu_tables) != set(gpu_tables):
        return False, "–", f"different tables: {sorted(set(cpu_tables) ^ set(gpu_tables))}"
    worst, bad = 0.0, []
    for name in sorted(cpu_tables):
        ok, excess = compare_tables(pd.read_csv(cpu_tables[name]), pd.read_csv(gpu_tables[name]))
        worst = max(worst, excess)
        if not ok:
            bad.append(name)
    verdicts = [
        {r["claim"]: r["verdict"] for r in evidence_records(folder / "chapters" / f"{stem}.ipynb")}
        for folder in (cpu, gpu)
    ]
    flipped = sorted(c for c in verdicts[0] if verdicts[1].get(c) != verdicts[0][c])
    note = (
        ", ".join([f"tables beyond tolerance: {bad}"] * bool(bad) + [f"verdicts differ: {flipped}"] * bool(flipped))
        or f"{len(cpu_tables)} tables, {len(verdicts[0])} verdicts agree"
    )
    return not bad and not flipped, f"{worst:.3g}", note


def gpu_check(
    chapters: list[str] | None = None,
    *,
    device: str = "cuda",
    notebooks_dir: str | Path | None = None,
    record: str | Path | None = None,
    jobs: int = 4,
) -> list[ChapterCheck]:
    """Run the check for ``chapters`` (default: every chapter with a gpu profile); write ``record`` (default
    ``book/device_checks.json``) and return the outcomes. ``device`` other than cuda is for tests of the comparison.
    Raises ``NoGPU`` before running anything when ``device`` is cuda and torch sees no GPU."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPU(
            f"gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none; run `make gpu-check` on a machine "
            "with one (the CPU smoke runs are `make smoke`)"
        )
    sources = list_chapters(notebooks_dir)
    with_gpu = [p for p in sources if profile_path(p, "gpu").exists()]
    selected = [p for p in with_gpu if not chapters or p.stem in chapters or p.stem[:2] in chapters]
    notebooks = Path(notebooks_dir) if notebooks_dir else None
    results = []
    with tempfile.TemporaryDirectory(prefix="mlmc-gpu-check-") as tmp:
        tmp = Path(tmp)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            cpu_runs = {p.stem: pool.submit(_run, p.stem, "smoke", "cpu", tmp / "cpu", notebooks) for p in selected}
            gpu_runs = {p.stem: _run(p.stem, "gpu", device, tmp / "gpu", notebooks) for p in selected}
            cpu_done = {stem: future.result() for stem, future in cpu_runs.items()}
        for path in selected:
            (cpu_ok, cpu_s, cpu_err), (gpu_ok, gpu_s, gpu_err) = cpu_done[path.stem], gpu_runs[path.stem]
            check = ChapterCheck(path.stem, False, round(cpu_s, 1), round(gpu_s, 1))
            if not (cpu_ok and gpu_ok):
                check.note = f"run failed: {gpu_err if not gpu_ok else cpu_err}"
            else:
                check.passed, check.max_diff, check.note = compare_chapter(path.stem, tmp / "cpu", tmp / "gpu")
            results.append(check)
    missing = [p.stem for p in sources if p not in with_gpu]
    results += [ChapterCheck(stem, False, note="no gpu profile (notebooks/params/gpu/)") for stem in missing]
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    out = Path(record) if record else project_root() / "book" / DEVICE_CHECKS
    out.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "device": f"{device} ({name})",
                "git": git_sha(),
                "rtol": RTOL,
                "atol": ATOL,
                "chapters": [asdict(c) for c in results],
            },
            indent=2,
        )
        + "\n"
    )
    return results
