"""Where the Hydra configs live: inside the installed package, or the repository's conf/ folder."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"
