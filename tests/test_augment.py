"""Augmentation pipelines, background replacement, robust decoding, the resize cache and the preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.data.augment import ReplaceBackground
from lookalike.data.cache import resized_table
from lookalike.data.images import ImageDataset, load_rgb
from lookalike.data.preview import augment_preview
from lookalike.data.table import ImageTable
from lookalike.data.transforms import eval_resize, eval_transform, train_transform
from lookalike.config import build
from tests.helpers import TINY_MODEL, compose_config

PRE = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 1.0}


def _catalogue_picture() -> np.ndarray:
    """White background, a dark product with a white dial in its middle."""
    img = np.full((64, 64, 3), 255, np.uint8)
    img[16:48, 16:48] = (30, 30, 120)
    img[28:36, 28:36] = 255
    return img


def test_replace_background_keeps_white_inside_the_product() -> None:
    t = ReplaceBackground(p=1.0)
    t.set_random_seed(0)
    changed = [t(image=_catalogue_picture())["image"] for _ in range(5)]
    for out in changed:
        assert (out[30:34, 30:34] == 255).all()  # the dial is not background
        assert (out[20:24, 20:24] == (30, 30, 120)).all()  # the product is untouched
    corners = {tuple(out[2, 2]) for out in changed}
    assert len(corners) > 1 and (255, 255, 255) not in corners  # the background got new surfaces


def test_replace_background_leaves_photos_alone() -> None:
    photo = np.random.default_rng(0).integers(0, 200, (32, 32, 3)).astype(np.uint8)
    assert np.array_equal(ReplaceBackground(p=1.0)(image=photo)["image"], photo)


@pytest.mark.parametrize("name", ["default", "photo", "eval"])
def test_augment_configs_give_model_sized_tensors(name: str) -> None:
    cfg = compose_config([*TINY_MODEL, f"augment={name}"])
    augment = build(cfg.augment, "augment") if cfg.get("augment") else None
    out = train_transform(augment, PRE)(image=_catalogue_picture())["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32)


def test_decoding_odd_images(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grayscale
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (5, 4), 3).save(tmp_path / "palette.png")
    deep = load_rgb(str(tmp_path / "deep.png"))
    assert deep.shape == (4, 5, 3) and abs(int(deep[0, 0, 0]) - 40000 * 255 // 65535) <= 1
    assert load_rgb(str(tmp_path / "cmyk.jpg")).shape == (4, 5, 3)
    assert load_rgb(str(tmp_path / "palette.png")).shape == (4, 5, 3)
    im = Image.new("RGB", (6, 3), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_rgb(str(tmp_path / "rotated.jpg")).shape == (6, 3, 3)


def test_large_jpegs_are_decoded_reduced_for_evaluation(tmp_path: Path) -> None:
    """With min_side, a large JPEG is decoded at the smallest DCT scale that keeps its short side >= min_side,
    and the evaluation input barely differs from one of a full decode; other images decode whole."""
    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    field.save(tmp_path / "big.jpg", quality=92)
    field.save(tmp_path / "big.png")
    big = str(tmp_path / "big.jpg")
    reduced = load_rgb(big, min_side=256)
    assert reduced.shape == (300, 400, 3)  # 1/4 scale; 1/8 would leave a short side of 150 < 256
    assert load_rgb(big, min_side=700).shape == (1200, 1600, 3)  # 1/2 would leave 600 < 700
    assert load_rgb(str(tmp_path / "big.png"), min_side=256).shape == (1200, 1600, 3)
    assert load_rgb(big, max_side=640).shape == (600, 800, 3)  # long side: 1/4 would leave 400 < 640
    assert load_rgb(big, max_side=900).shape == (1200, 1600, 3)
    pre = {**PRE, "input_size": [3, 224, 224], "crop_pct": 0.875}
    assert eval_resize(pre) == 256
    full = eval_transform(pre)(image=load_rgb(big))["image"].float()
    fast = eval_transform(pre)(image=reduced)["image"].float()
    assert full.shape == fast.shape and (full - fast).abs().mean() < 3
    boxed = ImageTable([big], np.zeros(1), boxes=[[0, 0, 800, 600]])
    assert ImageDataset(boxed, eval_transform(pre), min_side=256)[0]["image"].shape == (3, 224, 224)
    assert ImageDataset(boxed, eval_transform(pre), min_side=256).min_side is None  # boxes are in full pixels


def test_resize_cache_decodes_once(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        Image.new("RGB", (200, 100), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    table = ImageTable(paths, np.array([0, 0, 1]), boxes=np.array([[0, 0, 100, 100]] * 3))
    small = resized_table(table, 40, tmp_path / "cache")
    assert [Image.open(p).size for p in small.paths] == [(40, 40)] * 3  # cropped to the box, then resized
    assert small.boxes is None and small.labels.tolist() == [0, 0, 1]
    stamps = [Path(p).stat().st_mtime_ns for p in small.paths]
    again = resized_table(table, 40, tmp_path / "cache")
    assert [Path(p).stat().st_mtime_ns for p in again.paths] == stamps


def test_augment_preview_writes_a_grid(data_cache: Path, tmp_path: Path) -> None:
    cfg = compose_config([*TINY_MODEL, "augment=photo", f"data.root={data_cache}", "data.source.num_train_products=4",
                          "data.source.num_test_products=2", "data.source.photos_per_product=2",
                          "data.source.image_size=40", "preview.rows=3", "preview.views=2", "preview.size=48",
                          f"preview.out={tmp_path / 'p.png'}", f"paths.output_dir={tmp_path}"])
    out = augment_preview(cfg)
    grid = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    assert grid.shape == (3 * 52, 3 * 52, 3)
    tiles = [[grid[r * 52:r * 52 + 48, c * 52:c * 52 + 48] for c in range(3)] for r in range(3)]
    assert all(np.abs(row[0] - view).mean() > 5 for row in tiles for view in row[1:])  # the views are augmented
    assert np.abs(tiles[0][0] - tiles[1][0]).mean() > 5  # one row per product
    again = np.asarray(Image.open(augment_preview(cfg)).convert("RGB"), dtype=np.float32)
    assert np.array_equal(grid, again)  # seeded: the same preview every time
