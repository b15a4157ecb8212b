"""Running a chapter's independent, seeded jobs: in this process, in a local process pool, or through a scheduler
with submitit (SLURM, or submitit's local executor where there is none). Used by the chapter drivers that split
their work into jobs (chapter 01's fine-tune-and-trace runs; any driver with a ``run_job(job)`` function).

A job is a frozen dataclass (hashable, picklable) and ``fn`` a module-level function, so every backend can ship
both to another process. Results are identical whatever the backend because each job seeds itself. With a result
folder, each finished job's result is stored under a key made of the job's parameters, the function's name and a
hash of the package's source, so a rerun (after a crash, a pre-emption or a cancelled array) only runs what is
missing; a change to the code invalidates every stored result.

The backend is chosen by :class:`Executor` (or the ``MLMC_EXECUTOR`` family of environment variables that
``mlmc run --executor`` sets, see :func:`from_env`). Failures are reported, not retried by hand: a failed job
raises :class:`JobError` naming the job and, for submitit backends, its log files; submitit's own requeueing of
timed-out or pre-empted jobs applies (``max_num_timeout``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import pickle
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from mlmc.errors import check_choice, check_int, check_positive
from mlmc.utils import set_threads, stable_hash

BACKENDS = ("inline", "pool", "local", "slurm")
ENV = {
    "backend": "MLMC_EXECUTOR",
    "workers": "MLMC_WORKERS",
    "folder": "MLMC_JOB_DIR",
    "partition": "MLMC_SLURM_PARTITION",
    "timeout_min": "MLMC_SLURM_TIMEOUT_MIN",
    "gpus_per_node": "MLMC_SLURM_GPUS",
    "cpus_per_task": "MLMC_SLURM_CPUS",
    "mem_gb": "MLMC_SLURM_MEM_GB",
}

J = TypeVar("J")
R = TypeVar("R")


class JobError(RuntimeError):
    """A job failed; the message names the job, the backend and where its log is."""


@dataclass(frozen=True)
class Executor:
    """Where jobs run. ``backend``: ``inline`` (this process), ``pool`` (``workers`` spawned processes, one torch
    thread each), ``local`` (submitit's local executor: one process per job, as on a cluster) or ``slurm``.
    ``folder`` keeps finished results (and submitit's logs); it is required for the submitit backends. The other
    fields are SLURM resources, passed to submitit as ``slurm_*`` parameters."""

    backend: str = "pool"
    workers: int = 1
    folder: Path | None = None
    partition: str | None = None
    timeout_min: int = 60
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("executor", self.backend, BACKENDS)
        check_int("workers", self.workers, 1)
        check_int("timeout_min", self.timeout_min, 1)
        check_int("gpus_per_node", self.gpus_per_node, 0)
        check_int("cpus_per_task", self.cpus_per_task, 1)
        if self.mem_gb is not None:
            check_positive("mem_gb", self.mem_gb)
        if self.backend in ("local", "slurm") and self.folder is None:
            raise ValueError(f"executor {self.backend!r} needs a job folder: set {ENV['folder']} or pass folder=")
        if self.folder is not None:
            object.__setattr__(self, "folder", Path(self.folder))


def from_env(workers: int = 1, environ: dict[str, str] | None = None) -> Executor:
    """The executor that the ``MLMC_EXECUTOR`` variables describe (``mlmc run --executor slurm --partition gpu``
    sets them for the chapter's kernel); ``pool`` with ``workers`` when none is set. A submitit backend without
    ``MLMC_JOB_DIR`` keeps its files in ``$MLMC_CACHE/jobs``."""
    env = os.environ if environ is None else environ
    backend = env.get(ENV["backend"], "pool")
    folder = env.get(ENV["folder"]) or None
    if folder is None and backend in ("local", "slurm"):
        folder = str(Path(env.get("MLMC_CACHE", Path.home() / ".cache" / "mlmc")) / "jobs")

    def number(key: str, default: Any, cast: Callable[[str], Any]) -> Any:
        raw = env.get(ENV[key])
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise ValueError(f"{ENV[key]} must be a number, got {raw!r}") from None

    return Executor(
        backend=backend,
        workers=number("workers", workers, int),
        folder=folder,
        partition=env.get(ENV["partition"]) or None,
        timeout_min=number("timeout_min", 60, int),
        gpus_per_node=number("gpus_per_node", 0, int),
        cpus_per_task=number("cpus_per_task", 1, int),
        mem_gb=number("mem_gb", None, float),
    )


@functools.cache
def source_hash() -> str:
    """Hash of every module of the installed ``mlmc`` package: stored results are only reused by the same code."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def job_key(fn: Callable[..., Any], job: Any) -> str:
    """Key of one job's result: its function, its parameters and the package's source."""
    return stable_hash({"fn": f"{fn.__module__}.{fn.__qualname__}", "job": job, "source": source_hash()})


def _load(path: Path) -> tuple[bool, Any]:
    try:
        with path.open("rb") as f:
            return True, pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return False, None


def _store(path: Path, result: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _worker_init() -> None:
    """One torch thread per worker; Ctrl-C goes to the parent, which then stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = "1"
    set_threads(1)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, kept for later calls (starting one costs seconds of imports)."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init)
        atexit.register(shutdown_pools)
    return _POOLS[workers]


def shutdown_pools(kill: bool = False) -> None:
    """Stop every kept pool; with ``kill`` its workers are terminated at once (after a failure or an interrupt)."""
    for workers, pool in list(_POOLS.items()):
        processes = list(getattr(pool, "_processes", {}).values()) if kill else []
        for p in processes:
            p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        for p in processes:
            p.join(timeout=5)
        del _POOLS[workers]


def _describe(job: Any) -> str:
    return str(getattr(job, "name", "") or job)


def _run_pool(fn: Callable[[J], R], todo: list[tuple[int, J]], workers: int) -> Iterator[tuple[int, R]]:
    try:
        futures = {_pool(workers).submit(fn, job): (i, job) for i, job in todo}
        for fut in as_completed(futures):
            i, job = futures[fut]
            try:
                yield i, fut.result()
            except Exception as e:
                raise JobError(f"job {_describe(job)!r} failed in a pool worker: {type(e).__name__}: {e}") from e
    except BaseException:
        shutdown_pools(kill=True)
        raise


def _submitit_executor(spec: Executor) -> Any:
    import submitit

    folder = Path(spec.folder) / "submitit" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if spec.backend == "local" else "slurm")
    params: dict[str, Any] = {"timeout_min": spec.timeout_min, "cpus_per_task": spec.cpus_per_task}
    if spec.backend == "slurm":
        params.update(
            slurm_partition=spec.partition,
            slurm_gpus_per_node=spec.gpus_per_node or None,
            slurm_mem=f"{spec.mem_gb}G" if spec.mem_gb else None,
        )
        params = {k: v for k, v in params.items() if v is not None}
    elif spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    ex.update_parameters(**params, **spec.extra)
    return ex


def _run_submitit(fn: Callable[[J], R], todo: list[tuple[int, J]], spec: Executor) -> Iterator[tuple[int, R]]:
    import submitit

    ex = _submitit_executor(spec)
    submitted = ex.map_array(fn, [job for _, job in todo])
    try:
        for (i, job), sjob in zip(todo, submitted, strict=True):
            try:
                yield i, sjob.result()
            except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
                last = str(e).strip().splitlines()[-1:] or [""]
                raise JobError(
                    f"job {_describe(job)!r} failed on {spec.backend} (id {sjob.job_id}): {last[0]}; "
                    f"log: {sjob.paths.stderr}"
                ) from None
    except BaseException:
        for sjob in submitted:
            if not sjob.done():
                sjob.cancel(check=False)
        raise


def run(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    executor: Executor | None = None,
    *,
    progress: bool = True,
    desc: str = "jobs",
) -> list[R]:
    """``[fn(job) for job in jobs]``, run on ``executor`` (default: :func:`from_env`), in the order of ``jobs``.

    With ``executor.folder`` set, results already stored for the same key (:func:`job_key`) are loaded instead of
    recomputed, and each new result is stored as soon as it arrives.
    """
    spec = executor or from_env()
    results: dict[int, R] = {}
    store = Path(spec.folder) / "results" if spec.folder is not None else None
    todo: list[tuple[int, J]] = []
    for i, job in enumerate(jobs):
        if store is not None:
            found, value = _load(store / f"{job_key(fn, job)}.pkl")
            if found:
                results[i] = value
                continue
        todo.append((i, job))
    bar = tqdm(total=len(jobs), initial=len(results), desc=desc, disable=not progress)
    if spec.backend == "inline" or (spec.backend == "pool" and (spec.workers == 1 or len(todo) <= 1)):
        stream: Iterator[tuple[int, R]] = ((i, fn(job)) for i, job in todo)
    elif spec.backend == "pool":
        stream = _run_pool(fn, todo, spec.workers)
    else:
        stream = _run_submitit(fn, todo, spec) if todo else iter(())
    try:
        for i, value in stream:
            results[i] = value
            if store is not None:
                _store(store / f"{job_key(fn, jobs[i])}.pkl", value)
            bar.update()
    finally:
        bar.close()
    return [results[i] for i in range(len(jobs))]
