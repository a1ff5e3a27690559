"""Data sources, splits and PK batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.data.cub import cub200
from lookalike.data.datamodule import RetrievalDataModule
from lookalike.data.image_folder import image_folder as read_split
from lookalike.data.images import load_rgb
from lookalike.data.synthetic import synthetic_products
from lookalike.errors import LookalikeError
from lookalike.config import build
from tests.helpers import compose_config, write_image

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


def _datamodule(image_folder: Path, m: int, batch_size: int, train_share: float = 4 / 6) -> RetrievalDataModule:
    cfg = compose_config([f"sampler.m={m}"])
    return RetrievalDataModule(read_split(image_folder, train_share), PRE, sampler=build(cfg.sampler, "sampler"),
                               batch_size=batch_size, val_classes=2)


def test_classes_smaller_than_m_are_repeated_with_a_warning(tmp_path: Path, caplog) -> None:
    for c in range(8):
        for i in range(3):
            write_image(tmp_path / f"class_{c}" / f"img_{i}.jpg", (30 * c, 90, 90), seed=10 * c + i)
    dm = _datamodule(tmp_path, m=4, batch_size=8, train_share=6 / 8)  # 4 training classes of 3 images
    with caplog.at_level("WARNING"):
        batch = next(iter(dm.train_dataloader()))
    assert "4 training class(es) have fewer than sampler.m=4 images" in caplog.text
    assert sorted(Counter(batch["label"].tolist()).values()) == [4, 4]
    assert len(set(batch["index"].tolist())) <= 6  # 3 distinct images per class at most: drawn with replacement


def test_batches_needing_more_classes_than_exist_and_empty_splits_are_explained(image_folder: Path) -> None:
    with pytest.raises(LookalikeError, match="at most m x number of classes"):
        _datamodule(image_folder, m=2, batch_size=8).train_dataloader()  # 4 classes per batch, 2 exist
    with pytest.raises(LookalikeError, match="The training split is empty"):
        RetrievalDataModule(read_split(image_folder, 0.0), PRE, batch_size=8, val_classes=2).setup("fit")


def test_an_epochs_batches_depend_on_seed_and_epoch_only(image_folder: Path) -> None:
    """Same batches and augmentations with 0 or 2 loader workers, other ones in the next epoch."""
    cfg = compose_config(["sampler.m=4"])
    epochs = []
    for workers, epoch in ((0, 0), (2, 0), (0, 1)):
        dm = RetrievalDataModule(read_split(image_folder, 4 / 6), PRE, sampler=build(cfg.sampler, "sampler"),
                                 augment=build(cfg.augment, "augment"), batch_size=8, val_classes=2,
                                 num_workers=workers)
        dm.load_state_dict({"next_epoch": epoch})  # as when resuming from a checkpoint
        epochs.append(next(iter(dm.train_dataloader())))
    assert torch.equal(epochs[0]["index"], epochs[1]["index"]) and torch.equal(epochs[0]["image"], epochs[1]["image"])
    assert not torch.equal(epochs[0]["image"], epochs[2]["image"])


def test_boxes_are_read_checked_and_clipped() -> None:
    from lookalike.data.images import checked_box, cut, parse_box

    assert parse_box(" 4, 5.5,10,20 ") == (4.0, 5.5, 10.0, 20.0)
    for text in ("4,5,10", "a,b,c,d", "1,2,3,nan"):
        with pytest.raises(LookalikeError, match="x,y,width,height"):
            parse_box(text)
    assert checked_box((90, 10, 50, 20), 100, 40) == (90, 10, 10, 20)  # over the edge: clipped
    for box, message in (((-1, 0, 5, 5), "0 or more"), ((0, 0, 0, 5), "above 0"), ((100, 0, 5, 5), "outside")):
        with pytest.raises(LookalikeError, match=message):
            checked_box(box, 100, 40)
    image = np.arange(40 * 100 * 3, dtype=np.uint8).reshape(40, 100, 3)
    assert np.array_equal(cut(image, (10, 5, 20, 8)), image[5:13, 10:30])


def test_manifest_boxes_crop_their_images_and_bad_ones_get_one_message(fake_manifest: Path) -> None:
    from lookalike.data.images import ImageDataset
    from lookalike.data.manifest import manifest

    lines = fake_manifest.read_text().splitlines()
    boxed = [lines[0] + ",x,y,width,height"] + [f"{row},2,3,10,12" if i % 2 == 0 else f"{row},,,,"
                                                for i, row in enumerate(lines[1:])]
    fake_manifest.write_text("\n".join(boxed) + "\n")
    splits = manifest(fake_manifest, train_classes=0.5, crop_to_box=True)
    table = splits.train
    first = ImageDataset(table, lambda image: {"image": image})
    assert table.boxes[0].tolist() == [2, 3, 10, 12] and np.isnan(table.boxes[1]).all()
    assert first[0]["image"].shape == (12, 10, 3) and first[1]["image"].shape == (24, 24, 3)
    assert manifest(fake_manifest, train_classes=0.5).train.boxes is None  # boxes only when asked
    for cells, message in (("-1,0,5,5", "0 or more"), ("0,0,5,0", "above 0"), ("30,0,5,5", "outside the 24 x 24"),
                           ("a,b,c,d", "x,y,width,height")):
        fake_manifest.write_text("\n".join([boxed[0], f"{lines[1]},{cells}", *boxed[2:]]) + "\n")
        with pytest.raises(LookalikeError, match=f"line 2 .*{message}"):
            manifest(fake_manifest, crop_to_box=True)
    fake_manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(LookalikeError, match="crop_to_box needs the columns x,y,width,height"):
        manifest(fake_manifest, crop_to_box=True)
