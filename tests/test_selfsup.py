"""Catalogues without labels: each image its own class, held-out photo -> catalogue evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.config import compose
from lookalike.data.listing import read_rows
from lookalike.cli.pseudo_labels import main as pseudo_labels_main
from lookalike.data.pseudo_labels import read_pseudo_labels
from lookalike.embedder.clusters import cluster
from lookalike.data.unlabeled import unlabeled_folder
from lookalike.errors import LookalikeError
from lookalike.embedder.file import save_embedder
from lookalike.models.embedder import Embedder
from lookalike.data.datamodule import build_datamodule
from tests.helpers import TINY_MODEL, write_image


@pytest.fixture
def unlabeled(tmp_path: Path) -> Path:
    """20 images of different colours, some in a sub-folder whose name is not a label."""
    root = tmp_path / "catalogue"
    for i in range(20):
        write_image(root / ("shelf" if i % 3 else "") / f"item_{i:02d}.jpg", (12 * i, 255 - 12 * i, 90), size=32,
                    seed=i)
    return root


def test_unlabeled_folder_holds_out_images_and_renders_query_photos(unlabeled: Path, tmp_path: Path) -> None:
    splits = unlabeled_folder(unlabeled, val_images=0.1, test_images=0.2, seed=0, cache_dir=tmp_path / "cache")
    train, val, test = splits.train, splits.val, splits.test
    assert (len(train), len(val), len(test)) == (14, 4, 8)  # 2 + 4 held-out images, each with its photo
    assert len(set(train.paths) | {p for t in (val, test) for p in t.paths[: len(t) // 2]}) == 20
    assert sorted(train.labels) == list(range(14))  # every training image its own class
    for table in (val, test):
        n = len(table) // 2
        gallery, queries = table.paths[:n], table.paths[n:]
        assert table.is_gallery[:n].all() and not table.is_query[:n].any()
        assert table.is_query[n:].all() and not table.is_gallery[n:].any()
        assert np.array_equal(table.labels[:n], table.labels[n:])  # a photo's answer is its source image
        assert all(Path(q).parent.name == "query-photos" for q in queries) and set(gallery).isdisjoint(queries)
    again = unlabeled_folder(unlabeled, val_images=0.1, test_images=0.2, seed=0, cache_dir=tmp_path / "cache")
    assert again.test.paths == test.paths  # same split and the same cached photos
    stamps = [Path(p).stat().st_mtime_ns for p in test.paths[4:]]
    assert [Path(p).stat().st_mtime_ns for p in again.test.paths[4:]] == stamps  # not rendered again


def test_unlabeled_folder_follows_linked_folders(unlabeled: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "shelf").symlink_to(unlabeled / "shelf", target_is_directory=True)
    splits = unlabeled_folder(linked, val_images=0.1, test_images=0.1, cache_dir=tmp_path / "cache")
    assert len(splits.train) + (len(splits.val) + len(splits.test)) // 2 == 13  # the 13 images in shelf/


def test_unlabeled_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="data.root"):
        unlabeled_folder(tmp_path / "nowhere")
    write_image(tmp_path / "two" / "a.jpg", (1, 2, 3))
    write_image(tmp_path / "two" / "b.jpg", (1, 2, 3))
    with pytest.raises(LookalikeError, match="too few"):
        unlabeled_folder(tmp_path / "two")


def test_instance_batches_hold_two_views_of_each_image(unlabeled: Path, tmp_path: Path) -> None:
    cfg = compose("train", [*TINY_MODEL, "experiment=selfsup_catalog", f"data.root={unlabeled}", "data.num_workers=0",
                            "data.batch_size=8", f"paths.cache_dir={tmp_path / 'cache'}"])
    dm = build_datamodule(cfg)
    dm.preprocessing = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                        "interpolation": "bilinear", "crop_pct": 1.0}
    assert dm.num_train_classes == len(dm.train_table) == 16
    batch = next(iter(dm.train_dataloader()))
    labels, counts = torch.unique(batch["label"], return_counts=True)
    assert len(labels) == 4 and (counts == 2).all()
    views = batch["image"].view(4, 2, *batch["image"].shape[1:]) if torch.equal(
        batch["label"][0::2], batch["label"][1::2]) else None
    assert views is not None and not torch.equal(views[:, 0], views[:, 1])  # two different augmentations
    assert len(dm.train_dataloader()) == 16 * 2 // 8  # an epoch: every image about once, as 2 views


def test_kmeans_pseudo_labels_find_separated_groups() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]
    x = np.repeat(centres, 10, axis=0) + rng.normal(0, 0.05, (30, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = cluster(x, 3)
    assert all(len(set(labels[i * 10:(i + 1) * 10])) == 1 for i in range(3)) and len(set(labels)) == 3
    with pytest.raises(LookalikeError, match="between 2 and half"):
        cluster(x, 16)


def test_pseudo_labels_command_labels_the_training_images(unlabeled: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    embedder = save_embedder(Embedder({"name": "test_efficientnet", "pretrained": False}, {"embedding_size": 16}, 32),
                             tmp_path / "embedder.pt")
    out = tmp_path / "clusters.csv"
    pseudo_labels_main(["--embedder", str(embedder), "--images", str(unlabeled), "--clusters", "4", "--out", str(out),
                        "--workers", "0"])
    rows = read_rows(out)
    assert len(rows) == 20 and 1 <= len({r["label"] for r in rows}) <= 4
    plain = unlabeled_folder(unlabeled, 0.1, 0.2, seed=0, cache_dir=tmp_path / "cache")
    splits = unlabeled_folder(unlabeled, 0.1, 0.2, seed=0, cache_dir=tmp_path / "cache", pseudo_labels=out)
    assert splits.train.paths == plain.train.paths and splits.test.paths == plain.test.paths  # same held-out images
    clusters = [read_pseudo_labels(out)[str(Path(p).resolve())] for p in splits.train.paths]
    same_label = splits.train.labels[:, None] == splits.train.labels[None, :]
    assert np.array_equal(same_label, np.array(clusters)[:, None] == np.array(clusters)[None, :])
    with pytest.raises(LookalikeError, match="lookalike pseudo-labels"):
        unlabeled_folder(unlabeled, pseudo_labels=tmp_path / "missing.csv")
    dropped = str(Path(splits.train.paths[0]).resolve())  # an image added after the clustering
    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join(line for line in out.read_text().splitlines() if not line.startswith(dropped)))
    with caplog.at_level(logging.WARNING):
        fewer = unlabeled_folder(unlabeled, 0.1, 0.2, seed=0, cache_dir=tmp_path / "cache", pseudo_labels=partial)
    assert fewer.train.paths == splits.train.paths[1:] and "left out 1 training image" in caplog.text


def test_unlabeled_images_without_instances_or_clusters_stop_with_one_message(unlabeled: Path, tmp_path: Path) -> None:
    cfg = compose("train", [*TINY_MODEL, "experiment=selfsup_pseudo", f"data.root={unlabeled}", "data.num_workers=0",
                            f"paths.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(LookalikeError, match="data.instances=true.*pseudo_labels"):
        build_datamodule(cfg).setup("fit")
