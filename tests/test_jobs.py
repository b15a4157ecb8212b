"""mlmc.jobs: the same results on every backend, stored results reused, failures reported, pools stopped."""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlmc import jobs

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Toy:
    name: str
    seed: int
    fail: bool = False
    log: str = ""


def toy_job(job: Toy) -> dict:
    """A seeded job that records each execution in ``job.log`` (to count recomputations)."""
    import numpy as np

    if job.log:
        with open(job.log, "a") as f:
            f.write(f"{job.name}\n")
    if job.fail:
        raise ValueError(f"planned failure of {job.name}")
    return {"name": job.name, "value": float(np.random.default_rng(job.seed).normal())}


@pytest.fixture
def importable(monkeypatch):
    """Subprocesses (pool workers, submitit jobs) import this module by name."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HERE))


def _jobs(log=""):
    return [Toy(f"j{i}", seed=i, log=log) for i in range(4)]


def test_backends_give_identical_results(tmp_path, importable):
    expected = jobs.run(toy_job, _jobs(), jobs.Executor("inline"), progress=False)
    assert [r["name"] for r in expected] == ["j0", "j1", "j2", "j3"]
    pool = jobs.run(toy_job, _jobs(), jobs.Executor("pool", workers=2), progress=False)
    local = jobs.run(toy_job, _jobs(), jobs.Executor("local", folder=tmp_path), progress=False)
    assert pool == expected and local == expected
    jobs.shutdown_pools()


def test_finished_jobs_are_not_recomputed(tmp_path):
    log = tmp_path / "log.txt"
    spec = jobs.Executor("inline", folder=tmp_path / "store")
    first = jobs.run(toy_job, _jobs(str(log)), spec, progress=False)
    assert log.read_text().split() == ["j0", "j1", "j2", "j3"]
    more = _jobs(str(log)) + [Toy("j9", seed=9, log=str(log))]
    second = jobs.run(toy_job, more, spec, progress=False)
    assert second[:4] == first and log.read_text().split() == ["j0", "j1", "j2", "j3", "j9"]
    # another seed is another job
    assert jobs.job_key(toy_job, Toy("j0", 0)) != jobs.job_key(toy_job, Toy("j0", 1))


def test_a_failed_job_is_reported_with_its_name(tmp_path, importable):
    bad = [Toy("ok", 0), Toy("broken", 1, fail=True)]
    with pytest.raises(ValueError, match="planned failure of broken"):
        jobs.run(toy_job, bad, jobs.Executor("inline"), progress=False)
    with pytest.raises(jobs.JobError, match="'broken' failed in a pool worker"):
        jobs.run(toy_job, bad, jobs.Executor("pool", workers=2), progress=False)
    assert jobs._POOLS == {}  # the pool was stopped, its workers terminated
    with pytest.raises(jobs.JobError, match=r"'broken' failed on local .*log: "):
        jobs.run(toy_job, bad, jobs.Executor("local", folder=tmp_path), progress=False)
    # what finished before the failure is kept; the failed job is not
    stored = list((tmp_path / "results").glob("*.pkl"))
    assert len(stored) == 1


def test_from_env_and_bad_settings():
    assert jobs.from_env(workers=3, environ={}) == jobs.Executor("pool", workers=3)
    spec = jobs.from_env(environ={"MLMC_EXECUTOR": "slurm", "MLMC_SLURM_PARTITION": "gpu", "MLMC_CACHE": "/c"})
    assert spec.backend == "slurm" and spec.partition == "gpu" and spec.folder == Path("/c/jobs")
    with pytest.raises(ValueError, match="parameter 'executor' must be one of"):
        jobs.Executor("kubernetes")
    with pytest.raises(ValueError, match="MLMC_SLURM_GPUS must be a number"):
        jobs.from_env(environ={"MLMC_SLURM_GPUS": "two"})
    with pytest.raises(ValueError, match="needs a job folder"):
        jobs.Executor("local")


def test_source_hash_changes_the_key(monkeypatch):
    key = jobs.job_key(toy_job, Toy("a", 0))
    monkeypatch.setattr(jobs, "source_hash", lambda: "other")
    assert jobs.job_key(toy_job, Toy("a", 0)) != key


@pytest.mark.skipif(shutil.which("sinfo") is None, reason="no SLURM client on this machine")
def test_slurm_backend_matches_inline(tmp_path, importable):
    """Runs only where a SLURM cluster answers (CI starts a single-node one: .ci/slurm.sh)."""
    up = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30)
    if up.returncode != 0 or "up" not in up.stdout:
        if os.environ.get("CI"):
            pytest.fail(f"CI expects a SLURM cluster (.ci/slurm.sh), sinfo says: {up.stdout}{up.stderr}")
        pytest.skip("no SLURM cluster answers")
    spec = jobs.Executor("slurm", folder=tmp_path, timeout_min=5)
    t = time.time()
    out = jobs.run(toy_job, _jobs(), spec, progress=False)
    assert out == jobs.run(toy_job, _jobs(), jobs.Executor("inline"), progress=False)
    assert time.time() - t < 300


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    up = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30)
    return up.returncode == 0 and "up" in up.stdout


def test_chapter_01_smoke_through_slurm_matches_the_local_run(tmp_path):
    """The smoke profile of chapter 01 with its jobs on SLURM gives the same tables as with the jobs in-process."""
    if not _slurm_up():
        if os.environ.get("CI"):
            pytest.fail("CI expects a SLURM cluster (.ci/slurm.sh)")
        pytest.skip("no SLURM cluster answers")
    import sys

    outputs = {}
    for backend in ("inline", "slurm"):
        env = {**os.environ, "MLMC_RESULTS": str(tmp_path / backend / "results")}
        cmd = [
            sys.executable,
            "-m",
            "mlmc.cli",
            "run",
            "01",
            "--profile",
            "smoke",
            "--out",
            str(tmp_path / backend),
            "--executor",
            backend,
            "--job-dir",
            str(tmp_path / backend / "jobs"),
            "--timeout-min",
            "10",
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        root = tmp_path / backend / "results"
        outputs[backend] = {p.relative_to(root): p.read_bytes() for p in root.rglob("*.csv") if "timing" not in p.name}
    assert len(outputs["inline"]) >= 5 and outputs["inline"].keys() == outputs["slurm"].keys()
    for name, data in outputs["inline"].items():
        assert outputs["slurm"][name] == data, name
    # the SLURM run really went through the scheduler: submitit wrote its job logs there
    assert list((tmp_path / "slurm" / "jobs" / "submitit").glob("*/*_log.out"))
