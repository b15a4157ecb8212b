"""Provenance of a run: git commit, device and software versions (run-parameters tables and ``env.json``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_sha(root: str | Path | None = None) -> str:
    """Short commit of the checkout holding ``root`` (default: this package's source), with ``-dirty`` when tracked
    files changed; ``unknown`` outside git."""
    root = root or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_description(device: str) -> str:
    """Human-readable device: the GPU name for CUDA devices, else the CPU architecture and core count."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.machine()}, {os.cpu_count()} CPU cores)"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(params: dict[str, Any]) -> dict[str, Any]:
    """The ``env.json`` record of a run: versions, device, threads, seed and git commit."""
    import torch

    device = str(params.get("device", "cpu"))
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in ("mlmc", "torch", "transformers", "datasets", "numpy", "pandas")},
        "device": device_description(device),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "seed": params.get("seed"),
        "profile": params.get("profile", "default"),
        "git": git_sha(),
    }
