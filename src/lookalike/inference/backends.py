"""Where a catalogue lives: ``faiss`` (a ``.lkidx`` file, the default) or ``milvus`` (a collection in a Milvus Lite
file or on a Milvus server). The commands and the page open, build and change catalogues through these three."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lookalike.choices import CATALOGUE_BACKENDS, DEFAULT_COLLECTION
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write, release_folder
from lookalike.inference.catalog import PARTIAL_MARKER, Index
from lookalike.inference.milvus import MilvusCatalog, edit, is_remote
from lookalike.inference.sharded import Processes
from lookalike.inference.store import Catalogue



def _check(backend: str) -> None:
    if backend not in CATALOGUE_BACKENDS:
        raise LookalikeError(f"--backend {backend}: use one of {', '.join(CATALOGUE_BACKENDS)}")


def open_catalogue(location: str | Path, backend: str = "faiss", collection: str | None = None) -> Catalogue:
    """The catalogue at ``location``: a ``.lkidx`` file, or for ``milvus`` a Lite file / server URI."""
    _check(backend)
    if backend == "faiss":
        return Index.load(location)
    return MilvusCatalog.open(str(location), collection or DEFAULT_COLLECTION)


@contextmanager
def editing(location: str | Path, backend: str = "faiss", collection: str | None = None) -> Iterator[Any]:
    """Open a catalogue to change it, taking turns with other writers (the file's lock; the database's own)."""
    _check(backend)
    if backend == "faiss":
        with Index.edit(location) as index:
            yield index
    else:
        with edit(str(location), collection or DEFAULT_COLLECTION) as catalogue:
            yield catalogue


def reembed(location: str | Path, embedder: str | Path, out: str | Path, backend: str = "faiss",
            collection: str | None = None, out_collection: str | None = None, **options: Any) -> Catalogue | None:
    """The catalogue at ``location`` embedded anew with another embedder into ``out`` (same items, labels, columns
    and crop; ``options``: :func:`build_catalogue`'s). Its items are listed in ``<out>.items.jsonl`` first, so the
    same call after an interruption continues the build; the list goes once the new catalogue is written."""
    source = open_catalogue(location, backend, collection)
    items = list(source.listing())
    if isinstance(source, MilvusCatalog):
        source.close()  # a Milvus Lite file is one client's at a time
    listing = Path(f"{out}.items.jsonl" if not is_remote(str(out)) else f"{out_collection or collection}.items.jsonl")

    def write(tmp: str) -> None:  # JSON lines: an item keeps exactly its own columns (a CSV would give it all)
        with open(tmp, "w") as f:
            f.writelines(json.dumps({"path": it["path"], "label": it["label"], **(it.get("fields") or {})}) + "\n"
                         for it in items)

    atomic_write(listing, write)
    built = build_catalogue(out, embedder, listing, backend, out_collection or collection,
                            **{"boxes": source.meta.get("boxes"), **options})
    if built is not None:
        listing.unlink(missing_ok=True)
    return built


def build_catalogue(out: str | Path, embedder: str | Path, images: str | Path, backend: str = "faiss",
                    collection: str | None = None, factory: str = "Flat", batch_size: int = 64,
                    num_workers: int | None = None, search_params: str | None = None, devices: int = 1,
                    num_nodes: int = 1, accelerator: str = "auto", rerank: int | None = None,
                    dba_k: int = 0, boxes: str | Path | None = None) -> Catalogue | None:
    """Embed the catalogue images and write them to ``out`` (resumable after an interruption; under DDP only
    rank 0 writes and gets the catalogue). ``boxes``: a box file; each image is embedded cut to the product it
    finds (``--crop auto``)."""
    _check(backend)
    if backend == "faiss":
        return Index.build_file(out, embedder, images, factory, batch_size, num_workers, search_params=search_params,
                                devices=devices, num_nodes=num_nodes, accelerator=accelerator, rerank=rerank,
                                dba_k=dba_k, boxes=boxes)
    if rerank or dba_k:
        raise LookalikeError("--rerank and --dba are the FAISS backend's (--backend faiss)")
    collection = collection or DEFAULT_COLLECTION
    beside = Path.cwd() / collection if is_remote(str(out)) else Path(out).expanduser().resolve()
    partial = beside.with_name(f"{beside.name}.{collection}.partial")
    processes = Processes(devices, partial.with_name(partial.name[:-len("partial")] + "shards"), num_nodes, accelerator)
    catalogue = MilvusCatalog.build(str(out), embedder, images, collection, factory, batch_size, num_workers,
                                    search_params, processes, checkpoint=partial, boxes=boxes)
    if catalogue is not None:
        release_folder(partial, PARTIAL_MARKER)
    return catalogue
