"""``python train.py [overrides]`` / ``lookalike train [overrides]``, and ``-m`` sweeps (conf/train.yaml)."""

from __future__ import annotations

from lookalike.config import hydra_main
from lookalike.train import train_task


def main(argv: list[str] | None = None) -> None:
    hydra_main("train", train_task, argv, prog="lookalike train")
