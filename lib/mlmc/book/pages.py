"""Book pages generated at ``mlmc build`` time from the executed chapters, never typed (every chapter).

- ``reproduced.md``, *What reproduced and what did not*: one table over all chapters built from the planted-truth
  records that ``mlmc.evidence.show`` embeds in each executed chapter (MIME ``application/vnd.mlmc.evidence+json``),
  with a link to the section that shows each check.
- ``runs.md``, *Runs and reproducibility*: per chapter the profile, seed, device, commit and runtime of the committed
  default run (papermill metadata and the runner's ``metadata.mlmc``), the smoke runtimes when a folder of smoke-run
  notebooks is given, the environment, the last device check (``book/device_checks.json``, written by
  ``mlmc gpu-check``) and which chapters ran at full scale.

Both files are written into ``book/`` (ignored by git) and listed in ``_toc.yml``; ``device_checks.md``, the last
device check alone, is included by ``reproducing.md``.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
from pathlib import Path
from typing import Any

import nbformat

from mlmc.book.postprocess import RUN_TABLE_TAG
from mlmc.book.project import CHAPTER_RE, toc_files
from mlmc.evidence import MIME

GENERATED = ("reproduced", "runs", "device_checks")
DEVICE_CHECKS = "device_checks.json"
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def slug(title: str) -> str:
    """The id docutils gives the section of a heading with this (plain) text: lower case, dashes."""
    from docutils.nodes import make_id

    return make_id(title)


def _plain_heading(title: str) -> str:
    """Heading text as rendered: roles and markup stripped (``{term}`STE``` -> ``STE``)."""
    title = re.sub(r"\{[^}]+\}`([^`<]*)(?:<[^>]*>)?`", r"\1", title)
    return re.sub(r"[*_`]", "", title).strip()


def executed_chapters(chapters_dir: Path) -> list[Path]:
    """Executed chapter notebooks ``NN_slug.ipynb`` in ``chapters_dir``, sorted."""
    return sorted(p for p in chapters_dir.glob("*.ipynb") if CHAPTER_RE.match(p.stem))


def evidence_records(nb_path: Path) -> list[dict[str, Any]]:
    """Every check recorded in ``nb_path``, each with ``section`` (title of the nearest heading above it)."""
    nb = nbformat.read(nb_path, as_version=4)
    section, out = "", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            headings = _HEADING.findall(cell.source)
            if headings:
                section = _plain_heading(headings[-1][1])
            continue
        for output in cell.get("outputs", []):
            bundle = output.get("data", {}).get(MIME)
            if bundle:
                data = json.loads(bundle) if isinstance(bundle, str) else bundle
                out += [{**check, "section": section} for check in data.get("checks", [])]
    return out


def _verdict(check: dict[str, Any]) -> str:
    verdict = str(check.get("verdict", "?"))
    return f"**{verdict}**" if verdict == "pass" else verdict


def _effect(check: dict[str, Any]) -> str:
    try:
        return f"{check['effect']:+.3g} [{check['ci_low']:.3g}, {check['ci_high']:.3g}]"
    except (KeyError, TypeError, ValueError):
        return "?"


def reproduced_page(root: Path) -> str:
    """Markdown of *What reproduced and what did not* from the executed chapters under ``root/book/chapters``."""
    chapters_dir = root / "book" / "chapters"
    rows, without = [], []
    counts = {"planted": 0, "pass": 0, "fail": 0, "inconclusive": 0, "consistency": 0}
    order = [p.split("/", 1)[1] for p in toc_files(root / "_toc.yml") if p.startswith("chapters/")]
    for stem in order:
        nb_path = chapters_dir / f"{stem}.ipynb"
        records = evidence_records(nb_path) if nb_path.exists() else []
        if not records:
            without.append(f"{{doc}}`chapters/{stem}`" + ("" if nb_path.exists() else " (not written yet)"))
            continue
        for check in records:
            kind = str(check.get("kind", "?"))
            if kind == "planted":
                counts["planted"] += 1
                counts[check.get("verdict", "inconclusive")] = counts.get(check.get("verdict", "inconclusive"), 0) + 1
            else:
                counts["consistency"] += 1
            # raw HTML: Sphinx resolves no anchors of notebook sections; the browser test checks these links
            link = f'<a href="chapters/{stem}.html#{slug(check["section"])}">{_cell(check["section"]) or stem}</a>'

            rows.append(
                f"| {{doc}}`chapters/{stem}` | {_cell(check.get('claim', ''))} | {kind} | "
                f"{_cell(check.get('control_name', ''))} | {_verdict(check)} | {_effect(check)} | "
                f"{float(check.get('p_value', float('nan'))):.3g} | {link} |"
            )
    lines = [
        "# What reproduced and what did not",
        "",
        "This page is generated by `mlmc build` from the planted-truth checks that each executed chapter embeds "
        "(`mlmc.evidence.show`); nothing on it is typed. A **planted** check tests a claim about the synthetic world "
        "against a control that should fail it; a **consistency** check is one whose control passes too, so it "
        "cannot tell the trained model from its control and is not counted as evidence. The effect is measured minus "
        "control (or minus the fixed baseline) with its 95% bootstrap interval; p is the permutation p-value for "
        "the threshold stated before the run.",
        "",
    ]
    if rows:
        lines += [
            f"Over all chapters: {counts['planted']} planted checks, of which {counts['pass']} pass, "
            f"{counts['fail']} fail and {counts['inconclusive']} are inconclusive; {counts['consistency']} "
            "consistency checks.",
            "",
            "| chapter | claim | evidence | control | verdict | effect [95% interval] | p | section |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    else:
        lines += ["No executed chapter records planted-truth checks yet.", ""]
    if without:
        lines += ["Chapters without evidence records: " + ", ".join(without) + ".", ""]
    return "\n".join(lines)


def _run_record(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """The runner's ``metadata.mlmc``; for chapters executed before it existed, device and commit are read back from
    the run-parameters table (``... · device cpu (...) · git `abc` · ...``)."""
    record = dict(nb.metadata.get("mlmc", {}))
    if record:
        return record
    table = next((c.source for c in nb.cells if RUN_TABLE_TAG in c.get("metadata", {}).get("tags", [])), "")
    for key, pattern in (("device", r"· device (.+?) · git"), ("git", r"git `([^`]+)`")):
        match = re.search(pattern, table)
        if match:
            record[key] = match.group(1)
    return record


def _runtime(nb: nbformat.NotebookNode) -> float | None:
    record = nb.metadata.get("mlmc", {})
    value = record.get("runtime_s", nb.metadata.get("papermill", {}).get("duration"))
    return float(value) if value is not None else None


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} s"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def device_checks(root: Path) -> dict[str, Any] | None:
    """The record of the last ``mlmc gpu-check`` (``book/device_checks.json``), or None."""
    path = root / "book" / DEVICE_CHECKS
    return json.loads(path.read_text()) if path.exists() else None


def _device_section(root: Path) -> list[str]:
    """The last device check as markdown (no heading): the runs page shows it, and the reproducing page includes it
    (``book/device_checks.md``)."""
    record = device_checks(root)
    lines: list[str] = []
    if record is None:
        return ["No device check has run yet: no CUDA path of any chapter has been verified on a GPU.", ""]
    passed = [c for c in record["chapters"] if c["passed"]]
    lines += [
        f"The last `make gpu-check` ran on {_cell(record['device'])} on {record['date']} (git `{record['git']}`): "
        f"{len(passed)} of {len(record['chapters'])} chapters agree with their CPU smoke run within the tolerances "
        f"(relative {record['rtol']}, absolute {record['atol']} on every number of every saved table; equal "
        "evidence verdicts).",
        "",
        "| chapter | GPU run | agrees with CPU | largest difference | note |",
        "|---|---|---|---|---|",
    ]
    for c in record["chapters"]:
        lines.append(
            f"| {c['chapter']} | {_seconds(c.get('gpu_s'))} | {'yes' if c['passed'] else '**no**'} | "
            f"{_cell(c.get('max_diff', '–'))} | {_cell(c.get('note', ''))} |"
        )
    return [*lines, ""]


def runs_page(root: Path, smoke_dir: Path | None = None) -> str:
    """Markdown of *Runs and reproducibility* (see the module docstring)."""
    chapters = executed_chapters(root / "book" / "chapters")
    smoke = {p.stem: p for p in executed_chapters(smoke_dir)} if smoke_dir and smoke_dir.is_dir() else {}
    rows, kernels, full = [], set(), []
    for path in chapters:
        nb = nbformat.read(path, as_version=4)
        pm, record = nb.metadata.get("papermill", {}), _run_record(nb)
        params = pm.get("parameters", {})
        profile = record.get("profile", params.get("profile", "default"))
        if profile == "full":
            full.append(path.stem)
        kernels.add(nb.metadata.get("language_info", {}).get("version", "?"))
        smoke_s = _runtime(nbformat.read(smoke[path.stem], as_version=4)) if path.stem in smoke else None
        executed = record.get("executed") or str(pm.get("end_time", "?"))[:10]
        rows.append(
            f"| {{doc}}`chapters/{path.stem}` | `{profile}` | {params.get('seed', '?')} | {_seconds(_runtime(nb))} | "
            f"{_seconds(smoke_s)} | {_cell(record.get('device', params.get('device', '?')))} | "
            f"`{record.get('git', '?')}` | {executed} |"
        )
    total = sum(_runtime(nbformat.read(p, as_version=4)) or 0.0 for p in chapters)
    packages = ", ".join(f"{p} {_version(p)}" for p in ("torch", "transformers", "numpy", "scipy", "jupyter-book"))
    smoke_note = (
        f"Smoke runtimes come from the smoke-run notebooks in `{smoke_dir}`."
        if smoke
        else "No smoke-run notebooks were given to this build (`make book` runs them; `make build` does not), so the "
        "smoke column is empty."
    )
    lines = [
        "# Runs and reproducibility",
        "",
        "This page is generated by `mlmc build` from the executed chapters: the papermill metadata and the runner's "
        "record of each committed run. Nothing on it is typed.",
        "",
        "## The runs behind this book",
        "",
        f"Every runtime is wall-clock time of the whole notebook on the machine named in the device column; together "
        f"the committed chapters took {total / 60:.1f} min. {smoke_note}",
        "",
        "| chapter | profile | seed | runtime | smoke runtime | device | git | executed (UTC) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Environment",
        "",
        f"Kernels: Python {', '.join(sorted(kernels)) or '?'}. This build: Python {platform.python_version()} on "
        f"{platform.machine()}; {packages}. Each run's own `env.json` (versions, threads, seed, commit) is in "
        "`results/<chapter>/<run-id>/`. Seeds: every chapter seeds the world, the models and the data order from "
        "its `seed` parameter (column above); the same parameters and seed give the same tables on the same kind "
        "of machine.",
        "",
        "## Device checks",
        "",
        *_device_section(root),
        "## Full scale",
        "",
        (
            "Chapters whose committed run used the `full` profile: " + ", ".join(full) + "."
            if full
            else "No committed chapter ran the `full` profile: the thesis-scale code paths (real models, real data, "
            "GPU) have not been verified for this book. The default runs above use the synthetic world and tiny models."
        ),
        "",
        "To run one at full scale on a machine with a CUDA GPU and access to the Hugging Face hub:",
        "",
        "```bash",
        "make setup        # then replace the CPU torch in .venv by the CUDA build of the same version (pytorch.org)",
        "make gpu-check                              # every chapter's smoke path on cuda vs the CPU smoke run",
        ".venv/bin/mlmc run 01 --profile full        # values from notebooks/params/full/01_data_sharing.yaml",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_pages(root: Path, smoke_dir: Path | None = None) -> list[Path]:
    """Write the generated pages into ``root/book`` and return their paths."""
    pages = {
        "reproduced": reproduced_page(root),
        "runs": runs_page(root, smoke_dir),
        "device_checks": "\n".join(_device_section(root)),  # included by reproducing.md, not a page of its own
    }
    paths = []
    for name, text in pages.items():
        path = root / "book" / f"{name}.md"
        path.write_text(text)
        paths.append(path)
    return paths
