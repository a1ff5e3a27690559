"""``python train.py [overrides]`` / ``lookalike train [overrides]``, and ``-m`` sweeps (conf/train.yaml)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lookalike.config import hydra_main


def train(cfg: DictConfig) -> Any:
    from lookalike.train import train_task  # once the command line is read: --help answers at once

    return train_task(cfg)


def main(argv: list[str] | None = None) -> None:
    hydra_main("train", train, argv, prog="lookalike train")
