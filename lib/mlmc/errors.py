"""Parameter validation with errors that name the parameter and its allowed values (every chapter).

Each helper raises ``ValueError`` before any compute, so a bad papermill parameter fails in the first cell of a
chapter with a message a reader can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _show(values: Iterable[Any]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise naming ``name`` and the allowed values."""
    if value not in allowed:
        raise ValueError(f"parameter {name!r} must be one of {_show(allowed)}, got {value!r}")
    return value


def check_subset(name: str, values: Iterable[Any], allowed: Sequence[Any], *, min_size: int = 1) -> list[Any]:
    """Return ``list(values)`` if every item is allowed, there are no duplicates and at least ``min_size`` items."""
    if isinstance(values, str):
        raise ValueError(f"parameter {name!r} must be a list from {_show(allowed)}, got the string {values!r}")
    items = list(values)
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(f"parameter {name!r} has unknown value(s) {_show(bad)}; allowed: {_show(allowed)}")
    if len(set(map(repr, items))) != len(items):
        raise ValueError(f"parameter {name!r} has duplicate values: {_show(items)}")
    if len(items) < min_size:
        raise ValueError(f"parameter {name!r} needs at least {min_size} value(s) from {_show(allowed)}, got {items!r}")
    return items


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> Any:
    """Return a number that is > 0 (or >= 0 with ``allow_zero``); otherwise raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"parameter {name!r} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"parameter {name!r} must be {bound}, got {value!r}")
    return value


def check_int(name: str, value: Any, min_value: int | None = None, max_value: int | None = None) -> int:
    """Return an int within [min_value, max_value] (bounds optional); otherwise raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"parameter {name!r} must be an integer, got {value!r}")
    if min_value is not None and value < min_value:
        raise ValueError(f"parameter {name!r} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"parameter {name!r} must be <= {max_value}, got {value}")
    return value


def check_range(name: str, value: Any, lo: float, hi: float) -> float:
    """Return a number in the closed interval [lo, hi]; otherwise raise naming ``name`` and the interval."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"parameter {name!r} must be a number in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"parameter {name!r} must be in [{lo}, {hi}], got {value!r}")
    return value


def check_device(name: str, value: Any) -> str:
    """Return ``value`` if it names a usable torch device (``cpu``, ``cuda``, ``cuda:<n>``); raise before any compute
    otherwise, e.g. ``cuda`` on a machine without a GPU (every chapter's ``device`` parameter)."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"parameter {name!r} must be 'cpu', 'cuda' or 'cuda:<n>', got {value!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"parameter {name!r}={value!r} needs a GPU, but none is visible to torch; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"parameter {name!r}={value!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    return str(value)
