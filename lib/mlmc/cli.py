"""The ``mlmc`` command: run chapters, build the book, list chapters (see ``book/reproducing.md``).

``mlmc run NN|NN_slug|all [--profile default|smoke|full|gpu] [-p key=value ...] [--out DIR] [--executor slurm
--partition gpu ...]``,
``mlmc build [--out DIR] [--edition instructor|student] [--smoke-dir DIR]``, ``mlmc gpu-check [NN ...]``, ``mlmc list``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from mlmc import jobs
from mlmc.book import (
    PROFILES,
    BookBuildFailed,
    ChapterFailed,
    build_book,
    find_notebook,
    list_chapters,
    project_root,
    run_chapter,
)
from mlmc.book.build import EDITIONS
from mlmc.book.gpucheck import ATOL, BUDGET_S, RTOL, NoGPU, gpu_check
from mlmc.book.params import parse_overrides, resolve
from mlmc.book.project import toc_files
from mlmc.errors import check_device


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmc", description="Run and build the mlmc executable book.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute chapter notebooks with papermill into book/chapters/")
    run.add_argument("chapter", help="chapter number NN, its NN_slug, or 'all'")
    run.add_argument("--profile", default="default", choices=PROFILES, help="parameter profile (default: default)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override, YAML value")
    run.add_argument("--out", type=Path, help="folder for executed notebooks (default: book/chapters)")
    run.add_argument("--notebooks", type=Path, help="folder of chapter sources (default: notebooks)")
    jobs_ = run.add_argument_group("job execution (chapters that split their work into jobs; see mlmc.jobs)")
    jobs_.add_argument("--executor", choices=jobs.BACKENDS, help="inline | pool (default) | local | slurm (submitit)")
    jobs_.add_argument("--job-dir", help="folder for stored job results and submitit logs (reruns skip finished jobs)")
    jobs_.add_argument("--partition", help="SLURM partition")
    jobs_.add_argument("--timeout-min", help="SLURM time limit per job in minutes (default: 60)")
    jobs_.add_argument("--gpus", help="GPUs per SLURM job (default: 0)")
    jobs_.add_argument("--cpus", help="CPUs per SLURM job (default: 1)")
    jobs_.add_argument("--mem-gb", help="memory per SLURM job in GB")
    build = sub.add_parser("build", help="build the HTML book (-W -n) from the executed chapters")
    build.add_argument("--out", type=Path, help="output root; the HTML goes to OUT/_build/html (default: project)")
    build.add_argument(
        "--edition", default="instructor", choices=EDITIONS, help="student: without solution cells, _build/student/html"
    )
    build.add_argument("--smoke-dir", type=Path, help="smoke-run notebooks whose runtimes the runs page shows")
    gpu = sub.add_parser(
        "gpu-check", help="every chapter's smoke path on cuda vs the CPU smoke run (book/device_checks.json)"
    )
    gpu.add_argument("chapters", nargs="*", help="chapter numbers or slugs (default: every chapter with a gpu profile)")
    gpu.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    gpu.add_argument("--jobs", type=int, default=4, help="CPU smoke runs at a time (default: 4)")
    sub.add_parser("list", help="list chapters and whether each is executed or still a placeholder")
    return parser


_JOB_FLAGS = {
    "executor": "backend",
    "job_dir": "folder",
    "partition": "partition",
    "timeout_min": "timeout_min",
    "gpus": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem_gb": "mem_gb",
}


def _job_environment(args: argparse.Namespace) -> None:
    """Pass the job-execution flags to the chapter's kernel as ``MLMC_EXECUTOR`` etc., checked before any run."""
    for flag, key in _JOB_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[jobs.ENV[key]] = str(value)
    try:
        jobs.from_env()
    except ValueError as err:  # name the flag the user typed, not the variable it sets
        message = str(err)
        for flag, key in _JOB_FLAGS.items():
            if getattr(args, flag) is not None:
                message = message.replace(jobs.ENV[key], "--" + flag.replace("_", "-"))
        raise ValueError(message) from None


def _run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.param)
    _job_environment(args)
    if args.chapter == "all":
        notebooks = list_chapters(args.notebooks)
        if not notebooks:
            print(f"no chapter notebooks under {args.notebooks or project_root() / 'notebooks'}; nothing to run")
            return 0
    else:
        notebooks = [find_notebook(args.chapter, args.notebooks)]
    for nb in notebooks:  # check every chapter's parameters, the device included, before running any of them
        values, _ = resolve(nb, args.profile, overrides)
        check_device("device", values["device"])
    for nb in notebooks:
        start = time.perf_counter()
        print(f"[{nb.stem}] running with the {args.profile} profile ...", flush=True)
        out = run_chapter(nb, args.profile, overrides, out_dir=args.out, progress=sys.stderr.isatty())
        print(f"[{nb.stem}] done in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    results = gpu_check(args.chapters, device=args.device, jobs=args.jobs)
    for r in results:
        status = "ok  " if r.passed else "FAIL"
        print(f"{status} {r.chapter:<22} cpu {r.cpu_s} s, gpu {r.gpu_s} s, largest excess {r.max_diff}: {r.note}")
    took = time.perf_counter() - start
    passed = sum(r.passed for r in results)
    print(f"gpu-check: {passed} of {len(results)} chapters agree within rtol {RTOL}, atol {ATOL} in {took:.0f} s")
    if took > BUDGET_S:
        print(f"mlmc: gpu-check took {took:.0f} s, over its {BUDGET_S} s budget", file=sys.stderr)
    return 0 if passed == len(results) and took <= BUDGET_S else 1


def _list() -> int:
    root = project_root()
    sources = {p.stem: p for p in list_chapters()}
    print(f"{'chapter':<22} {'source':<36} book page")
    for page in toc_files(root / "_toc.yml"):
        if not page.startswith("chapters/"):
            continue
        stem = page.split("/", 1)[1]
        executed = (root / "book" / f"{page}.ipynb").exists()
        state = "executed" if executed else "placeholder" if (root / "book" / f"{page}.md").exists() else "missing"
        source = str(sources[stem].relative_to(root)) if stem in sources else "-"
        print(f"{stem:<22} {source:<36} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlmc`` console script; returns 2 for bad parameters (checked before the run or raised by
    the chapter's checks), 1 for failed runs or builds, 130 when interrupted. Errors are one ``mlmc:`` line except for
    an unexpected failure inside a chapter, which shows the end of its traceback."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "gpu-check":
            return _gpu_check(args)
        if args.command == "build":
            start = time.perf_counter()
            html = build_book(out_dir=args.out, edition=args.edition, smoke_dir=args.smoke_dir)
            print(f"built {html / 'index.html'} in {time.perf_counter() - start:.1f} s")
            return 0
        return _list()
    except ValueError as err:
        print(f"mlmc: error: {err}", file=sys.stderr)
        return 2
    except ChapterFailed as err:
        print(f"mlmc: {err}", file=sys.stderr)
        return 2 if err.user_error else 1
    except (BookBuildFailed, NoGPU) as err:
        print(f"mlmc: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        # the interrupted cell's asyncio task is abandoned; do not let its "never retrieved" report follow this line
        logging.getLogger("asyncio").disabled = True
        why = f" ({err})" if str(err) else ""
        print(f"mlmc: interrupted{why}; the chapter's processes were stopped and nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
