"""Results of a chapter run: ``results/<chapter>/<run-id>/`` with params, environment, tables and figures.

Every chapter calls ``run = start_run("NN_slug", params={...})`` inside its notebook, saves tidy tables and figures,
and ends with ``run.finish()``. The folder appears atomically on ``finish()``; until then files go to a hidden temp
folder beside it, and a failed run leaves nothing behind (an exception deletes it; when the kernel itself is stopped,
``mlmc run`` deletes the temp folders that carry its run tag). The run id is ``<profile>-<hash of params>``, so the same
parameters give the same folder and, on the same machine kind, byte-identical CSV files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mlmc.book.project import CHAPTER_RE, results_root
from mlmc.book.provenance import environment
from mlmc.errors import check_choice
from mlmc.utils import atomic_dir, stable_hash

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FLOAT_FORMAT = "%.8g"
RUN_TAG_ENV = "MLMC_RUN_TAG"  # set by the runner for the kernel: unfinished runs carrying it are deleted after it
RUN_TAG_FILE = ".mlmc-run-tag"


def _plain(value: Any) -> Any:
    """Params as plain YAML/JSON types (tuples become lists) so that params.yaml and the run id are stable."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"parameter 'name' must be a plain file name (letters, digits, '_', '.', '-'), got {name!r}")
    return name


class Run:
    """One chapter run writing into a temp folder that becomes ``path`` on ``finish()``. Use ``start_run``."""

    def __init__(self, chapter: str, params: dict[str, Any], root: Path) -> None:
        self.chapter = chapter
        self.params = _plain(params)
        self.run_id = f"{self.params.get('profile', 'default')}-{stable_hash(self.params, length=12)}"
        self.path = root / chapter / self.run_id
        self._stack = contextlib.ExitStack()
        self.dir = self._stack.enter_context(atomic_dir(self.path))
        self.finished = False
        tag = os.environ.get(RUN_TAG_ENV)
        if tag:
            (self.dir / RUN_TAG_FILE).write_text(tag)
        (self.dir / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=True, allow_unicode=True))
        env = environment(self.params)
        (self.dir / "env.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")

    def _target(self, name: str, suffix: str) -> Path:
        if self.finished:
            raise RuntimeError(f"run {self.run_id} of {self.chapter} is finished; start a new run to save more")
        return self.dir / f"{_check_name(name)}{suffix}"

    def save_table(self, name: str, df: pd.DataFrame, *, index: bool = False) -> Path:
        """Write ``df`` as ``<name>.csv`` with fixed float formatting and ``\\n`` line ends; return its final path."""
        df.to_csv(self._target(name, ".csv"), index=index, float_format=FLOAT_FORMAT, lineterminator="\n")
        return self.path / f"{name}.csv"

    def save_figure(self, name: str, fig: Any, *, fmt: str = "png", dpi: int = 150) -> Path:
        """Save a matplotlib figure as ``<name>.<fmt>`` (png, svg or pdf); return its final path."""
        check_choice("fmt", fmt, ["png", "svg", "pdf"])
        fig.savefig(self._target(name, f".{fmt}"), format=fmt, dpi=dpi, bbox_inches="tight")
        return self.path / f"{name}.{fmt}"

    def finish(self) -> Path:
        """Move the run into place (replacing an earlier run with the same id) and return its folder."""
        if not self.finished:
            self.finished = True
            (self.dir / RUN_TAG_FILE).unlink(missing_ok=True)
            self._stack.close()
        return self.path

    def abort(self) -> None:
        """Delete the temp folder of an unfinished run."""
        if not self.finished:
            self.finished = True
            self._stack.__exit__(RuntimeError, RuntimeError("run aborted"), None)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def start_run(chapter: str, params: dict[str, Any], root: str | Path | None = None) -> Run:
    """Start the run of ``chapter`` (``NN_slug``) with ``params``; ``root`` defaults to ``$MLMC_RESULTS`` or
    ``<project>/results``. Writes ``params.yaml`` and ``env.json`` at once. Use ``with start_run(...) as run:`` or
    call ``run.finish()``."""
    if not CHAPTER_RE.match(chapter):
        raise ValueError(f"parameter 'chapter' must look like 'NN_slug' (e.g. '01_data_sharing'), got {chapter!r}")
    if not isinstance(params, dict):
        raise ValueError(f"parameter 'params' must be a dict of the chapter's parameters, got {type(params).__name__}")
    return Run(chapter, params, Path(root) if root is not None else results_root())
