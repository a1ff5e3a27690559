"""Where the Hydra configs live: inside the installed package, or the repository's conf/ folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from lookalike.errors import LookalikeError


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The config ``python train.py OVERRIDES`` (or ``lookalike evaluate`` for ``"eval"``) would run, for
    use from Python: ``lookalike.train.run(compose("train", ["paths.output_dir=out"]))``. Keys that
    refer to Hydra's run folder need ``paths.output_dir`` set."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


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
