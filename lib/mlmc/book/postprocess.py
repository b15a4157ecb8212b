"""Post-processing of an executed chapter notebook before it enters ``book/chapters/`` (every chapter).

Hides papermill's injected-parameters cell (tag ``remove-cell``, which Jupyter Book 1 drops from the page), folds the
parameters cell (tag ``hide-input``: its code sits behind a "show" toggle), inserts the run-parameters table after it
as a folded dropdown, records the run in ``metadata.mlmc`` (profile, runtime, device, git commit, date: the book's
"Runs and reproducibility" page reads it) and drops per-cell execution timestamps so reruns give small diffs.
The table is a markdown cell, so nbval (which compares code-cell outputs only) ignores it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import nbformat

from mlmc.book.params import Parameter, parameters_cell

RUN_TABLE_TAG = "run-parameters"
HIDE_TAG = "remove-cell"
FOLD_TAG = "hide-input"
_MAX_CHARS = 80


def _cell_text(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_CHARS:
        text = text[: _MAX_CHARS - 1] + "…"
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def run_table(
    values: dict[str, Any], declared: dict[str, Parameter], *, runtime_s: float, device: str, git: str
) -> str:
    """Markdown of the run-parameters table inside a folded dropdown: the title line (profile, runtime, device,
    commit, date) and one row per parameter with its value, default and help text; changed values are bold."""
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f":::{{admonition}} Run parameters. Profile `{values.get('profile', 'default')}` · runtime {runtime_s:.1f} s"
        f" · device {device} · git `{git}` · executed {today} (UTC).",
        ":class: dropdown",
        "",
        "| parameter | value | default | help |",
        "|---|---|---|---|",
    ]
    for name, param in declared.items():
        value = _cell_text(values.get(name, param.default))
        if name in values and values[name] != param.default:
            value = f"**{value}**"
        help_text = param.help.replace("|", "\\|")
        lines.append(f"| `{name}` | {value} | {_cell_text(param.default)} | {help_text} |")
    lines.append(":::")  # a colon fence: a backtick fence's title may not hold the backticks of the code spans
    return "\n".join(lines)


def postprocess(nb: nbformat.NotebookNode, table: str, record: dict[str, Any] | None = None) -> nbformat.NotebookNode:
    """Hide the injected-parameters cell, fold the parameters cell, put ``table`` (from ``run_table``) right after
    them, store ``record`` (plus the UTC date) as ``nb.metadata.mlmc``, drop cell timings."""
    nb.cells = [c for c in nb.cells if RUN_TABLE_TAG not in c.metadata.get("tags", [])]
    index, params = parameters_cell(nb)
    params.metadata["tags"] = _with_tag(params.metadata.get("tags", []), FOLD_TAG)
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            cell.metadata["tags"] = _with_tag(tags, HIDE_TAG)
            index = i
    md = nbformat.v4.new_markdown_cell(table, metadata={"tags": [RUN_TABLE_TAG]})
    nb.cells.insert(index + 1, md)
    if record is not None:
        today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        nb.metadata["mlmc"] = {**record, "executed": today}
    return nb


def _with_tag(tags: list[str], tag: str) -> list[str]:
    return [*tags, tag] if tag not in tags else list(tags)
