"""Chapter parameters: parse a notebook's parameters cell, load a profile, merge overrides, check names and types.

Used by the runner (`mlmc run`) for every chapter, and by the notebook contract tests. The parameters cell holds only
lines of the form ``name: type = literal  # help text`` (see the `mlmc.book` docstring for the full rule).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import yaml

from mlmc.errors import check_choice

PROFILES = ("default", "smoke", "full", "gpu")
# A profile file may build on another: the gpu profile is the smoke profile plus notebooks/params/gpu/NN_slug.yaml
# (at least `device: cuda`; also a chapter's half-precision switch where it has one).
BASE_PROFILE = {"gpu": "smoke"}
REQUIRED = {"seed": "int", "device": "str", "profile": "str"}
_TYPE_NAMES = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "None": None,
}


@dataclass(frozen=True)
class Parameter:
    """One declared chapter parameter: its name, annotation (as written), default value and help text."""

    name: str
    annotation: str
    default: Any
    help: str

    @property
    def type(self) -> Any:
        """The annotation evaluated to a type object (``list[str]``, ``int | None``, ...)."""
        return _eval_annotation(self.name, self.annotation)


def _eval_annotation(name: str, annotation: str) -> Any:
    try:
        return eval(annotation, {"__builtins__": {}}, dict(_TYPE_NAMES))  # only the names above resolve
    except Exception as err:
        allowed = "int, float, str, bool, list[...], dict[..., ...], tuple[...], X | None"
        raise ValueError(f"parameter {name!r} has an unsupported type {annotation!r}; use one of {allowed}") from err


def parameters_cell(nb: nbformat.NotebookNode) -> tuple[int, nbformat.NotebookNode]:
    """Return (index, cell) of the single cell tagged ``parameters``; raise if there is none or more than one."""
    found = [(i, c) for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise ValueError(f"a chapter notebook needs exactly one cell tagged 'parameters', found {len(found)}")
    return found[0]


def parse_parameters(source: str) -> dict[str, Parameter]:
    """Parse a parameters cell into ``{name: Parameter}`` in declaration order.

    Every statement must be ``name: type = literal`` with a trailing ``# help text`` comment on its last (or first)
    line; an optional ``help:`` prefix is dropped. The default must match the type. Anything else raises
    ``ValueError`` naming the line.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"the parameters cell is not valid Python (line {err.lineno}): {err.msg}") from None
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = re.sub(r"^#\s*(help:\s*)?", "", tok.string).strip()
    params: dict[str, Parameter] = {}
    for node in tree.body:
        line = source.splitlines()[node.lineno - 1].strip()
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ValueError(f"parameters cell line {node.lineno} is not 'name: type = value  # help': {line!r}")
        name = node.target.id
        try:
            default = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"parameter {name!r} needs a literal default value, got {line!r}") from err
        help_text = comments.get(node.end_lineno or node.lineno) or comments.get(node.lineno, "")
        if not help_text:
            raise ValueError(f"parameter {name!r} has no '# help' comment at the end of its line")
        param = Parameter(name, ast.unparse(node.annotation), default, help_text)
        if not conforms(default, param.type):
            raise ValueError(f"parameter {name!r}: default {default!r} does not match its type {param.annotation}")
        if name in params:
            raise ValueError(f"parameter {name!r} is declared twice")
        params[name] = param
    return params


def notebook_parameters(path: str | Path) -> dict[str, Parameter]:
    """Read ``path`` and parse its parameters cell; also check the required ``seed``, ``device``, ``profile``."""
    _, cell = parameters_cell(nbformat.read(path, as_version=4))
    params = parse_parameters(cell.source)
    for name, annotation in REQUIRED.items():
        if name not in params or params[name].annotation != annotation:
            raise ValueError(
                f"{Path(path).name}: the parameters cell must declare '{name}: {annotation} = ...  # help'"
            )
    if params["profile"].default != "default":
        raise ValueError(f"{Path(path).name}: the default of 'profile' must be 'default'")
    return params


def conforms(value: Any, tp: Any) -> bool:
    """True if ``value`` matches the annotation type ``tp`` (ints are accepted where floats are declared)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is None or tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and (
            not args or all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
        )
    return isinstance(value, origin or tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Turn a YAML string such as ``1e-3`` (YAML 1.1 reads it as text) into a float where a float is declared."""
    if isinstance(value, str) and (tp is float or float in typing.get_args(tp)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` from the command line; each value is read as YAML (``3``, ``[a, b]``, ``true``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"parameter override {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def profile_path(notebook: str | Path, profile: str) -> Path:
    """Where the profile file of a chapter lives: ``notebooks/params/<profile>/<stem>.yaml``."""
    notebook = Path(notebook)
    return notebook.parent / "params" / profile / f"{notebook.stem}.yaml"


def load_profile(notebook: str | Path, profile: str) -> dict[str, Any]:
    """Values that ``profile`` changes for ``notebook`` (empty for ``default``; ``gpu`` starts from ``smoke``); a
    missing profile file is an error."""
    check_choice("profile", profile, PROFILES)
    if profile == "default":
        return {}
    base = load_profile(notebook, BASE_PROFILE[profile]) if profile in BASE_PROFILE else {}
    path = profile_path(notebook, profile)
    if not path.exists():
        raise ValueError(f"parameter 'profile': {Path(notebook).stem} has no {profile!r} profile (expected {path})")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"profile file {path} must hold a mapping of parameter names to values")
    return {**base, **values}


def resolve(
    notebook: str | Path, profile: str = "default", overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Parameter]]:
    """Merge the parameters cell, the profile file and ``overrides``; check names and types before any compute.

    Returns (values, declared) where ``values`` holds every parameter, with ``profile`` set to the profile name.
    """
    declared = notebook_parameters(notebook)
    changes = {**load_profile(notebook, profile), **(overrides or {})}
    if "profile" in changes:
        raise ValueError(f"parameter 'profile' is set by the runner; choose it with --profile from {list(PROFILES)}")
    unknown = sorted(set(changes) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {Path(notebook).stem}; allowed: {sorted(declared)}")
    values = {name: p.default for name, p in declared.items()}
    for name, value in changes.items():
        value = _coerce(value, declared[name].type)
        if not conforms(value, declared[name].type):
            raise ValueError(f"parameter {name!r} must be of type {declared[name].annotation}, got {value!r}")
        values[name] = value
    values["profile"] = profile
    return values, declared
