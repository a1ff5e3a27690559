"""A catalogue's local features (``index build`` extracts them by default): training the codes its descriptors are
kept as on pictures spread over it, extracting and coding them for the catalogue's pictures (threads, resumable in
the build's ``<out>.partial/``), calibrating the inliers a verified match needs on the catalogue itself, and the
meta both backends keep about them."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from lookalike.catalogue.build import PARTIAL_MARKER
from lookalike.catalogue.sharded import Share
from lookalike.data.images import load_rgb
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write, claim_folder, number_field
from lookalike.verification.appearance import SIDE, Bounds, shrunk
from lookalike.verification.calibration import Calibration, calibrate
from lookalike.verification.codes import DescriptorCodes
from lookalike.verification.features import MAX_FEATURES, MAX_SIDE, NONE, FeatureOptions, LocalFeatures, extract
from lookalike.verification.store import ARRAYS, FeatureStore
from lookalike.verification.votes import DescriptorVotes

CHUNK = 1024  # pictures whose features are saved together during a build
PICTURES = 256  # catalogue pictures kept decoded (small) for the aligned comparison
TRAINING = 256  # pictures spread over a new catalogue whose descriptors train its codes


def picture_features(path: str, options: FeatureOptions) -> LocalFeatures:
    """One catalogue picture's features (no features for a picture that cannot be read now); a large JPEG is
    decoded reduced, no smaller than the side its features are found at."""
    try:
        return extract(load_rgb(path, max_side=options.max_side), options)
    except LookalikeError:
        return NONE


def catalogue_codes(paths: Sequence[str], options: FeatureOptions, checkpoint: Path | None = None,
                    workers: int | None = None, share: Share = Share()) -> DescriptorCodes:
    """The codes a new catalogue keeps its descriptors as (``options.dims``), trained on ``TRAINING`` of its
    pictures spread over it; saved in ``checkpoint`` (the build's progress folder) and taken from there when a
    build continues. Processes sharing the build (``share``) take the first one's."""
    if share.leads:
        codes = _trained_codes(paths, options, checkpoint, workers)
    share.wait()  # the first process has saved them
    return codes if share.leads else _trained_codes(paths, options, _shared(checkpoint), workers)


def _shared(checkpoint: Path | None) -> Path:
    if checkpoint is None:
        raise LookalikeError("Processes sharing a build need its progress folder (<out>.partial/)")
    return checkpoint


def _trained_codes(paths: Sequence[str], options: FeatureOptions, checkpoint: Path | None,
                   workers: int | None) -> DescriptorCodes:
    chosen = [paths[int(n)] for n in np.unique(np.linspace(0, len(paths) - 1, min(TRAINING, len(paths))))]
    key = hashlib.sha256(json.dumps([chosen, options.count, options.max_side, options.dims]).encode()).hexdigest()
    saved = checkpoint / f"codes_{key[:24]}.json" if checkpoint is not None else None
    if saved is not None and saved.is_file():
        return DescriptorCodes.of_meta(json.loads(saved.read_text()), str(saved))
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        found = list(tqdm(pool.map(lambda p: picture_features(p, options), chosen), total=len(chosen),
                          desc="training descriptor codes", unit="picture", disable=None, leave=False))
    codes = DescriptorCodes.train(found, options.dims, sum(len(f) for f in found))
    if saved is not None:
        claim_folder(checkpoint, PARTIAL_MARKER, "build in progress (a build keeps its progress in <out>.partial/)")
        atomic_write(saved, lambda tmp: Path(tmp).write_text(json.dumps(codes.as_meta())))
    return codes


def catalogue_features(paths: Sequence[str], options: FeatureOptions, codes: DescriptorCodes,
                       checkpoint: Path | None = None, workers: int | None = None,
                       share: Share = Share()) -> list[LocalFeatures] | None:
    """The local features of every picture as ``codes``, found in threads (OpenCV and the decoders let go of the
    GIL), saved every ``CHUNK`` pictures in ``checkpoint`` (the build's progress folder) and taken from there when
    a build continues. Processes sharing the build (``share``) each find their chunks and save them; the first
    one then reads the others' and gets the list, the others None."""
    workers = workers or min(8, os.cpu_count() or 1)
    if checkpoint is not None:
        claim_folder(checkpoint, PARTIAL_MARKER, "build in progress (a build keeps its progress in <out>.partial/)")
    size = max(1, min(CHUNK, -(-len(paths) // share.count)))  # every process has a chunk of a small catalogue
    chunks = [paths[start:start + size] for start in range(0, len(paths), size)]
    found: dict[int, list[LocalFeatures]] = {}
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc="local features", unit="picture",
                                                   disable=None if share.leads else True) as bar:
        for n, chunk in enumerate(chunks):
            if share.owns(n):
                found[n] = _chunk(chunk, options, codes, checkpoint, pool)
                bar.update(len(chunk))
        share.wait()  # every process's chunks are saved
        if not share.leads:
            return None
        for n, chunk in enumerate(chunks):
            if n not in found:
                found[n] = _chunk(chunk, options, codes, checkpoint, None)
                bar.update(len(chunk))
    return [f for n in range(len(chunks)) for f in found[n]]


def _chunk(paths: Sequence[str], options: FeatureOptions, codes: DescriptorCodes, checkpoint: Path | None,
           pool: ThreadPoolExecutor | None) -> list[LocalFeatures]:
    """One chunk's features: saved in ``checkpoint`` before, or found now in ``pool`` and saved (None: another
    process found and saved them)."""
    key = hashlib.sha256(json.dumps([list(paths), options.count, options.max_side, codes.as_meta()]).encode())
    saved = checkpoint / f"local_{key.hexdigest()[:24]}.npz" if checkpoint is not None else None
    if saved is not None and saved.is_file():
        with np.load(saved) as z:
            store = FeatureStore.checked({k: z[k] for k in ARRAYS}, len(paths), codes.dims, str(saved))
        return store.features(range(len(paths)))
    if pool is None:
        raise LookalikeError(f"Another process of this build did not save its local features ('{saved}'): "
                             "run the build again (it continues)")
    part = list(pool.map(lambda p: codes.encode(picture_features(p, options)), paths))
    if saved is not None:
        atomic_write(saved, lambda tmp: _save(tmp, FeatureStore.of(part, codes.dims)))
    return part


def _save(tmp: str, store: FeatureStore) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **store.arrays())


def build_local(ids: Sequence[int], paths: Sequence[str], options: FeatureOptions, checkpoint: Path | None = None,
                workers: int | None = None, share: Share = Share()
                ) -> tuple[list[LocalFeatures], DescriptorVotes, dict[str, Any]] | None:
    """A new catalogue's local features: each picture's (as codes trained on the catalogue), their vote index, and
    the meta with the codes and the threshold calibrated on them. Processes sharing the build (``share``) find
    their chunks of the features; the first one gets the result, the others None."""
    if share.count > 1:
        _shared(checkpoint)
    codes = catalogue_codes(paths, options, checkpoint, workers, share)
    features = catalogue_features(paths, options, codes, checkpoint, workers, share)
    if features is None:
        return None
    votes = DescriptorVotes.build(np.asarray(ids, np.int64), features, codes.dims)
    row = {int(i): r for r, i in enumerate(ids)}
    calibration = calibrated(ids, paths, lambda items: [features[row[i]] for i in items], votes.candidates, options,
                             codes)
    return features, votes, local_meta(options, codes, calibration)


def describe_local(meta: dict[str, Any] | None) -> str:
    """One line about a catalogue's local features and its calibrated threshold."""
    if meta is None:
        return "no local features kept (searches rank by the embedding alone)"
    line = (f"local features: up to {meta['count']} a picture, their descriptors kept as {meta['codes']['dims']}-byte "
            f"codes; {meta['threshold']} inliers verify a match (calibrated "
            f"on {meta['photos']} photos made of catalogue pictures: {meta['true_rate']:.0%} verified with their own "
            f"picture, {meta['false_rate']:.1%} of wrong pairs, siblings included)")
    if meta.get("appearance"):
        line += (f"; a verified picture disagreeing with the photo by {meta['appearance']['margin']:.2f} more than the "
                 "best found over the same part of it is a look-alike of it")
    return line


def calibrated(ids: Sequence[int], paths: Sequence[str], features: Callable[[Sequence[int]], list[LocalFeatures]],
               candidates: Callable[[LocalFeatures, int], list[tuple[int, int]]], options: FeatureOptions,
               codes: DescriptorCodes) -> Calibration:
    """The verification threshold of a catalogue of the items ``ids`` with these image ``paths`` (``features`` and
    ``candidates``: its stored features and its descriptor votes; ``codes``: how it keeps descriptors)."""
    by_id = dict(zip((int(i) for i in ids), paths))
    return calibrate(list(by_id), lambda i: load_rgb(by_id[i]), features, candidates, options, codes)


def local_meta(options: FeatureOptions, codes: DescriptorCodes, calibration: Calibration) -> dict[str, Any]:
    """What a catalogue keeps about its local features: how they were found, the codes their descriptors are kept
    as, and the calibrated threshold."""
    return {"count": options.count, "max_side": options.max_side, "codes": codes.as_meta(), **calibration.as_meta()}


def check_local_meta(meta: Any, source: str) -> dict[str, Any]:
    """The ``local`` meta of a catalogue, each field of its type and range."""
    if not isinstance(meta, dict):
        raise LookalikeError(f"'{source}' is a damaged lookalike index (its local features' meta is not a mapping)")
    number_field(meta.get("count"), "local count", source, 8, MAX_FEATURES, integer=True)
    number_field(meta.get("max_side"), "local max_side", source, 64, MAX_SIDE, integer=True)
    DescriptorCodes.of_meta(meta.get("codes"), source)
    number_field(meta.get("threshold"), "local threshold", source, 4, 1 << 20, integer=True)
    for name in ("false_rate", "true_rate"):
        number_field(meta.get(name), f"local {name}", source, 0, 1)
    appearance = meta.get("appearance")
    if appearance is not None:  # catalogues built before the aligned comparison have none: its defaults then
        if not isinstance(appearance, dict) or set(appearance) != set(Bounds.__dataclass_fields__):
            raise LookalikeError(f"'{source}' is a damaged lookalike index (its appearance bounds)")
        for name, value in appearance.items():
            number_field(value, f"local appearance {name}", source, 0, 1000)
    if meta.get("sibling_disagreement") is not None:
        number_field(meta["sibling_disagreement"], "local sibling_disagreement", source, 0, 1000)
    return meta


def feature_options(meta: dict[str, Any]) -> FeatureOptions:
    """The options a catalogue's features were found with (photos are matched with the same)."""
    return FeatureOptions(int(meta["count"]), int(meta["max_side"]), int(meta["codes"]["dims"]))


def local_codes(meta: dict[str, Any]) -> DescriptorCodes:
    """The codes a catalogue keeps its descriptors as (``meta``: its ``local`` meta, checked when it was opened)."""
    return DescriptorCodes.of_meta(meta["codes"], "the catalogue's local meta")


def photo_features(photos: Sequence[np.ndarray], meta: dict[str, Any]) -> list[LocalFeatures]:
    """The local features of query photos (RGB arrays), found and coded as the catalogue's (``meta``: its
    ``local`` meta), each with the photo as they were found in (the aligned comparison's)."""
    options, codes = feature_options(meta), local_codes(meta)
    return [codes.encode(extract(photo, options, keep=True)) for photo in photos]


def comparison_picture(path: str, size: tuple[int, int]) -> tuple[np.ndarray, float] | None:
    """A catalogue picture as the aligned comparison takes it (:func:`~lookalike.verification.appearance.shrunk`
    from its features' frame ``size``); None where it cannot be read now."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _comparison_picture(path, stamp, size)


@lru_cache(maxsize=PICTURES)
def _comparison_picture(path: str, stamp: int, size: tuple[int, int]) -> tuple[np.ndarray, float] | None:
    try:
        return shrunk(load_rgb(path, min_side=2 * SIDE), size)
    except LookalikeError:
        return None
