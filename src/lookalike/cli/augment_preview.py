"""``lookalike augment-preview [overrides]``: a PNG of training images under an augmentation (conf/train.yaml)."""

from __future__ import annotations

from lookalike.config import hydra_main
from lookalike.data.preview import augment_preview


def main(argv: list[str] | None = None) -> None:
    hydra_main("train", augment_preview, argv, prog="lookalike augment-preview")
