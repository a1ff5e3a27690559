"""Shared fixtures: tiny data made in temporary folders and tiny configs (no network, no ../shared)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import scipy.io
from omegaconf import DictConfig

from lookalike.data.synthetic import synthetic_products
from tests.helpers import TINY_DATA, Place, compose_config, tiny_overrides, write_image, write_omniglot_part

@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the synthetic set, shared by the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(data_cache: Path, tmp_path: Path) -> DictConfig:
    return compose_config(tiny_overrides(data_cache, tmp_path / "run"))


@pytest.fixture
def fake_omniglot(tmp_path: Path) -> Path:
    """Omniglot with 3 background alphabets (12 characters) and 2 evaluation alphabets, unpacked."""
    root = tmp_path / "omniglot"
    write_omniglot_part(root, "images_background", ["Balinese", "Greek", "Korean"], characters=4)
    write_omniglot_part(root, "images_evaluation", ["Sanskrit", "Tagalog"])
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An image folder with 6 classes of 5 images each."""
    root = tmp_path / "folder"
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    for c, color in enumerate(colors):
        for i in range(5):
            write_image(root / f"class_{c}" / f"img_{i}.jpg", color, seed=10 * c + i)
    return root


@pytest.fixture
def fake_cub(tmp_path: Path) -> Path:
    """CUB-200-2011's published layout with 200 classes of 2 images each (tiny JPEGs)."""
    root = tmp_path / "CUB_200_2011"
    lines, labels = [], []
    rng = np.random.default_rng(0)
    for c in range(1, 201):
        for j in range(2):
            i = len(lines) + 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            write_image(root / "images" / rel, tuple(int(v) for v in rng.integers(0, 255, 3)), size=16, seed=i)
            lines.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny training run shared by the tests: its report (checkpoint, embedder file, metrics). It exports
    the best checkpoint's weights as they are (``select.alphas=[1.0]``), so the two are one model; the choice
    among interpolations is tested in test_training.py."""
    from lookalike.train import run

    base = tmp_path_factory.mktemp("trained")
    return run(compose_config(tiny_overrides(base / "cache", base / "run") + ["logger=none", "select.alphas=[1.0]"]))




@pytest.fixture
def catalogue(trained: dict, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A manifest of the test products' catalogue pictures, and their photos with labels."""
    cache = Path(trained["embedder"]).parents[1] / "cache"
    test = synthetic_products(cache, **TINY_DATA).test
    names = test.label_names()
    rows = ["path,label"] + [f"{p},{n}" for p, n in zip(test.paths, names) if p.endswith("catalogue.jpg")]
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    photos = [(p, n) for p, n in zip(test.paths, names) if "photo" in p]
    return tmp_path / "catalog.csv", [p for p, _ in photos], [n for _, n in photos]


@pytest.fixture
def fake_cars(tmp_path: Path) -> Path:
    """Cars196's published layout (cars_annos.mat, car_ims/) with 196 classes of 2 images, each with a box."""
    root = tmp_path / "cars196"
    n = 196 * 2
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]
    annos = np.zeros((1, n), dtype=dtype)
    for i in range(n):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(root / rel, (i % 255, 80, 160), size=16, seed=i)
        annos[0, i] = (rel, 1, 2, 11, 9, i // 2 + 1, i % 2)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annos})
    return root


@pytest.fixture
def fake_sop(tmp_path: Path) -> Path:
    """Stanford Online Products' layout: 6 training and 3 test products of 4 pictures each."""
    root = tmp_path / "Stanford_Online_Products"
    for name, classes in (("Ebay_train.txt", range(1, 7)), ("Ebay_test.txt", range(7, 10))):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for j in range(4):
                rel = f"bicycle_final/{c}_{j}.JPG"
                write_image(root / rel, (c * 25, 200 - c * 20, 90), size=16, seed=10 * c + j)
                lines.append(f"{len(lines)} {c} 1 {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def fake_inshop(tmp_path: Path) -> Path:
    """DeepFashion In-Shop's layout: 6 training items of 4 pictures, 3 test items with 2 queries and 2 gallery
    pictures each."""
    root = tmp_path / "inshop"
    rows = []
    for item in range(1, 10):
        status = ["train"] * 4 if item <= 6 else ["query", "query", "gallery", "gallery"]
        for j, s in enumerate(status):
            path = f"img/WOMEN/Dresses/id_{item:08d}/{j:02d}_1_front.jpg"
            write_image(root / path, (item * 25, 90, 200 - item * 20), size=16, seed=10 * item + j)
            rows.append(f"{path} id_{item:08d} {s}")
    (root / "list_eval_partition.txt").write_text("\n".join([str(len(rows)), "image_name item_id evaluation_status",
                                                               *rows]) + "\n")
    return root


@pytest.fixture
def fake_manifest(tmp_path: Path) -> Path:
    """A catalogue manifest (path,label) of 8 products with 4 pictures each, paths relative to it."""
    root = tmp_path / "shop"
    rows = ["path,label"]
    for sku in range(8):
        for j in range(4):
            write_image(root / "img" / f"{sku}_{j}.jpg", (sku * 30, 60, 220 - sku * 25), seed=10 * sku + j)
            rows.append(f"img/{sku}_{j}.jpg,SKU-{sku:03d}")
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    return root / "catalog.csv"


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus server's URI: ``LOOKALIKE_MILVUS_URI``'s, else a standalone server started for the session from
    the ``milvus`` package (Milvus 2.3's own server, which the dev extra installs on Linux x86-64)."""
    if uri := os.environ.get("LOOKALIKE_MILVUS_URI"):
        yield uri
        return
    milvus = pytest.importorskip("milvus", reason="no Milvus server: set LOOKALIKE_MILVUS_URI or `pip install "
                                                  "milvus` (Linux x86-64)")
    server = milvus.MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    server.start()  # on the first free port from 19530, waiting until the server answers
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.slow)])
def milvus_place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """A Milvus collection to build: in a Milvus Lite file (fast suite) or on a Milvus server (slow suite)."""
    return Place("milvus", str(tmp_path / "c.db")) if request.param == "lite" else \
        request.getfixturevalue("milvus_collection")


@pytest.fixture
def milvus_collection(milvus_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Place]:
    """A collection of the test's own on the Milvus server, dropped after it (with the build's work folder in the
    test's folder)."""
    from pymilvus import MilvusClient

    monkeypatch.chdir(tmp_path)  # a server build keeps its progress beside the working folder
    name = f"t{uuid.uuid4().hex[:12]}"
    yield Place("milvus", milvus_server, name)
    client = MilvusClient(milvus_server, dedicated=True)
    for made in client.list_collections():
        if made.startswith(name):
            client.drop_collection(made)
    client.close()
