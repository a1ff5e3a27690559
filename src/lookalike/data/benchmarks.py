"""Cars196, Stanford Online Products and DeepFashion In-Shop in their published layouts and standard splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root

CARS_LAYOUT = """  ROOT/cars_annos.mat          (the devkit annotations: relative_im_path, bbox_*, class)
  ROOT/car_ims/000001.jpg ...  (unpacked from car_ims.tgz; `lookalike download cars196` fetches both)"""

SOP_LAYOUT = """  ROOT/Ebay_train.txt  ROOT/Ebay_test.txt   (image_id class_id super_class_id path)
  ROOT/bicycle_final/111085122871_0.JPG ...
  (the folder Stanford_Online_Products/ unpacked from Stanford_Online_Products.zip)"""

INSHOP_LAYOUT = """  ROOT/list_eval_partition.txt   (from Eval/; image_name item_id evaluation_status)
  ROOT/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...   (img.zip unpacked)"""


def _check(path: Path, names: list[str], title: str, layout: str) -> None:
    for name in names:
        if not (path / name).exists():
            raise missing_data(path / name, title, layout)


def cars196(root: str | Path, num_train_classes: int = 98, crop_to_box: bool = False) -> Splits:
    """Cars196 (Stanford Cars, 16,185 images): classes 1-98 train, 99-196 test."""
    from scipy.io import loadmat

    path = resolve_root(root, "Cars196", CARS_LAYOUT)
    _check(path, ["cars_annos.mat"], "Cars196", CARS_LAYOUT)
    annos = loadmat(str(path / "cars_annos.mat"))["annotations"][0]

    def field(a: np.void, name: str):
        value = a[name]
        while isinstance(value, np.ndarray):
            value = value.flat[0]
        return value

    paths = [str(path / str(field(a, "relative_im_path"))) for a in annos]
    labels = np.array([int(field(a, "class")) - 1 for a in annos])
    boxes = None
    if crop_to_box:
        x1, y1, x2, y2 = (np.array([float(field(a, f"bbox_{k}")) for a in annos]) for k in ("x1", "y1", "x2", "y2"))
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], 1)
    table = ImageTable(paths, labels, class_names=[f"{c:03d}" for c in range(1, int(labels.max()) + 2)], boxes=boxes)
    return Splits(train=table.subset(labels < num_train_classes), test=table.subset(labels >= num_train_classes))


def _ebay(path: Path, name: str) -> tuple[list[str], np.ndarray]:
    with open(path / name) as f:
        rows = [line.split() for line in f.readlines()[1:] if line.strip()]
    return [str(path / r[3]) for r in rows], np.array([int(r[1]) - 1 for r in rows])


def stanford_online_products(root: str | Path) -> Splits:
    """SOP (120,053 images of 22,634 products): Ebay_train.txt (11,318 classes) / Ebay_test.txt."""
    path = resolve_root(root, "Stanford Online Products", SOP_LAYOUT)
    _check(path, ["Ebay_train.txt", "Ebay_test.txt"], "Stanford Online Products", SOP_LAYOUT)
    train, test = _ebay(path, "Ebay_train.txt"), _ebay(path, "Ebay_test.txt")
    return Splits(train=ImageTable(*train), test=ImageTable(*test))


def inshop(root: str | Path) -> Splits:
    """DeepFashion In-Shop: 'train' items train; 'query' images search the 'gallery' images."""
    path = resolve_root(root, "DeepFashion In-Shop", INSHOP_LAYOUT)
    _check(path, ["list_eval_partition.txt"], "DeepFashion In-Shop", INSHOP_LAYOUT)
    with open(path / "list_eval_partition.txt") as f:
        rows = [line.split() for line in f.readlines()[2:] if line.strip()]
    items = sorted({r[1] for r in rows})
    index = {item: i for i, item in enumerate(items)}
    status = np.array([r[2] for r in rows])
    paths = np.array([str(path / r[0]) for r in rows])
    labels = np.array([index[r[1]] for r in rows])
    train = status == "train"  # training items: leave-one-out among themselves (for validation classes)
    test = ~train
    return Splits(
        train=ImageTable(list(paths[train]), labels[train], class_names=items),
        test=ImageTable(list(paths[test]), labels[test], status[test] == "query", status[test] == "gallery",
                        class_names=items),
    )
