"""One build for both catalogue backends: what a build is asked (:class:`BuildOptions`), what it reads (the embedder
file, the box model, the listed images: :class:`BuildInputs`), where it keeps its work (``<out>.partial/`` for
progress, ``<out>.shards/`` for several processes), its resumable embedding (:func:`embed_catalogue`) and the meta
both backends keep. Each backend then stores what this made its own way."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.boxes.finder import BoxFinder
from lookalike.data.images import Box
from lookalike.data.listing import labelled_images
from lookalike.embedder.embed import embed_files
from lookalike.embedder.file import embedder_from_payload, embedder_hash, read_embedder_file
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write, claim_folder, release_folder
from lookalike.catalogue.sharded import Processes, Share, embed_sharded
from lookalike.models.embedder import Embedder
from lookalike.retrieval.knn import default_search_params
from lookalike.verification.features import FeatureOptions

PARTIAL_MARKER = "key.json"  # in the <out>.partial/ folder of a build in progress: lookalike's own folder


@dataclass(frozen=True)
class BuildOptions:
    """How to build a catalogue: the index type and its search parameters (FAISS syntax; default
    :func:`~lookalike.retrieval.knn.default_search_params`), decoding and embedding, the file backend's re-scoring
    (``rerank``; default: 200 candidates for compressed types) and database-side augmentation (``dba_k`` nearest
    items, 0: off), the box file that cuts every image to its product (``boxes``: ``--crop auto``), and the
    processes that embed (``devices`` x ``num_nodes``, Lightning's names), and the local features kept for verified
    matching (``local``; None: none)."""

    factory: str = "Flat"
    search_params: str | None = None
    batch_size: int = 64
    num_workers: int | None = None
    rerank: int | None = None
    dba_k: int = 0
    dba_alpha: float = 3.0
    boxes: str | Path | None = None
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    local: FeatureOptions | None = FeatureOptions()

    @property
    def params(self) -> str:
        """The search parameters stored with the catalogue."""
        return default_search_params(self.factory) if self.search_params is None else self.search_params

    def processes(self, beside: Path) -> Processes:
        """The processes that embed, sharing ``<beside>.shards/``."""
        return Processes(self.devices, beside.with_name(beside.name + ".shards"), self.num_nodes, self.accelerator)


@dataclass
class BuildInputs:
    """What a build reads before any work: the embedder file's contents, the box model, the listed items."""

    embedder_path: Path
    payload: dict[str, Any]
    finder: BoxFinder | None
    items: list[dict[str, Any]]

    @classmethod
    def read(cls, embedder_path: str | Path, images: str | Path, boxes: str | Path | None) -> BuildInputs:
        """Read the embedder file, the box file and the image list, each refused with one message."""
        payload = read_embedder_file(embedder_path)
        finder = BoxFinder.load(boxes) if boxes is not None else None
        return cls(Path(embedder_path).resolve(), payload, finder, labelled_images(images))

    def meta(self, options: BuildOptions, dim: int) -> dict[str, Any]:
        """:func:`catalogue_meta` of this build."""
        return catalogue_meta(embedder_hash(self.payload), str(self.embedder_path), dim, options.factory,
                              options.params, self.finder and self.finder.path)


def catalogue_meta(embedder: str, embedder_path: str, dim: int, factory: str, search_params: str,
                   boxes: str | None, rerank: int = 0) -> dict[str, Any]:
    """The meta both backends keep: the embedder (fingerprint, file), the vectors' size, the index type and its
    search parameters, re-scoring and the box file the images were cropped with."""
    return {"embedder_hash": embedder, "embedder": embedder_path, "dim": dim, "factory": factory,
            "search_params": search_params, "rerank": rerank, "boxes": boxes}


def partial_folder(beside: Path) -> Path:
    """Where a build of ``beside`` keeps its progress."""
    return beside.with_name(beside.name + ".partial")


def finish(partial: Path) -> None:
    """A build is written: its progress folder goes (only lookalike's own)."""
    release_folder(partial, PARTIAL_MARKER)


class BuildCheckpoint:
    """Embeddings of a build in progress, saved chunk by chunk beside the output so that an interrupted
    build continues where it stopped (with the same embedder and the same list of images)."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        key_file = folder / PARTIAL_MARKER
        if key_file.is_file() and key_file.read_text() != json.dumps(key):
            warnings.warn(f"Ignoring '{folder}': it is from a build with other images or another embedder")
            release_folder(folder, PARTIAL_MARKER)
        claim_folder(folder, PARTIAL_MARKER, "build in progress (a build keeps its progress in <out>.partial/)")
        atomic_write(key_file, lambda tmp: Path(tmp).write_text(json.dumps(key)))

    def load(self) -> tuple[int, list[np.ndarray], list[np.ndarray], list[str]]:
        """(images done, positions, vectors, errors) of the chunks saved so far."""
        done, positions, vectors, errors = 0, [], [], []
        for chunk in sorted(self.folder.glob("chunk_*.npz")):
            with np.load(chunk) as z:
                if int(z["start"]) != done:
                    break
                done = int(z["end"])
                positions.append(z["positions"])
                vectors.append(z["vectors"])
                errors.extend(str(e) for e in z["errors"])
        return done, positions, vectors, errors

    def save(self, start: int, end: int, positions: list[np.ndarray], vectors: list[np.ndarray],
             errors: list[str], dim: int) -> None:
        """Save the images ``start..end`` as one chunk (atomically)."""
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, start=start, end=end, errors=np.array(errors, dtype=str),
                         positions=np.concatenate(positions) if positions else np.zeros(0, np.int64),
                         vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32))

        atomic_write(self.folder / f"chunk_{start:012d}.npz", write)


def embed_catalogue(payload: dict[str, Any], items: list[dict[str, Any]], batch_size: int = 64,
                    num_workers: int | None = None, checkpoint: Path | None = None,
                    checkpoint_every: int = 4096, embedder: Embedder | None = None,
                    processes: Processes | None = None, finder: BoxFinder | None = None
                    ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Embed the items' images with the embedder of ``payload`` (``embedder``: that one, already rebuilt), each cut
    to the box ``finder`` finds in it (``--crop auto``; whole where it finds none); unreadable ones are left out
    with one warning each. With ``checkpoint`` (a folder), progress is saved every ``checkpoint_every`` images and
    an earlier run's is reused. With ``processes`` of more than one, Lightning's DDP predict loop embeds in that
    many processes (:mod:`lookalike.catalogue.sharded`; shards in ``processes.folder``), each getting the result
    (the first one says what was skipped)."""
    embedder = embedder or embedder_from_payload(payload)
    paths = [it["path"] for it in items]
    boxes = finder.boxes_of(paths) if finder is not None else None
    if boxes is not None:
        print(f"cropped {sum(b is not None for b in boxes)} of {len(paths)} images to the product found in them "
              "(the others embedded whole)")
    if processes is not None and processes.count > 1:
        found = embed_sharded(embedder, paths, processes, batch_size, 2 if num_workers is None else num_workers,
                              boxes)
        positions, vectors, errors = [found[0]], [found[1]], (found[2] if Share.current().leads else [])
    else:
        positions, vectors, errors = _embed_resumable(embedder, payload, paths, batch_size, num_workers, checkpoint,
                                                      checkpoint_every, boxes)
    for error in errors:
        warnings.warn(f"skipped: {error}")
    if errors:
        print(f"skipped {len(errors)} unreadable image(s) of {len(paths)}")
    keep = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    if len(keep) == 0:
        raise LookalikeError("None of the images could be read")
    return [items[i] for i in keep], np.concatenate(vectors)


def _embed_resumable(embedder: Embedder, payload: dict[str, Any], paths: list[str], batch_size: int,
                     num_workers: int | None, checkpoint: Path | None, checkpoint_every: int,
                     boxes: list[Box | None] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """One process's embedding of ``paths`` (cut to ``boxes``): (positions, vectors, errors), saved every
    ``checkpoint_every`` images in ``checkpoint`` and resumed from it."""
    store = None
    done, positions, vectors, errors = 0, [], [], []
    if checkpoint is not None:
        key = hashlib.sha256(json.dumps([embedder_hash(payload), paths, boxes]).encode()).hexdigest()
        store = BuildCheckpoint(checkpoint, key)
        done, positions, vectors, errors = store.load()
        if done:
            print(f"resuming: {done} of {len(paths)} images were embedded before")
    pending: tuple[list, list, list] = ([], [], [])  # positions, vectors, errors since the last save
    saved = consumed = done
    for pos, vec, errs in embed_files(embedder, paths, done, batch_size, num_workers, boxes=boxes):
        pending[0].append(pos)
        pending[1].append(vec)
        pending[2].extend(errs)
        consumed += len(pos) + len(errs)
        if store is not None and (consumed - saved >= checkpoint_every or consumed == len(paths)):
            store.save(saved, consumed, *pending, dim=embedder.embedding_size)
            saved = consumed
        if store is None or saved == consumed:
            positions += pending[0]
            vectors += pending[1]
            errors += pending[2]
            pending = ([], [], [])
    return positions, vectors, errors


