"""Where the Hydra configs live: inside the installed package, or the repository's conf/ folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from lookalike.errors import LookalikeError


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def hydra_main(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run ``task`` on the config Hydra composes from ``config_name`` and the command line;
    a LookalikeError ends the program with its message alone (exit status 2)."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _main(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except LookalikeError as e:
            print(f"lookalike: error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()
