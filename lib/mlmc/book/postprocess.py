"""Post-processing of an executed chapter notebook before it enters ``book/chapters/`` (every chapter).

Hides papermill's injected-parameters cell (tag ``remove-cell``, which Jupyter Book 1 drops from the page), inserts a
markdown run-parameters table after it, and drops per-cell execution timestamps so reruns give small diffs.
The table is a markdown cell, so nbval (which compares code-cell outputs only) ignores it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import nbformat

from mlmc.book.params import Parameter, parameters_cell

RUN_TABLE_TAG = "run-parameters"
HIDE_TAG = "remove-cell"
_MAX_CHARS = 80


def _cell_text(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_CHARS:
        text = text[: _MAX_CHARS - 1] + "…"
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def run_table(
    values: dict[str, Any], declared: dict[str, Parameter], *, runtime_s: float, device: str, git: str
) -> str:
    """Markdown of the run-parameters table: a header line (profile, runtime, device, commit, date) and one row per
    parameter with its value, default and help text; values that differ from the default are bold."""
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"**Run parameters.** Profile `{values.get('profile', 'default')}` · runtime {runtime_s:.1f} s · "
        f"device {device} · git `{git}` · executed {today} (UTC).",
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
    return "\n".join(lines)


def postprocess(nb: nbformat.NotebookNode, table: str) -> nbformat.NotebookNode:
    """Hide the injected-parameters cell, put ``table`` (from ``run_table``) right after it, drop cell timings."""
    nb.cells = [c for c in nb.cells if RUN_TABLE_TAG not in c.metadata.get("tags", [])]
    index, _ = parameters_cell(nb)
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            cell.metadata["tags"] = [*tags, HIDE_TAG] if HIDE_TAG not in tags else tags
            index = i
    md = nbformat.v4.new_markdown_cell(table, metadata={"tags": [RUN_TABLE_TAG]})
    nb.cells.insert(index + 1, md)
    return nb
