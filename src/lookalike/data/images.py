"""Decoding images to RGB arrays, and the torch Datasets over an ImageTable and over plain image files."""

from __future__ import annotations

import ctypes
import math
import os
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from lookalike.data.table import ImageTable
from lookalike.errors import LookalikeError

# The image formats lookalike opens (photos and catalogue pictures); PIL's others (EPS through Ghostscript,
# icons, fonts, ...) are refused unread.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")  # JPEG includes MPO (phone photos)
# The decoding budget, checked on the header before any pixel is decoded: at most this many pixels decoded
# (after a JPEG's reduced-scale decoding), and the long side at most MAX_ASPECT times the short side, so that
# no resize of the short side to the model's input makes more than MAX_ASPECT times its pixels.
MAX_PIXELS = int(os.environ.get("LOOKALIKE_MAX_PIXELS", 40_000_000))
MAX_ASPECT = 32


class PixelBudget:
    """Pixels being decoded at once in this process, across threads (a server's slots): a decode waits until its
    pixels fit in ``limit``, so concurrent large uploads take turns instead of adding up. One image's pixels are
    at most :data:`MAX_PIXELS`, so any single decode fits."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._free = threading.Condition()

    @contextmanager
    def taken(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.limit)
        with self._free:
            self._free.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._free:
                self.used -= pixels
                self._free.notify_all()


DECODING = PixelBudget(MAX_PIXELS)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_buffers(threshold: int = 1 << 20) -> None:
    """Have glibc give every buffer of ``threshold`` bytes or more a mapping of its own, returned to the system
    when freed. By default glibc raises that threshold after large frees, and the buffers of later large decodes
    then stay in the heap: a server that decoded four large uploads kept 2.8 GB. For long-running processes
    (``lookalike serve``); nothing where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def _open(path: str | IO[bytes], min_side: int | None, max_side: int | None = None) -> Image.Image:
    """The image opened (header only, in :data:`IMAGE_FORMATS`), reduced for decoding where the format allows it
    (JPEG) while its short side stays >= ``min_side`` and its long side >= ``max_side``, and checked against the
    decoding budget."""
    if isinstance(path, (str, os.PathLike)) and not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file (a FIFO, a device or a folder is never opened)")
    im = Image.open(path, formats=IMAGE_FORMATS)
    scale = max(min_side / min(im.size) if min_side else 0.0, max_side / max(im.size) if max_side else 0.0)
    if 0 < scale <= 0.5 and im.format in ("JPEG", "MPO"):
        im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ValueError(f"{width} x {height} pixels is more than this decoder's {MAX_PIXELS:,}")
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        im.close()
        raise ValueError(f"{width} x {height} pixels is longer than {MAX_ASPECT} times as wide (or the reverse)")
    return im


def _reason(e: Exception) -> str:
    """What went wrong, without the reprs of file objects that PIL's messages hold."""
    if isinstance(e, Image.UnidentifiedImageError):
        return f"not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
    return str(e)


def load_rgb(path: str | IO[bytes], name: str | None = None, min_side: int | None = None,
             max_side: int | None = None) -> np.ndarray:
    """Read an image (a path or an open binary file) as an HxWx3 uint8 array: EXIF orientation applied,
    transparency on white. ``name`` is what error messages call it (default: the path).

    ``min_side``: the caller resizes the short side down to this anyway, so a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while its short side stays >= ``min_side``; several
    times faster for large photos, and a better-filtered reduction than resizing the full image.
    ``max_side``: likewise for a caller that scales the long side down to this (local features)."""
    try:
        with _open(path, min_side, max_side) as im, DECODING.taken(im.width * im.height):
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                white = Image.new("RGB", im.size, (255, 255, 255))
                white.paste(im, mask=im.getchannel("A"))  # on white, with a third of alpha_composite's memory
                im = white
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: rescale, not clip
                arr = np.asarray(im, dtype=np.float32)
                top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                return np.repeat((arr * (255.0 / top)).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
            return np.array(im.convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as e:
        raise LookalikeError(f"Cannot read image '{name or path}': {_reason(e)}") from e


Box = tuple[float, float, float, float]  # x, y, width, height in an image's pixels, from its top-left corner


def crop_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The ``(x, y, width, height)`` box of ``image`` (rounded, clipped to the image, at least one pixel)."""
    x, y, w, h = (int(round(v)) for v in box)
    return image[max(0, y):y + max(1, h), max(0, x):x + max(1, w)]


def parse_box(text: str, name: str = "crop") -> Box:
    """``"x,y,width,height"`` (pixels, from the top-left corner) as numbers, or one clear message."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(np.isfinite(box)):
        raise LookalikeError(f"{name}={text!r}: give x,y,width,height in pixels, e.g. 40,30,200,150")
    return box  # type: ignore[return-value]


def checked_box(box: Sequence[float], width: int, height: int, name: str = "crop") -> tuple[int, int, int, int]:
    """``box`` in whole pixels, refused (one message) when it is negative, of zero area or outside the
    ``width`` x ``height`` image; a box running over the edge is clipped to it."""
    x, y, w, h = box
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise LookalikeError(f"{name} {x:g},{y:g},{w:g},{h:g}: x and y must be 0 or more, width and height above 0")
    if x >= width or y >= height:
        raise LookalikeError(f"{name} {x:g},{y:g},{w:g},{h:g} is outside the {width} x {height} image")
    left, top = int(x), int(y)
    return left, top, max(1, min(int(round(x + w)), width) - left), max(1, min(int(round(y + h)), height) - top)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file after its EXIF orientation, from its header only."""
    with _open(path, None) as im:
        width, height = im.size
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap the sides
    return (height, width) if turned else (width, height)


def cut(image: np.ndarray, box: Sequence[float], name: str = "crop") -> np.ndarray:
    """The part of ``image`` in ``box`` (``x,y,width,height`` in its pixels), checked by :func:`checked_box`."""
    x, y, w, h = checked_box(box, image.shape[1], image.shape[0], name)
    return image[y:y + h, x:x + w]


def image_problem(path: str) -> str:
    """Why ``path`` cannot be decoded, or "" if it can. JPEGs are decoded at a reduced scale (draft mode),
    which still reads every byte, so truncated files are found at a fraction of the cost."""
    try:
        with _open(path, None) as im:
            im.draft("RGB", (64, 64))
            im.load()
        return ""
    except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {_reason(e)}"


def unreadable_images(paths: Sequence[str], workers: int | None = None) -> dict[str, str]:
    """Path -> problem for every path that cannot be decoded (checked in threads, with a progress bar)."""
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(workers or min(8, 2 * (os.cpu_count() or 1))) as pool:
        problems = list(tqdm(pool.map(image_problem, unique), total=len(unique), desc="checking images",
                             leave=False, disable=len(unique) < 1000))
    return {p: e for p, e in zip(unique, problems) if e}


class ImageDataset(Dataset):
    """Yields dicts with the transformed image, its label, row index and retrieval roles. ``min_side``:
    the transform's first resize, passed to :func:`load_rgb` (images with crop boxes are decoded whole)."""

    def __init__(self, table: ImageTable, transform: Callable[..., dict], min_side: int | None = None):
        self.table = table
        self.is_catalogue = table.is_catalogue  # each row's role, for the samplers and losses that take it
        self.transform = transform
        self.min_side = min_side if table.boxes is None else None

    def __len__(self) -> int:
        return len(self.table)

    def _load(self, i: int) -> np.ndarray:
        """Row ``i``'s image; if it became unreadable after the check at start, another image of its class
        (with a warning), so that one file never stops a training run."""
        t = self.table
        try:
            return load_rgb(t.paths[i], min_side=self.min_side)
        except LookalikeError as e:
            same = np.flatnonzero(t.labels == t.labels[i])
            others = same[same != i]
            if len(others) == 0:
                raise
            warnings.warn(f"{e}; using another image of its class")
            return load_rgb(t.paths[int(others[i % len(others)])], min_side=self.min_side)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """Row ``item``, or ``(row, seed)``: the random transform is seeded for this one image (see
        ``EpochSeededSampler``), so augmentations do not depend on the number of loader workers."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            self.transform.set_random_seed(seed)
        t = self.table
        image = self._load(i)
        if t.boxes is not None and np.isfinite(t.boxes[i]).all():  # NaN: this row has no box
            image = crop_box(image, t.boxes[i])
        return {
            "image": self.transform(image=image)["image"],
            "label": int(t.labels[i]),
            "index": i,
            "is_query": bool(t.is_query[i]),
            "is_gallery": bool(t.is_gallery[i]),
            "is_catalogue": bool(self.is_catalogue[i]),
        }


class ImageFiles(Dataset):
    """Image files (each cut to its box, where ``boxes`` gives one) through an evaluation transform; a file that
    cannot be read yields a zero image and its error (so that one bad file in a catalogue is skipped, not fatal)."""

    def __init__(self, paths: Sequence[str], transform: Callable[..., dict], size: int, min_side: int,
                 boxes: Sequence[Box | None] | None = None):
        self.paths, self.transform, self.size, self.min_side = list(paths), transform, size, min_side
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)  # None: the whole image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        box = self.boxes[i]
        try:  # with a box, decoded whole: the box is in the file's own pixels
            image = load_rgb(self.paths[i], min_side=self.min_side if box is None else None)
            image = image if box is None else crop_box(image, box)
            return {"image": self.transform(image=image)["image"], "position": i, "error": ""}
        except LookalikeError as e:
            error = str(e)
        except (cv2.error, ValueError, MemoryError) as e:  # a transform that fails on this image: skipped too
            error = f"Cannot prepare image '{self.paths[i]}': {type(e).__name__}: {e}"
        return {"image": torch.zeros(3, self.size, self.size, dtype=torch.uint8), "position": i, "error": error}
