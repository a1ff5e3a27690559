"""A picture of what training sees after augmentation (``lookalike augment-preview``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from lookalike.config import build
from lookalike.data.images import load_rgb
from lookalike.errors import LookalikeError


def augment_grid(paths: list[str], augment, views: int, size: int, seed: int) -> Image.Image:
    """One row per image: the original, then ``views`` augmented versions, each ``size`` pixels square."""
    if augment is not None and hasattr(augment, "set_random_seed"):
        augment.set_random_seed(seed)
    canvas = Image.new("RGB", ((views + 1) * (size + 4), len(paths) * (size + 4)), (255, 255, 255))
    for r, path in enumerate(paths):
        image = load_rgb(path)
        tiles = [image] + [augment(image=image)["image"] if augment is not None else image for _ in range(views)]
        for c, tile in enumerate(tiles):
            pic = Image.fromarray(np.ascontiguousarray(tile)).resize((size, size), Image.BICUBIC)
            canvas.paste(pic, (c * (size + 4), r * (size + 4)))
    return canvas


def augment_preview(cfg: DictConfig) -> Path:
    """Write ``augment_preview.png``: training images of ``cfg.data`` (originals first) under ``cfg.augment``."""
    splits = build(cfg.data.source, "the data set (data=...)")
    rng = np.random.default_rng(cfg.seed)
    table = splits.train
    if len(table) == 0:
        raise LookalikeError("The training split is empty: nothing to preview")
    # one image per class, for as many rows as asked
    firsts = np.unique(table.labels, return_index=True)[1]
    rows = rng.choice(firsts, size=min(cfg.preview.rows, len(firsts)), replace=False)
    augment = build(cfg.augment, "the augmentation (augment=...)") if cfg.get("augment") else None
    grid = augment_grid([table.paths[i] for i in rows], augment, cfg.preview.views, cfg.preview.size, cfg.seed)
    out = Path(cfg.preview.out or Path(cfg.paths.output_dir) / "augment_preview.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"augmentation preview ({len(rows)} images x {cfg.preview.views} views): {out}")
    return out
