"""``lookalike augment-preview [overrides]``: a PNG of training images under an augmentation (conf/train.yaml)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lookalike.config import hydra_main


def preview(cfg: DictConfig) -> Any:
    from lookalike.data.preview import augment_preview  # once the command line is read

    return augment_preview(cfg)


def main(argv: list[str] | None = None) -> None:
    hydra_main("train", preview, argv, prog="lookalike augment-preview")
