"""Benchmark and manifest loaders, each on a tiny fake of its published layout built here."""

from __future__ import annotations

from pathlib import Path

import zipfile

import pytest

from lookalike.data.benchmarks import cars196, inshop, stanford_online_products
from lookalike.data.cub import cub200
from lookalike.data.images import ImageDataset
from lookalike.data.manifest import manifest
from lookalike.data.omniglot import omniglot
from lookalike.errors import LookalikeError
from tests.helpers import write_image, write_omniglot_part


def _identity(image):
    return {"image": image}


def test_cub_crop_to_box(fake_cub: Path) -> None:
    lines = [f"{i} 2 3 8 5" for i in range(1, 401)]
    (fake_cub / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    s = cub200(fake_cub, crop_to_box=True)
    assert s.train.boxes is not None and s.train.boxes.shape == (200, 4)
    assert ImageDataset(s.train, _identity)[0]["image"].shape == (5, 8, 3)


def test_cars196_standard_split_and_boxes(fake_cars: Path) -> None:
    s = cars196(fake_cars, crop_to_box=True)
    assert s.train.num_classes == 98 and s.test.num_classes == 98 and len(s.train) == 196
    assert s.train.labels.max() == 97 and s.test.labels.min() == 98
    assert s.train.boxes[0].tolist() == [1, 2, 10, 7]
    assert ImageDataset(s.train, _identity)[0]["image"].shape == (7, 10, 3)


def test_sop_layout(tmp_path: Path) -> None:
    root = tmp_path / "Stanford_Online_Products"
    for name, classes in (("Ebay_train.txt", (1, 2, 3)), ("Ebay_test.txt", (4, 5))):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for j in range(2):
                rel = f"bicycle_final/{c}_{j}.JPG"
                write_image(root / rel, (c * 40, 10, 10), size=8)
                lines.append(f"{len(lines)} {c} 1 {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    s = stanford_online_products(root)
    assert s.train.num_classes == 3 and s.test.num_classes == 2 and len(s.test) == 4
    assert Path(s.test.paths[0]).is_file() and s.test.is_query.all() and s.test.is_gallery.all()


def test_inshop_query_gallery_protocol(tmp_path: Path) -> None:
    root = tmp_path / "inshop"
    rows = [("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
            ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
            ("img/MEN/Shirts/id_00000007/01_1_front.jpg", "id_00000007", "query"),
            ("img/MEN/Shirts/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
            ("img/MEN/Shirts/id_00000009/01_1_front.jpg", "id_00000009", "gallery")]
    for path, _, _ in rows:
        write_image(root / path, (20, 20, 20), size=8)
    text = [str(len(rows)), "image_name item_id evaluation_status"] + [" ".join(r) for r in rows]
    (root / "list_eval_partition.txt").write_text("\n".join(text) + "\n")
    s = inshop(root)
    assert len(s.train) == 2 and s.train.is_query.all() and s.train.is_gallery.all()
    assert s.test.is_query.tolist() == [True, False, False] and s.test.is_gallery.tolist() == [False, True, True]
    assert s.test.describe().endswith("1 queries / 2 gallery")


def _write_manifest(root: Path, header: str, rows: list[str]) -> Path:
    for row in rows:
        write_image(root / row.split(",")[0], (90, 90, 90), size=8)
    (root / "catalog.csv").write_text("\n".join([header, *rows]) + "\n")
    return root / "catalog.csv"


def test_manifest_with_split_and_roles(tmp_path: Path) -> None:
    rows = [f"img/{sku}_{i}.jpg,SKU-{sku},{split},{role}"
            for sku, split in (("a", "train"), ("b", "train"), ("c", "val"), ("d", "test"), ("e", "test"))
            for i, role in enumerate(["gallery", "query", "query"])]
    s = manifest(_write_manifest(tmp_path, "path,label,split,role", rows))
    assert s.train.num_classes == 2 and s.val.num_classes == 1 and s.test.num_classes == 2
    assert s.test.is_gallery.sum() == 2 and s.test.is_query.sum() == 4
    assert s.test.class_names[int(s.test.labels[0])] == "SKU-d"  # text labels keep their names


def test_manifest_without_split_is_split_by_class(tmp_path: Path) -> None:
    rows = [f"img/{c}_{i}.jpg,{c}" for c in "abcd" for i in range(2)]
    s = manifest(_write_manifest(tmp_path, "path,label", rows), train_classes=3)
    assert s.train.num_classes == 3 and s.test.num_classes == 1


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="Manifest"):
        manifest(tmp_path / "nope.csv")
    (tmp_path / "m.csv").write_text("file,class\nx.jpg,1\n")
    with pytest.raises(LookalikeError, match="columns path and label"):
        manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label,split\nx.jpg,1,training\n")
    with pytest.raises(LookalikeError, match="unknown split"):
        manifest(tmp_path / "m.csv")


def _fake_omniglot_zip(root: Path, part: str, alphabets: list[str]) -> None:
    """``root/part.zip`` as published: one top folder ``part/<Alphabet>/characterNN/*.png``."""
    write_omniglot_part(root / "staging", part, alphabets, drawings=3)
    with zipfile.ZipFile(root / f"{part}.zip", "w") as z:
        for f in sorted((root / "staging").rglob("*.png")):
            z.write(f, f.relative_to(root / "staging"))


def test_omniglot_zips_split_by_alphabet(tmp_path: Path) -> None:
    root = tmp_path / "omniglot"
    root.mkdir()
    _fake_omniglot_zip(root, "images_background_small1", ["Balinese", "Greek", "Korean"])
    _fake_omniglot_zip(root, "images_background_small2", ["Greek", "Tagalog"])
    s = omniglot(root, ["images_background_small1"], ["images_background_small2"], cache_dir=tmp_path / "cache")
    # Greek is in both parts, so in neither split; a class is one character of one alphabet
    assert s.train.class_names == ["Balinese/character01", "Balinese/character02", "Korean/character01",
                                   "Korean/character02"]
    assert s.test.class_names == ["Tagalog/character01", "Tagalog/character02"]
    assert len(s.train) == 12 and len(s.test) == 6 and s.test.num_classes == 2
    assert ImageDataset(s.test, _identity)[0]["image"].shape == (12, 12, 3)
    unpacked = omniglot(root / "staging", ["images_background_small1"], ["images_background_small2"])
    assert unpacked.train.class_names == s.train.class_names  # unpacked folders work as the zips do


def test_omniglot_missing_part_names_layout(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="images_evaluation"):
        omniglot(tmp_path)


@pytest.mark.parametrize("loader", [cars196, stanford_online_products, inshop])
def test_missing_benchmarks_name_path_and_layout(loader, tmp_path: Path) -> None:
    with pytest.raises(LookalikeError) as e:
        loader(tmp_path)
    assert "data.root" in str(e.value) and str(tmp_path) in str(e.value)
