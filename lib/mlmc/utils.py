"""Small shared utilities: seeding, thread count, stable hashing, atomic directory writes (all chapters)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is repeatable on the same machine kind."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int = 1) -> None:
    """Set torch's intra-op threads; tiny models run several times faster on one thread than on two."""
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, set | frozenset | tuple):
        return sorted(o, key=repr) if isinstance(o, set | frozenset) else list(o)
    if hasattr(o, "__dict__"):
        return vars(o)
    raise TypeError(f"cannot hash object of type {type(o).__name__}")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (sorted keys), used as a cache key for recipes and runs."""
    blob = json.dumps(obj, sort_keys=True, default=_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success replace ``target`` with it, on error delete it.

    Readers therefore never see a half-written directory: either the old one, or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the finished folder gets ordinary permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
