"""No typed-in run results in chapter prose: every number in a markdown cell of ``notebooks/*.ipynb`` is glued, or one
of the kinds of number that cannot come from a run (issue 7: "every number in prose is glued").

A number is any free-standing run of digits (``82.5``, ``20%``, ``2,000``, ``+3``). These do not count as numbers:

- anything inside a MyST role (``{glue:text}`acc:.1f```, ``{cite:p}`…```, ``{numref}`…```, ``{eq}`…```), a code span
  or a fenced code block (parameters are written ```k = 20``` or ```mlmc run 01 -p k=20```), or display math;
- digits glued to letters (``mT5``, ``XLM-R``, ``WVS-7``, ``H1``, ``Z1/Z2``, ``CoNLL-18``, ``fp16``);
- references to the thesis's or the book's numbered parts: ``Table 3.3``, ``Fig. A.4-A.6``, ``§3.8.3``,
  ``chapter 3``, ``Tables 3.1 and 3.2``, ``Eq. 2``, ``stage 2``, ``exercise 3``; list markers (``1.``, ``(2)``);
  years (1900-2099); an exercise's expected time written with a tilde (``(~5 min)``);
- p-value thresholds (``p < 0.05``) and integers in inline math (``$100 / |L|$``; decimals in inline math do count);
- numbers in a sentence (up to ``.``, ``!``, ``?`` or a paragraph/list break) that attributes them to the thesis or a
  cited work: it says "thesis" or carries a citation role (``The thesis found +2.8 LAS``); a typed result of our own
  run ("accuracy is 82.5%") still fails;
- phrases on the explicit allow-list ``tests/prose_numbers_allow.yaml``: ``global`` phrases allowed in every chapter,
  and per-chapter phrases, each with a ``why`` (world design constants, "95% interval"). An entry that no longer occurs
  in its chapter fails the test, so the list stays small and current.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALLOW_FILE = Path(__file__).with_name("prose_numbers_allow.yaml")

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_ROLE = re.compile(r"\{[a-zA-Z][\w:-]*\}`[^`]*`")
_CODE = re.compile(r"`[^`]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_INLINE_MATH = re.compile(r"\$[^$\n]+\$")
_REF_WORD = (
    r"(?:Tables?|Figs?\.|Figures?|Sections?|Chapters?|chapters?|Eqs?\.|Equations?|Appendix|Algorithm|Hypothes[ie]s|"
    r"§§?|ch\.|sec\.|Part|[Ss]tages?|[Ss]teps?|[Ee]xercises?)"
)
_REF_ID = r"(?:[A-Z]\.?)?\d+(?:\.\d+)*"
_REFERENCE = re.compile(rf"{_REF_WORD}\s*{_REF_ID}(?:\s*(?:,|-|–|and|or|to)\s*{_REF_ID})*")
_LIST_MARKER = re.compile(r"^\s*(?:[-*]\s+)?\d+[.)]\s", re.M)
_EXPECTED_TIME = re.compile(r"~\s*\d+(?:\.\d+)?(?:\s*[-–]\s*\d+)?\s*(?:min|minutes|s|h)\b")
_ENUMERATOR = re.compile(r"\((?:\d|[ivx]{1,4})\)")
_P_THRESHOLD = re.compile(r"\bp\s*(?:<|>|≤|≥|<=|>=|=)\s*0?\.\d+")
_YEAR = re.compile(r"(?<![\d.,])(?:19|20)\d\d(?![\d%]|\.\d)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_])(?<![A-Za-z]-)[-+−]?\d++(?:[.,]\d++)*+%?(?![A-Za-z_\d])")
_ABBREVIATIONS = r"(?<!e\.g\.)(?<!i\.e\.)(?<! al\.)(?<!cf\.)(?<!vs\.)(?<!Fig\.)(?<!Eq\.)(?<!approx\.)"
_SENTENCE = re.compile(rf"(?<=[.!?]){_ABBREVIATIONS}\s+(?=[A-Z(])|\n\s*\n|\n(?=\s*[-*|#])")
_ATTRIBUTED = re.compile(r"thesis|\{cite", re.I)


def load_allow_list(path: Path = ALLOW_FILE) -> dict[str, list[dict[str, str]]]:
    """``{"global": [...], "<chapter stem>": [...]}``, each entry ``{"phrase": ..., "why": ...}``."""
    data = yaml.safe_load(path.read_text()) or {}
    out = {"global": data.get("global") or [], **(data.get("chapters") or {})}
    for key, entries in out.items():
        for entry in entries:
            assert set(entry) == {"phrase", "why"} and entry["why"].strip(), f"{path.name} [{key}]: {entry!r}"
    return out


def typed_numbers(text: str, allowed: list[str] = ()) -> list[str]:
    """The numbers in markdown ``text`` that are not glued, referenced, attributed or allowed (see module docstring)."""
    return [number for number, _ in scan(text, allowed)]


def scan(text: str, allowed: list[str] = ()) -> list[tuple[str, str]]:
    """(number, the words around it) for each typed number in ``text``."""
    for phrase in allowed:
        text = text.replace(phrase, " ")
    text = _FENCE.sub(" ", text)
    text = _DISPLAY_MATH.sub(" ", text)
    text = _ROLE.sub(lambda m: " " if "cite" not in m.group(0) else " {cite} ", text)
    text = _CODE.sub(" ", text)
    text = _LINK_TARGET.sub("]", text)
    text = _INLINE_MATH.sub(lambda m: " ".join(re.findall(r"\d+\.\d+", m.group(0))), text)
    text = _LIST_MARKER.sub(" ", text)
    text = _REFERENCE.sub(" ", text)
    text = _EXPECTED_TIME.sub(" ", text)
    text = _ENUMERATOR.sub(" ", text)
    found = []
    for sentence in _SENTENCE.split(text):
        if _ATTRIBUTED.search(sentence):
            continue
        sentence = _P_THRESHOLD.sub(" ", sentence)
        sentence = _YEAR.sub(" ", sentence)
        found += [(m.group(0), _around(sentence, m)) for m in _NUMBER.finditer(sentence)]
    return found


def _around(text: str, match: re.Match, width: int = 30) -> str:
    return " ".join(text[max(0, match.start() - width) : match.end() + width].split())


def markdown_cells(path: Path) -> list[tuple[int, str]]:
    nb = nbformat.read(path, as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("At this scale accuracy is 82.5%.", ["82.5%"]),
        ("In-language share falls to 64% of the top-k.", ["64%"]),
        ("We trained 3 seeds and the gap was +8.5 points.", ["3", "+8.5"]),
        ("Accuracy is {glue:text}`acc:.1f`% on 2,000 items.", ["2,000"]),
        ("Inline math with a result $\\rho = 0.84$ counts.", ["0.84"]),
    ],
)
def test_typed_results_are_found(text, expected):
    assert typed_numbers(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Accuracy is {glue:text}`acc:.1f`% (mean of {glue:text}`n_seeds` seeds).",
        "As in Table 3.3 and Tables 3.1 and 3.2 (Fig. A.4-A.6, §3.8.3, thesis chapter 3).",
        "See {numref}`fig-sharing-heatmap` and {eq}`eq-sharing-tracin`; {cite:t}`choenni2023languages` (2023).",
        "Rerun with `k = 20` or `mlmc run 01 -p k=20 -p 'langs=[en, de]'`.",
        "XLM-R, mT5 and WVS-7 items; Z1/Z2 for H1 and CoNLL-18 scoring in fp16.",
        "The thesis found +2.8 LAS over 82 treebanks.",
        "The thesis found both helping (e.g. Arabic: 71.2 and 72.2) and both best (72.9).",
        "Barshan et al. (2020) introduced it {cite:p}`barshan2020relatif`.",
        "Differences are significant at p < 0.05.",
        "1. First exercise (`~2 min`).\n2. Second one (~5 min), see exercise 3.\n(1) first (ii) second",
        "$$\nI = \\sum_{e=1}^{E^*} g_e\n$$ (eq-sharing-tracin)\n\nshare $100 / |L|$",
        "```python\nn = 3\n```",
        "[the 2nd link](https://example.org/a1/2.html)",
    ],
)
def test_glued_referenced_and_attributed_numbers_pass(text):
    assert typed_numbers(text) == []


def test_allow_list_phrases_are_removed():
    assert typed_numbers("a family of 31 made-up languages") == ["31"]
    assert typed_numbers("a family of 31 made-up languages", ["31 made-up languages"]) == []


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_chapter_prose_has_no_typed_numbers(path):
    allow = load_allow_list()
    phrases = [e["phrase"] for e in allow["global"] + allow.get(path.stem, [])]
    cells = markdown_cells(path)
    bad = [f"cell {i}: {num!r} in '…{ctx}…'" for i, src in cells for num, ctx in scan(src, phrases)]
    assert not bad, (
        f"{path.name} has numbers typed into its prose; glue them from the run ({{glue:text}}`name`), put parameters "
        f"in code spans, or add the phrase with a reason to {ALLOW_FILE.name}:\n" + "\n".join(bad)
    )
    text = "\n".join(src for _, src in cells)
    stale = [e["phrase"] for e in allow.get(path.stem, []) if e["phrase"] not in text]
    assert not stale, f"{ALLOW_FILE.name}: phrases of {path.stem} no longer in its prose, remove them: {stale}"


def test_allow_list_names_only_existing_chapters():
    stems = {p.stem for p in SOURCES}
    unknown = sorted(set(load_allow_list()) - {"global"} - stems)
    assert not unknown, f"{ALLOW_FILE.name} lists chapters without a notebook: {unknown}"
