"""Execute a chapter notebook with papermill and publish it to ``book/chapters/`` only if it ran (every chapter).

``run_chapter("01", profile="smoke", overrides={"seed": 1})``: resolve and check the parameters (before any compute),
execute into a temp folder, post-process, then atomically replace ``book/chapters/NN_slug.ipynb`` and delete a
placeholder ``NN_slug.md`` of the same chapter. A failed execution raises ``ChapterFailed`` and writes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import papermill
from papermill.exceptions import PapermillExecutionError

from mlmc.book.params import resolve
from mlmc.book.postprocess import postprocess, run_table
from mlmc.book.project import find_notebook, project_root
from mlmc.book.provenance import device_description, git_sha

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _not_parameter_inference(record: logging.LogRecord) -> bool:
    """Drop papermill's parameter-inference warnings ("Passed unknown parameter", "Unable to parse line"): its cell
    parser misses annotations such as ``str | None``, and ``resolve`` has already checked every name and type."""
    msg = record.getMessage()
    return not (msg.startswith("Passed unknown parameter") or msg.startswith("Unable to parse line"))


# Filters attach to the logger that emits the record, so each papermill module logger gets its own.
for _name in ("papermill", "papermill.execute", "papermill.translators", "papermill.inspection"):
    logging.getLogger(_name).addFilter(_not_parameter_inference)


class ChapterFailed(RuntimeError):
    """A chapter notebook raised during execution; its message holds the cell's error and traceback."""


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_root()))
    except (ValueError, FileNotFoundError):
        return str(path)


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
    out = Path(out_dir) if out_dir is not None else project_root() / "book" / "chapters"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mlmc-{source.stem}-") as tmp:
        executed = Path(tmp) / source.name
        try:
            papermill.execute_notebook(
                str(source),
                str(executed),
                parameters=values,
                kernel_name=kernel_name,
                cwd=str(out),
                progress_bar=progress,
            )
        except PapermillExecutionError as err:
            trace = _ANSI.sub("", "\n".join(err.traceback[-12:]))
            raise ChapterFailed(
                f"chapter {source.stem} failed in cell [{err.exec_count}] with {err.ename}: {err.evalue}\n"
                f"nothing was written to {out}\n{trace}"
            ) from None
        except Exception as err:  # kernel died, timeout, missing kernel: the chapter did not run either
            raise ChapterFailed(f"chapter {source.stem} could not run ({type(err).__name__}: {err})") from err
        nb = nbformat.read(executed, as_version=4)
    table = run_table(
        values,
        declared,
        runtime_s=time.perf_counter() - start,
        device=device_description(values["device"]),
        git=git_sha(),
    )
    postprocess(nb, table)
    final = out / f"{source.stem}.ipynb"
    nb.metadata.setdefault("papermill", {}).update(input_path=_relative(source), output_path=_relative(final))
    partial = out / f".{source.stem}.ipynb.partial"
    nbformat.write(nb, partial)
    os.replace(partial, final)
    (out / f"{source.stem}.md").unlink(missing_ok=True)
    return final
