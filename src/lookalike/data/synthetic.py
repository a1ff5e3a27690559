"""A built-in, offline data set of synthetic products: watches in a catalogue and in "photos".

Each class is one watch model (case shape and colours, dial, strap, hands, markers, bezel,
date window). It is rendered once as a clean catalogue picture on white and several times as a
phone "photo": another background, darker or brighter light with a colour cast, rotation, scale,
another time on the hands, blur, noise and JPEG compression. Generation is seeded and cached on
disk, so the same arguments always give the same images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from lookalike.data.augment import random_background
from lookalike.data.table import ImageTable, Splits
from lookalike.files import DEFAULT_CACHE_DIR

GENERATOR_VERSION = 2
_SUPERSAMPLE = 3

_METALS = [(200, 200, 205), (212, 175, 55), (183, 110, 121), (40, 40, 45), (90, 92, 100), (30, 60, 140)]
_DIALS = [(245, 245, 240), (20, 20, 25), (25, 50, 120), (20, 90, 60), (235, 225, 200),
          (230, 150, 130), (130, 135, 140), (150, 20, 30), (70, 130, 180)]
_STRAPS = [(60, 35, 20), (120, 70, 30), (15, 15, 15), (160, 160, 165), (30, 40, 90),
           (90, 110, 60), (180, 50, 40), (230, 230, 225), (200, 160, 90)]
_ACCENTS = [(220, 30, 30), (255, 140, 0), (240, 200, 0), (40, 160, 220), None]


@dataclass(frozen=True)
class Watch:
    """The design of one product: everything that tells it apart from other products."""

    case_shape: str  # round | square | cushion | tonneau
    case_color: tuple[int, int, int]
    bezel_color: tuple[int, int, int]
    bezel_width: float
    dial_color: tuple[int, int, int]
    marker_style: str  # none | dots | bars | quarters | mixed
    marker_color: tuple[int, int, int]
    hand_style: str  # baton | sword | thin
    hand_color: tuple[int, int, int]
    second_color: tuple[int, int, int] | None
    strap_style: str  # leather | bracelet | nato
    strap_color: tuple[int, int, int]
    strap_color2: tuple[int, int, int]
    strap_width: float
    date_window: bool
    case_size: float


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def random_watch(rng: np.random.Generator) -> Watch:
    """Draw a random watch design."""
    case = _pick(rng, _METALS)
    dial = _pick(rng, _DIALS)
    light_dial = sum(dial) > 380
    return Watch(
        case_shape=str(_pick(rng, ["round", "round", "square", "cushion", "tonneau"])),
        case_color=case,
        bezel_color=case if rng.random() < 0.5 else _pick(rng, _METALS + _DIALS[1:4]),
        bezel_width=float(rng.uniform(0.04, 0.16)),
        dial_color=dial,
        marker_style=str(_pick(rng, ["none", "dots", "bars", "quarters", "mixed"])),
        marker_color=(25, 25, 25) if light_dial else _pick(rng, [(240, 240, 240), (212, 175, 55)]),
        hand_style=str(_pick(rng, ["baton", "sword", "thin"])),
        hand_color=(20, 20, 20) if light_dial else _pick(rng, [(240, 240, 240), (212, 175, 55)]),
        second_color=_pick(rng, _ACCENTS),
        strap_style=str(_pick(rng, ["leather", "bracelet", "nato"])),
        strap_color=_pick(rng, _STRAPS),
        strap_color2=_pick(rng, _STRAPS),
        strap_width=float(rng.uniform(0.45, 0.8)),
        date_window=bool(rng.random() < 0.4),
        case_size=float(rng.uniform(0.27, 0.34)),
    )


def _shade(color: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * f))) for c in color)  # type: ignore[return-value]


def _case_box(c: float, r: float, shape: str) -> tuple[list[float], float]:
    """Bounding box and corner radius of the case outline."""
    if shape == "tonneau":
        return [c - 0.82 * r, c - r, c + 0.82 * r, c + r], 0.6 * r
    if shape == "square":
        return [c - r, c - r, c + r, c + r], 0.15 * r
    if shape == "cushion":
        return [c - r, c - r, c + r, c + r], 0.45 * r
    return [c - r, c - r, c + r, c + r], r


def _shape(draw: ImageDraw.ImageDraw, box: list[float], radius: float, fill: tuple) -> None:
    w = box[2] - box[0]
    if radius >= w / 2 - 1e-6:
        draw.ellipse(box, fill=fill)
    else:
        draw.rounded_rectangle(box, radius=radius, fill=fill)


def _hand(draw: ImageDraw.ImageDraw, c: float, angle: float, length: float, width: float,
          style: str, color: tuple) -> None:
    dx, dy = math.sin(angle), -math.cos(angle)
    tip = (c + dx * length, c + dy * length)
    if style == "sword":
        px, py = -dy * width, dx * width
        mid = (c + dx * length * 0.35, c + dy * length * 0.35)
        tail = (c - dx * width * 1.5, c - dy * width * 1.5)
        draw.polygon([tail, (mid[0] + px, mid[1] + py), tip, (mid[0] - px, mid[1] - py)], fill=color)
    else:
        w = width * (1.4 if style == "baton" else 0.55)
        draw.line([(c - dx * width, c - dy * width), tip], fill=color, width=max(1, int(w)))


def render_watch(w: Watch, size: int, hour: float, minute: float) -> Image.Image:
    """Draw the watch on a transparent square canvas of ``size`` pixels (supersampled)."""
    s = size * _SUPERSAMPLE
    im = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    c, r = s / 2, w.case_size * s
    half = w.strap_width * r

    # strap, top and bottom
    d.rectangle([c - half, 0, c + half, s], fill=w.strap_color)
    if w.strap_style == "bracelet":
        for y in np.arange(0, s, s * 0.04):
            d.line([(c - half, y), (c + half, y)], fill=_shade(w.strap_color, 0.6), width=max(1, s // 150))
        d.line([(c - half / 3, 0), (c - half / 3, s)], fill=_shade(w.strap_color, 0.75), width=max(1, s // 200))
        d.line([(c + half / 3, 0), (c + half / 3, s)], fill=_shade(w.strap_color, 0.75), width=max(1, s // 200))
    elif w.strap_style == "nato":
        d.rectangle([c - half / 3, 0, c + half / 3, s], fill=w.strap_color2)
    else:
        inset = half * 0.8
        for x in (c - inset, c + inset):
            d.line([(x, 0), (x, s)], fill=_shade(w.strap_color, 1.5), width=max(1, s // 250))

    # crown, case, bezel, dial
    d.rounded_rectangle([c + r * 0.9, c - r * 0.12, c + r * 1.12, c + r * 0.12], radius=r * 0.04,
                        fill=_shade(w.case_color, 0.85))
    box, rad = _case_box(c, r, w.case_shape)
    _shape(d, box, rad, _shade(w.case_color, 0.8))
    inner = [box[0] + r * 0.04, box[1] + r * 0.04, box[2] - r * 0.04, box[3] - r * 0.04]
    _shape(d, inner, max(0.0, rad - r * 0.04), w.case_color)
    bez = [box[0] + r * 0.1, box[1] + r * 0.1, box[2] - r * 0.1, box[3] - r * 0.1]
    _shape(d, bez, max(0.0, rad - r * 0.1), w.bezel_color)
    k = 0.1 + w.bezel_width
    dial = [box[0] + r * k, box[1] + r * k, box[2] - r * k, box[3] - r * k]
    _shape(d, dial, max(0.0, rad - r * k), w.dial_color)
    dial_r = (dial[3] - dial[1]) / 2

    # markers
    for i in range(12):
        a = i * math.pi / 6
        quarter = i % 3 == 0
        if w.marker_style == "none" or (w.marker_style == "quarters" and not quarter):
            continue
        x, y = c + math.sin(a) * dial_r * 0.82, c - math.cos(a) * dial_r * 0.82
        as_bar = w.marker_style == "bars" or (w.marker_style in ("quarters", "mixed") and quarter)
        if as_bar:
            x2, y2 = c + math.sin(a) * dial_r * 0.65, c - math.cos(a) * dial_r * 0.65
            d.line([(x, y), (x2, y2)], fill=w.marker_color, width=max(1, int(dial_r * (0.09 if quarter else 0.05))))
        else:
            rr = dial_r * 0.05
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=w.marker_color)
    if w.date_window:
        x0 = c + dial_r * 0.42
        d.rectangle([x0, c - dial_r * 0.09, x0 + dial_r * 0.22, c + dial_r * 0.09], fill=(250, 250, 250),
                    outline=(60, 60, 60))

    # hands
    hour_angle = (hour % 12 + minute / 60) * math.pi / 6
    _hand(d, c, hour_angle, dial_r * 0.5, dial_r * 0.08, w.hand_style, w.hand_color)
    _hand(d, c, minute * math.pi / 30, dial_r * 0.78, dial_r * 0.06, w.hand_style, w.hand_color)
    if w.second_color is not None:
        _hand(d, c, (minute * 7 % 60) * math.pi / 30, dial_r * 0.85, dial_r * 0.03, "thin", w.second_color)
    pin = dial_r * 0.05
    d.ellipse([c - pin, c - pin, c + pin, c + pin], fill=w.hand_color)
    return im.resize((size, size), Image.LANCZOS)


def catalogue_picture(w: Watch, size: int) -> Image.Image:
    """The product as a catalogue shows it: upright, 10:10, on white."""
    watch = render_watch(w, size, 10, 10)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(watch, (0, 0), watch)
    return out


def product_photo(w: Watch, size: int, rng: np.random.Generator) -> Image.Image:
    """The product as a phone photo shows it: other background, light, angle, time, blur, noise."""
    watch = render_watch(w, size, rng.uniform(0, 12), rng.uniform(0, 60))
    scale = rng.uniform(0.65, 1.1)
    watch = watch.resize((int(size * scale),) * 2, Image.BICUBIC).rotate(
        rng.uniform(-45, 45), resample=Image.BICUBIC, expand=False)
    out = Image.fromarray(random_background(size, size, rng))
    off = (size - watch.width) // 2
    jitter = rng.integers(-size // 10, size // 10 + 1, 2)
    out.paste(watch, (int(off + jitter[0]), int(off + jitter[1])), watch)

    arr = np.asarray(out, np.float32) / 255
    arr = arr ** rng.uniform(0.7, 1.5)  # exposure curve
    arr = arr * rng.uniform(0.45, 1.2) * rng.uniform(0.85, 1.15, 3)  # brightness, white balance
    if rng.random() < 0.4:  # a shadow across part of the picture
        yy, xx = np.mgrid[:size, :size] / size
        a = rng.uniform(0, 2 * np.pi)
        side = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) > rng.uniform(-0.2, 0.2)
        arr = arr * np.where(side, rng.uniform(0.5, 0.8), 1.0)[..., None]
    arr = arr + rng.normal(0, rng.uniform(0, 0.04), arr.shape)
    out = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    blur = rng.uniform(0, 1.2)
    return out.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.3 else out


def _generate(folder: Path, num_products: int, photos_per_product: int, image_size: int, seed: int) -> None:
    """Write every image and ``manifest.csv`` (path, label, role) into ``folder``."""
    rows = []
    for p in tqdm(range(num_products), desc="generating synthetic products", leave=False):
        rng = np.random.default_rng([seed, p])
        watch = random_watch(rng)
        name = f"watch_{p:04d}"
        (folder / name).mkdir()
        catalogue_picture(watch, image_size).save(folder / name / "catalogue.jpg", quality=95)
        rows.append((f"{name}/catalogue.jpg", p, "catalogue"))
        for k in range(photos_per_product):
            product_photo(watch, image_size, rng).save(
                folder / name / f"photo_{k}.jpg", quality=int(rng.integers(60, 95)))
            rows.append((f"{name}/photo_{k}.jpg", p, "photo"))
    with open(folder / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "role"), *rows])


def synthetic_products(
    cache_dir: str | os.PathLike,
    num_train_products: int = 60,
    num_test_products: int = 40,
    photos_per_product: int = 7,
    image_size: int = 128,
    seed: int = 0,
    test_protocol: str = "leave_one_out",
) -> Splits:
    """The synthetic product set, generated on first use and cached under ``cache_dir``.

    Products ``0..num_train_products-1`` are the training classes, the next
    ``num_test_products`` the test classes. ``test_protocol`` is ``leave_one_out`` (every test
    image queries all others) or ``photo_to_catalogue`` (photos query the catalogue pictures).
    """
    if test_protocol not in ("leave_one_out", "photo_to_catalogue"):
        raise ValueError(f"test_protocol must be leave_one_out or photo_to_catalogue, not {test_protocol!r}")
    params = dict(n=num_train_products + num_test_products, k=photos_per_product, size=image_size,
                  seed=seed, version=GENERATOR_VERSION)
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() / f"synthetic_products-{key}"
    if not (folder / "manifest.csv").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        try:
            _generate(tmp, params["n"], photos_per_product, image_size, seed)
            (tmp / "params.json").write_text(json.dumps(params))
            os.replace(tmp, folder)  # atomic: a half-written set is never seen
        except OSError:
            if not (folder / "manifest.csv").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    is_photo = np.array([r["role"] == "photo" for r in rows])
    names = [f"watch_{p:04d}" for p in range(params["n"])]
    table = ImageTable([str(folder / r["path"]) for r in rows], labels, class_names=names)
    train = table.subset(labels < num_train_products)
    test = table.subset(labels >= num_train_products)
    if test_protocol == "photo_to_catalogue":
        photo = is_photo[labels >= num_train_products]
        test = ImageTable(test.paths, test.labels, photo, ~photo, names)
    return Splits(train=train, test=test)


def write_demo(out: str | os.PathLike, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> tuple[Path, Path]:
    """Copy the quickstart's test products (default settings) into ``out/catalogue/<product>/`` (their
    catalogue pictures) and ``out/photos/<product>/`` (their photos): a catalogue and queries to try
    ``lookalike index`` and ``search`` on. Returns the two folders."""
    test = synthetic_products(cache_dir).test
    out = Path(out).expanduser()
    for path, name in zip(test.paths, test.label_names()):
        kind = "catalogue" if path.endswith("catalogue.jpg") else "photos"
        (out / kind / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / kind / name / Path(path).name)
    return out / "catalogue", out / "photos"
