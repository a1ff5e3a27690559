"""Data sources, splits and PK batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.data.cub import cub200
from lookalike.data.datamodule import RetrievalDataModule
from lookalike.data.image_folder import image_folder as read_split
from lookalike.data.images import load_rgb
from lookalike.data.synthetic import synthetic_products
from lookalike.errors import LookalikeError
from lookalike.models.lit_embedder import build
from tests.conftest import compose_config

PRE = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 1.0}


def test_synthetic_products_are_deterministic_cached_and_class_disjoint(tmp_path: Path) -> None:
    args = dict(num_train_products=4, num_test_products=3, photos_per_product=2, image_size=32, seed=3)
    a = synthetic_products(tmp_path / "a", **args)
    b = synthetic_products(tmp_path / "b", **args)
    assert len(a.train) == 4 * 3 and len(a.test) == 3 * 3
    assert set(a.train.labels).isdisjoint(a.test.labels)
    for pa, pb in zip(a.train.paths + a.test.paths, b.train.paths + b.test.paths):
        assert np.array_equal(load_rgb(pa), load_rgb(pb))
    first = Path(a.train.paths[0]).stat().st_mtime_ns
    again = synthetic_products(tmp_path / "a", **args)  # cached: nothing is rewritten
    assert Path(again.train.paths[0]).stat().st_mtime_ns == first
    other = synthetic_products(tmp_path / "a", **{**args, "seed": 4})
    assert not np.array_equal(load_rgb(other.train.paths[0]), load_rgb(a.train.paths[0]))


def test_synthetic_photo_to_catalogue_protocol(tmp_path: Path) -> None:
    s = synthetic_products(tmp_path, num_train_products=2, num_test_products=2, photos_per_product=3,
                           image_size=32, test_protocol="photo_to_catalogue")
    assert s.test.is_gallery.sum() == 2 and s.test.is_query.sum() == 6
    assert all("catalogue" in p for p, g in zip(s.test.paths, s.test.is_gallery) if g)


def test_image_folder_split_by_share_and_by_names(image_folder: Path) -> None:
    s = read_split(image_folder, train_classes=0.5)
    assert s.train.num_classes == 3 and s.test.num_classes == 3 and len(s.train) == 15
    assert set(s.train.labels).isdisjoint(s.test.labels)
    s = read_split(image_folder, train_classes=["class_0", "class_5"], test_classes=["class_2"])
    assert sorted(set(s.train.labels)) == [0, 5] and set(s.test.labels) == {2}
    with pytest.raises(LookalikeError, match="not in the data set"):
        read_split(image_folder, train_classes=["nope"])


def test_cub_standard_split(fake_cub: Path) -> None:
    s = cub200(fake_cub)
    assert s.train.num_classes == 100 and s.test.num_classes == 100
    assert s.train.labels.max() == 99 and s.test.labels.min() == 100
    assert all(Path(p).exists() for p in s.train.paths[:5])


@pytest.mark.parametrize("root", [None, "/nonexistent/CUB_200_2011"])
def test_missing_cub_names_path_and_layout(root: str | None) -> None:
    with pytest.raises(LookalikeError) as e:
        cub200(root)
    assert "data.root" in str(e.value) and "image_class_labels.txt" in str(e.value)
    if root:
        assert root in str(e.value)


def test_load_rgb_converts_modes_and_reports_corrupt_files(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (5, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_rgb(str(tmp_path / "gray.png")).shape == (4, 5, 3)
    assert (load_rgb(str(tmp_path / "clear.png")) == 255).all()  # transparency shows as white
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(LookalikeError, match="bad.jpg"):
        load_rgb(str(tmp_path / "bad.jpg"))


def test_datamodule_pk_batches_and_class_disjoint_validation(image_folder: Path) -> None:
    cfg = compose_config(["data=image_folder", f"data.root={image_folder}", "data.batch_size=8", "sampler.m=4"])
    dm = RetrievalDataModule(read_split(image_folder, 4 / 6), PRE, sampler=build(cfg.sampler, "sampler"),
                             batch_size=8, val_classes=2)
    assert dm.train_table.num_classes == 2 and dm.val_table.num_classes == 2 and dm.test_table.num_classes == 2
    assert not set(dm.val_table.paths) & set(dm.train_table.paths)
    assert sorted(set(dm.train_table.labels)) == [0, 1]  # relabelled for proxy losses
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert sorted(Counter(batch["label"].tolist()).values()) == [4, 4]


def test_datamodule_explains_impossible_pk_batches(image_folder: Path) -> None:
    cfg = compose_config(["sampler.m=3"])
    dm = RetrievalDataModule(read_split(image_folder, 4 / 6), PRE, sampler=build(cfg.sampler, "sampler"),
                             batch_size=8, val_classes=2)
    with pytest.raises(LookalikeError, match="multiple of m"):
        dm.train_dataloader()
