"""Execute a chapter notebook with papermill and publish it to ``book/chapters/`` only if it ran (every chapter).

``run_chapter("01", profile="smoke", overrides={"seed": 1})``: resolve and check the parameters (before any compute),
execute into a temp folder, post-process, then atomically replace ``book/chapters/NN_slug.ipynb`` and delete a
placeholder ``NN_slug.md`` of the same chapter.

Failures are clean: a failed execution raises ``ChapterFailed`` and writes nothing. A user error (a ``ValueError``
from ``mlmc.errors.check_*``, a hub model that is not available offline) becomes one line naming the cell, what was
wrong and how to fix it, without tracebacks (``ChapterFailed.user_error``). The kernel runs in its own process
session; when the run ends, fails or is interrupted (Ctrl-C, SIGTERM) the runner kills that whole process group, so no
pool worker or multiprocessing resource tracker outlives it, and it deletes the unfinished ``results/`` folders that
the run's ``start_run`` calls left (they carry the run's tag, ``MLMC_RUN_TAG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import nbformat
import papermill
from jupyter_client.manager import AsyncKernelManager
from papermill.exceptions import PapermillExecutionError

from mlmc.book.params import parameters_cell, resolve
from mlmc.book.postprocess import postprocess, run_table
from mlmc.book.project import find_notebook, project_root, results_root
from mlmc.book.provenance import device_description, git_sha
from mlmc.book.results import RUN_TAG_ENV, RUN_TAG_FILE
from mlmc.errors import check_device

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PARAMETER_ERROR = re.compile(r"^(?:unknown )?parameter(?:\(s\))? '?([A-Za-z_]\w*)'?")


def _not_parameter_inference(record: logging.LogRecord) -> bool:
    """Drop papermill's parameter-inference warnings ("Passed unknown parameter", "Unable to parse line"): its cell
    parser misses annotations such as ``str | None``, and ``resolve`` has already checked every name and type."""
    msg = record.getMessage()
    return not (msg.startswith("Passed unknown parameter") or msg.startswith("Unable to parse line"))


# Filters attach to the logger that emits the record, so each papermill module logger gets its own.
for _name in ("papermill", "papermill.execute", "papermill.translators", "papermill.inspection"):
    logging.getLogger(_name).addFilter(_not_parameter_inference)


class ChapterFailed(RuntimeError):
    """A chapter notebook raised during execution. ``user_error`` is True for a bad value or an unavailable model:
    then the message is one line; otherwise it holds the cell's error and the end of its traceback."""

    def __init__(self, message: str, *, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_root()))
    except (ValueError, FileNotFoundError):
        return str(path)


class _Kernels:
    """The kernels one run starts: their process groups, environment and log file (see ``_manager_class``)."""

    def __init__(self, env: dict[str, str], log: IO[str]) -> None:
        self.env = env
        self.log = log
        self.groups: list[int] = []

    def manager_class(self) -> type[AsyncKernelManager]:
        kernels = self

        class _Manager(AsyncKernelManager):
            """Starts the kernel with the run's environment, its output in the run's log, and records its process
            group (jupyter_client starts every local kernel in a new session)."""

            async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
                kw["env"] = {**(kw.get("env") or os.environ), **kernels.env}
                kw["stdout"] = kw["stderr"] = kernels.log
                await super()._async_launch_kernel(kernel_cmd, **kw)
                pgid = getattr(self.provisioner, "pgid", None)
                if pgid:
                    kernels.groups.append(pgid)

        return _Manager

    def stop(self, grace_s: float = 1.0) -> None:
        """SIGTERM each process group, then SIGKILL what is left after ``grace_s``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = False
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
                    alive = True
            if not alive:
                return
            if sig == signal.SIGTERM:
                time.sleep(grace_s)


def _remove_unfinished_results(root: Path, tag: str) -> None:
    """Delete the hidden temp folders of ``start_run`` runs that carry ``tag`` and were never finished."""
    for marker in root.glob(f"*/.*.tmp-*/{RUN_TAG_FILE}"):
        with contextlib.suppress(OSError):
            if marker.read_text().strip() == tag:
                shutil.rmtree(marker.parent, ignore_errors=True)


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` (like Ctrl-C), so the cleanup in ``run_chapter`` runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _cell_name(err: PapermillExecutionError, source: Path) -> str:
    """``cell 4 ('first line of its source')``, numbered from 1 as in the source notebook (papermill's injected cell
    is not counted), for error lines; a first-line comment names the cell in most chapters."""
    index = err.cell_index
    with contextlib.suppress(OSError, ValueError):
        if index > parameters_cell(nbformat.read(source, as_version=4))[0]:
            index -= 1
    first = next((line.strip() for line in (err.source or "").splitlines() if line.strip()), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    return f"cell {index + 1} ({first!r})" if first else f"cell {index + 1}"


def _is_user_error(ename: str, evalue: str) -> bool:
    """A bad value (``mlmc.errors.check_*``: a ``ValueError`` whose message starts by naming the parameter) or a
    model that is not available offline."""
    return ename == "ModelNotAvailableError" or (ename == "ValueError" and bool(_PARAMETER_ERROR.match(evalue)))


def _user_error_line(stem: str, where: str, ename: str, evalue: str, declared: dict[str, Any]) -> str:
    """One line: where, what was wrong (the message names the parameter and the allowed values), how to fix it. The
    ``-p`` hint is given only for a parameter the chapter declares (the name the user types)."""
    evalue = " ".join(evalue.split())
    fix = ""
    match = _PARAMETER_ERROR.match(evalue)
    if ename == "ValueError" and match and match.group(1) in declared:
        fix = f"; fix: rerun with -p {match.group(1)}=<allowed value>"
    return f"{stem}: {where}: {evalue}{fix}"


def run_chapter(
    chapter: str | Path,
    profile: str = "default",
    overrides: dict[str, Any] | None = None,
    *,
    notebooks_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    kernel_name: str = "python3",
    progress: bool = False,
) -> Path:
    """Run one chapter and return the path of the executed notebook.

    ``chapter`` is ``NN``, ``NN_slug`` or a path to a notebook; ``out_dir`` defaults to ``<project>/book/chapters``.
    The kernel's working directory is ``out_dir``, as it is when nbval re-executes the committed notebook.
    """
    source = Path(chapter) if str(chapter).endswith(".ipynb") else find_notebook(str(chapter), notebooks_dir)
    values, declared = resolve(source, profile, overrides)
    check_device("device", values["device"])  # every chapter declares it; a missing GPU stops here, before compute
    out = Path(out_dir) if out_dir is not None else project_root() / "book" / "chapters"
    out.mkdir(parents=True, exist_ok=True)
    results = results_root().resolve()
    tag = uuid.uuid4().hex
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mlmc-{source.stem}-") as tmp:
        executed = Path(tmp) / source.name
        with open(Path(tmp) / "kernel.log", "w") as log, _terminate_raises():
            kernels = _Kernels({"MLMC_RESULTS": str(results), RUN_TAG_ENV: tag}, log)
            try:
                papermill.execute_notebook(
                    str(source),
                    str(executed),
                    parameters=values,
                    kernel_name=kernel_name,
                    cwd=str(out),
                    progress_bar=progress,
                    kernel_manager_class=kernels.manager_class(),
                )
            except PapermillExecutionError as err:
                where = _cell_name(err, source)
                if _is_user_error(err.ename, err.evalue):
                    raise ChapterFailed(
                        _user_error_line(source.stem, where, err.ename, err.evalue, declared), user_error=True
                    ) from None
                trace = _ANSI.sub("", "\n".join(err.traceback[-12:]))
                raise ChapterFailed(
                    f"chapter {source.stem} failed in {where} with {err.ename}: {err.evalue}\n"
                    f"nothing was written to {out}\n{trace}"
                ) from None
            except Exception as err:  # kernel died, timeout, missing kernel: the chapter did not run either
                log.flush()
                tail = "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-10:])
                raise ChapterFailed(
                    f"chapter {source.stem} could not run ({type(err).__name__}: {err})"
                    + (f"\nend of the kernel's output:\n{tail}" if tail else "")
                ) from err
            finally:
                kernels.stop()
                _remove_unfinished_results(results, tag)
        nb = nbformat.read(executed, as_version=4)
    runtime_s = time.perf_counter() - start
    device = device_description(values["device"])
    git = git_sha()
    table = run_table(values, declared, runtime_s=runtime_s, device=device, git=git)
    postprocess(nb, table, record={"profile": profile, "runtime_s": round(runtime_s, 1), "device": device, "git": git})
    final = out / f"{source.stem}.ipynb"
    nb.metadata.setdefault("papermill", {}).update(input_path=_relative(source), output_path=_relative(final))
    partial = out / f".{source.stem}.ipynb.partial"
    nbformat.write(nb, partial)
    os.replace(partial, final)
    (out / f"{source.stem}.md").unlink(missing_ok=True)
    return final
