"""Catalogues without labels: every image is its own class.

Training draws several augmented views of each image (``data.instances=true`` with ``sampler.m`` views),
so a metric-learning loss (NT-Xent, or triplets with in-batch negatives) learns which pictures show the
same item. Validation and test need no labels either: each held-out image is the gallery item, and a
"photo" of it rendered by a held-out augmentation pipeline (ops that training never applies: occlusion,
low resolution, sensor noise, tone curves, tight crops) is the query; the right answer is its source.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import albumentations as A
import numpy as np
from PIL import Image

from lookalike.data.cache import cached_copies
from lookalike.data.images import load_rgb
from lookalike.data.listing import list_image_files
from lookalike.data.pseudo_labels import read_pseudo_labels
from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root
from lookalike.errors import LookalikeError
from lookalike.files import DEFAULT_CACHE_DIR

log = logging.getLogger(__name__)
LAYOUT = """  ROOT/<image>.jpg, ROOT/<any>/<folders>/<image>.png, ...
  (every image below ROOT; folder names are not used as labels)"""
QUERY_PROTOCOL = "heldout-photo-v1"  # part of the cache key: a new protocol renders new queries


def query_photo_transform() -> A.Compose:
    """The held-out "photo of a catalogue item": a tight, rotated crop, low resolution, a tone curve,
    sensor noise and an occluding patch. None of these ops is in the training augmentations."""
    return A.Compose([
        A.RandomResizedCrop(size=(256, 256), scale=(0.35, 0.75), ratio=(0.8, 1.25)),
        A.Rotate(limit=(-20, 20), border_mode=1, p=0.7),
        A.Downscale(scale_range=(0.35, 0.6), p=0.7),
        A.RandomToneCurve(scale=0.3, p=0.7),
        A.ISONoise(color_shift=(0.01, 0.04), intensity=(0.2, 0.5), p=0.6),
        A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(0.15, 0.3), hole_width_range=(0.15, 0.3),
                        fill="random_uniform", p=0.6),
    ])


def image_files(root: str | Path) -> list[str]:
    """Every image file below ``root`` (symbolic links to folders followed), sorted; a clear error if none."""
    path = resolve_root(root, "Unlabeled image folder", LAYOUT)
    files = list_image_files(path)
    if not files:
        raise missing_data(f"{path} (no images)", "Unlabeled image folder", LAYOUT)
    return files


def _query_photo(source: str, seed: int) -> Image.Image:
    transform = query_photo_transform()
    transform.set_random_seed(int(hashlib.sha1(f"{seed}|{source}".encode()).hexdigest()[:8], 16))
    return Image.fromarray(transform(image=load_rgb(source))["image"])


def query_photos(paths: list[str], cache_dir: str | Path, seed: int) -> list[str]:
    """One held-out photo per image (seeded per image), rendered once as JPEG under
    ``cache_dir/query-photos/`` and reused while the source file is unchanged."""
    return cached_copies(paths, [f"{QUERY_PROTOCOL}|{seed}"] * len(paths), Path(cache_dir) / "query-photos",
                         lambda source, _: _query_photo(source, seed), "rendering query photos (once)", quality=85)


def photo_to_catalogue(paths: list[str], cache_dir: str | Path, seed: int) -> ImageTable:
    """Gallery: the images; queries: one held-out photo of each; label: the source image."""
    n = len(paths)
    ids = np.arange(n)
    return ImageTable(paths + query_photos(paths, cache_dir, seed), np.concatenate([ids, ids]),
                      is_query=np.repeat([False, True], n), is_gallery=np.repeat([True, False], n))


def unlabeled_folder(
    root: str | Path,
    val_images: float = 0.1,
    test_images: float = 0.1,
    seed: int = 0,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    pseudo_labels: str | Path | None = None,
) -> Splits:
    """Split the images below ``root`` at random into training images (each its own class) and held-out
    validation and test images evaluated photo -> catalogue (see the module docstring). With
    ``pseudo_labels`` (a CSV of ``lookalike pseudo-labels``) training images take their cluster as class;
    the held-out images and their evaluation stay the same."""
    files = image_files(root)
    order = np.random.default_rng(seed).permutation(len(files))
    n_val, n_test = (max(1, int(round(share * len(files)))) for share in (val_images, test_images))
    if n_val + n_test + 2 > len(files):
        raise missing_data(f"{root} ({len(files)} images: too few to hold out {n_val} validation and {n_test} "
                           "test images and still train)", "Unlabeled image folder", LAYOUT)
    val, test, train = (sorted(files[i] for i in part) for part in
                        np.split(order, [n_val, n_val + n_test]))
    labels = np.arange(len(train))
    if pseudo_labels:
        clusters = read_pseudo_labels(pseudo_labels)
        cluster_of = {p: clusters[os.path.abspath(p)] for p in train if os.path.abspath(p) in clusters}
        if not cluster_of:
            raise LookalikeError(f"No training image of {root} is in the pseudo-label file {pseudo_labels}")
        if len(cluster_of) < len(train):
            log.warning("left out %d training image(s) that are not in %s (added after the clustering?)",
                        len(train) - len(cluster_of), pseudo_labels)
        train = list(cluster_of)
        labels = np.unique(list(cluster_of.values()), return_inverse=True)[1]
    return Splits(train=ImageTable(train, labels),
                  test=photo_to_catalogue(test, cache_dir, seed),
                  val=photo_to_catalogue(val, cache_dir, seed))
