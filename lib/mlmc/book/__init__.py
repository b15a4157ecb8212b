"""The book pipeline: chapter parameters, the papermill runner, post-processing, results, and the HTML build.

Conventions every chapter follows (also in ``book/reproducing.md``; ``tests/test_contract.py`` enforces them):

- Source notebook: ``notebooks/NN_slug.ipynb`` (``NN`` = 00..07; 00 is the world page), committed with outputs
  stripped. Profiles: ``notebooks/params/smoke/NN_slug.yaml`` and ``notebooks/params/full/NN_slug.yaml``, each
  holding only the parameters the profile changes; the ``default`` profile is the parameters cell itself.
- Exactly one cell is tagged ``parameters``. Each statement in it reads ``name: type = literal  # help text``: one
  annotated assignment of a Python literal, with the help comment on its first or last line (``help:`` prefix
  optional). Types: ``int``, ``float``, ``str``, ``bool``, ``list[...]``, ``dict[..., ...]``, ``tuple[...]``,
  ``X | None`` (annotations run in the kernel, so nothing that needs an import). Required: ``seed: int``,
  ``device: str`` and ``profile: str = "default"`` (the runner sets it).
- The first code cell after the parameters validates values with ``mlmc.errors`` before any compute.
- ``mlmc run NN [--profile default|smoke|full] [-p key=value ...]`` executes the notebook into
  ``book/chapters/NN_slug.ipynb`` (committed with outputs; rendered by the book; re-executed by nbval), hides the
  injected-parameters cell, folds the parameters cell and inserts a folded run-parameters table. A failing notebook is
  never written there; a user error is one ``mlmc:`` line, and the kernel's whole process group is stopped.
- ``notebooks/params/gpu/NN_slug.yaml`` (optional): the ``gpu`` profile, the smoke profile plus ``device: cuda``;
  ``mlmc gpu-check`` compares it with the CPU smoke run.
- Inside the notebook, results go through ``run = mlmc.book.start_run("NN_slug", params={...})``,
  ``run.save_table(...)``, ``run.save_figure(...)``, ``run.finish()`` into ``results/NN_slug/<profile>-<hash>/``.
"""

from mlmc.book.build import BookBuildFailed, build_book
from mlmc.book.params import PROFILES, Parameter, parse_overrides, parse_parameters, resolve
from mlmc.book.project import find_notebook, list_chapters, project_root
from mlmc.book.results import Run, start_run
from mlmc.book.runner import ChapterFailed, run_chapter

__all__ = [
    "PROFILES",
    "BookBuildFailed",
    "ChapterFailed",
    "Parameter",
    "Run",
    "build_book",
    "find_notebook",
    "list_chapters",
    "parse_overrides",
    "parse_parameters",
    "project_root",
    "resolve",
    "run_chapter",
    "start_run",
]
