"""Decode-once cache: every image resized to the training resolution and stored as JPEG on disk.

Decoding full-size JPEGs is the usual bottleneck of training on photos; with ``data.resize_cache=N``
each image is decoded, cropped to its box if it has one, and resized so its short side is ``N``,
once, and training reads the small copies.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from lookalike.data.images import load_rgb
from lookalike.data.table import ImageTable, Splits
from lookalike.files import atomic_write


def _cached_path(folder: Path, path: str, box: tuple | None) -> Path:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{box}"
    return folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.jpg"


def _write(source: str, target: Path, box: tuple | None, size: int) -> None:
    image = load_rgb(source)
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        image = image[max(0, y):y + max(1, h), max(0, x):x + max(1, w)]
    im = Image.fromarray(image)
    scale = size / min(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    atomic_write(target, lambda tmp: im.save(tmp, "JPEG", quality=95))  # never half a file in the cache


def resized_table(table: ImageTable, size: int, cache_dir: str | Path, workers: int = 4) -> ImageTable:
    """The same rows pointing at resized copies under ``cache_dir/resized-<size>/`` (made if missing)."""
    folder = Path(cache_dir).expanduser() / f"resized-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    boxes = [None if table.boxes is None else tuple(float(v) for v in b) for b in
             (table.boxes if table.boxes is not None else [None] * len(table))]
    targets = [_cached_path(folder, p, b) for p, b in zip(table.paths, boxes)]
    todo = [(p, t, b) for p, t, b in zip(table.paths, targets, boxes) if not t.exists()]
    if todo:
        with ThreadPoolExecutor(workers) as pool:
            list(tqdm(pool.map(lambda a: _write(a[0], a[1], a[2], size), todo), total=len(todo),
                      desc=f"resizing images to {size} px (once)"))
    return ImageTable([str(t) for t in targets], table.labels, table.is_query, table.is_gallery, table.class_names)


def resized_splits(splits: Splits, size: int, cache_dir: str | Path) -> Splits:
    """Every split of ``splits`` through :func:`resized_table`."""
    val = resized_table(splits.val, size, cache_dir) if splits.val is not None else None
    return Splits(resized_table(splits.train, size, cache_dir), resized_table(splits.test, size, cache_dir), val)
