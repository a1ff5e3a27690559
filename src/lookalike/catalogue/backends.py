"""Where a catalogue lives: ``faiss`` (a ``.lkidx`` file, the default) or ``milvus`` (a collection in a Milvus Lite
file or on a Milvus server). The commands and the page open, build and change catalogues through these three."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from lookalike.choices import CATALOGUE_BACKENDS, DEFAULT_COLLECTION
from lookalike.errors import LookalikeError
from lookalike.catalogue.base import Catalogue
from lookalike.catalogue.build import BuildOptions, finish, partial_folder
from lookalike.catalogue.file import FileCatalogue
from lookalike.catalogue.milvus import MilvusCatalogue, edit, is_remote
from lookalike.files import atomic_write


def _check(backend: str) -> None:
    if backend not in CATALOGUE_BACKENDS:
        raise LookalikeError(f"--backend {backend}: use one of {', '.join(CATALOGUE_BACKENDS)}")


def open_catalogue(location: str | Path, backend: str = "faiss", collection: str | None = None) -> Catalogue:
    """The catalogue at ``location``: a ``.lkidx`` file, or for ``milvus`` a Lite file / server URI."""
    _check(backend)
    if backend == "faiss":
        return FileCatalogue.load(location)
    return MilvusCatalogue.open(str(location), collection or DEFAULT_COLLECTION)


@contextmanager
def editing(location: str | Path, backend: str = "faiss", collection: str | None = None) -> Iterator[Catalogue]:
    """Open a catalogue to change it, taking turns with other writers (the file's lock; the database's own)."""
    _check(backend)
    if backend == "faiss":
        with FileCatalogue.edit(location) as index:
            yield index
    else:
        with edit(str(location), collection or DEFAULT_COLLECTION) as catalogue:
            yield catalogue


def reembed(location: str | Path, embedder: str | Path, out: str | Path, backend: str = "faiss",
            collection: str | None = None, out_collection: str | None = None,
            options: BuildOptions = BuildOptions()) -> Catalogue | None:
    """The catalogue at ``location`` embedded anew with another embedder into ``out`` (same items, labels, columns
    and crop: the source's box file unless ``options`` name one). Its items are listed in ``<out>.items.jsonl``
    first, so the same call after an interruption continues the build; the list goes once the new catalogue is
    written."""
    source = open_catalogue(location, backend, collection)
    items = list(source.listing())
    boxes = options.boxes or source.meta.get("boxes")
    source.close()  # a Milvus Lite file is one client's at a time
    listing = Path(f"{out}.items.jsonl" if not is_remote(str(out)) else f"{out_collection or collection}.items.jsonl")

    def write(tmp: str) -> None:  # JSON lines: an item keeps exactly its own columns (a CSV would give it all)
        with open(tmp, "w") as f:
            f.writelines(json.dumps({"path": it["path"], "label": it["label"], **(it.get("fields") or {})}) + "\n"
                         for it in items)

    atomic_write(listing, write)
    built = build_catalogue(out, embedder, listing, backend, out_collection or collection,
                            replace(options, boxes=boxes))
    if built is not None:
        listing.unlink(missing_ok=True)
    return built


def build_catalogue(out: str | Path, embedder: str | Path, images: str | Path, backend: str = "faiss",
                    collection: str | None = None, options: BuildOptions = BuildOptions()) -> Catalogue | None:
    """Embed the catalogue images and write them to ``out`` as ``options`` say (resumable after an interruption,
    progress beside ``out``; under DDP only rank 0 writes and gets the catalogue)."""
    _check(backend)
    if backend == "faiss":
        return FileCatalogue.build_file(out, embedder, images, options)
    collection = collection or DEFAULT_COLLECTION
    beside = Path.cwd() / collection if is_remote(str(out)) else Path(out).expanduser().resolve()
    beside = beside.with_name(f"{beside.name}.{collection}")  # one collection's work beside the database
    partial = partial_folder(beside)
    catalogue = MilvusCatalogue.build(str(out), embedder, images, collection, options, partial,
                                      options.processes(beside))
    if catalogue is not None:
        finish(partial)
    return catalogue
