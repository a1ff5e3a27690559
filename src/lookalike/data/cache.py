"""Derived images cached on disk: each made once from its source file and reused while the source is unchanged.

Decoding full-size JPEGs is the usual bottleneck of training on photos; with ``data.resize_cache=N``
each image is decoded, cropped to its box if it has one, and resized so its short side is ``N``,
once, and training reads the small copies. The held-out query photos of ``data=unlabeled`` are cached
the same way.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lookalike.data.images import crop_box, load_rgb
from lookalike.data.table import ImageTable, Splits
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write


def cached_copies(sources: Sequence[str], params: Sequence[Any], folder: str | Path,
                  make: Callable[[str, Any], Image.Image], desc: str, quality: int = 95, workers: int = 4) -> list[str]:
    """For each source file, the JPEG ``make(source, params)`` under ``folder``, named by the source's path, size
    and modification time and by ``params``: made where missing (in threads, each written atomically, so the
    cache never holds half a file) and reused otherwise. Returns the cached paths in order; a source that cannot
    be read keeps its own path, so that the data check finds it and leaves it out with the other broken files."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)

    def target(source: str, param: Any) -> Path:
        st = os.stat(source)
        key = f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}|{param}"
        return folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.jpg"

    def write(job: tuple[str, Any, Path]) -> bool:
        source, param, out = job
        try:
            picture = make(source, param)
        except LookalikeError:
            return False
        atomic_write(out, lambda tmp: picture.save(tmp, "JPEG", quality=quality))
        return True

    targets = [target(s, p) if os.path.isfile(s) else None for s, p in zip(sources, params)]
    todo = [(s, p, t) for s, p, t in zip(sources, params, targets) if t is not None and not t.exists()]
    if todo:
        with ThreadPoolExecutor(workers) as pool:
            made = list(tqdm(pool.map(write, todo), total=len(todo), desc=desc))
        failed = {t for (_, _, t), ok in zip(todo, made) if not ok}
        targets = [None if t in failed else t for t in targets]
    return [source if t is None else str(t) for source, t in zip(sources, targets)]


def _resized(source: str, box: tuple | None, size: int) -> Image.Image:
    image = load_rgb(source, min_side=None if box is not None else size)
    im = Image.fromarray(crop_box(image, box) if box is not None else image)
    scale = size / min(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return im


def resized_table(table: ImageTable, size: int, cache_dir: str | Path, workers: int = 4) -> ImageTable:
    """The same rows pointing at resized copies under ``cache_dir/resized-<size>/`` (made if missing)."""
    boxes = [None] * len(table) if table.boxes is None else [
        tuple(float(v) for v in b) if np.isfinite(b).all() else None for b in table.boxes]
    paths = cached_copies(table.paths, boxes, Path(cache_dir).expanduser() / f"resized-{size}",
                          lambda source, box: _resized(source, box, size), f"resizing images to {size} px (once)",
                          workers=workers)
    return ImageTable(paths, table.labels, table.is_query, table.is_gallery, table.class_names)


def resized_splits(splits: Splits, size: int, cache_dir: str | Path) -> Splits:
    """Every split of ``splits`` through :func:`resized_table`."""
    val = resized_table(splits.val, size, cache_dir) if splits.val is not None else None
    return Splits(resized_table(splits.train, size, cache_dir), resized_table(splits.test, size, cache_dir), val)
