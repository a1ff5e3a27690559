"""What a run needs to be reproduced: git commit and dirty flag, library versions, seed, command line."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("lookalike", "torch", "torchvision", "timm", "lightning", "pytorch-metric-learning", "albumentations",
            "hydra-core", "omegaconf", "numpy", "faiss-cpu", "faiss-gpu-cu12", "wandb", "optuna")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance(seed: int, source: Path | None = None) -> dict[str, Any]:
    """The git state of the code (the repository holding this package, if any), versions, seed and argv."""
    source = source or Path(__file__).resolve().parent
    commit = _git("rev-parse", "HEAD", cwd=source)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain", cwd=source)) if commit else None,
        "versions": versions,
        "python": platform.python_version(),
        "seed": seed,
        "command": " ".join(sys.argv),
    }
