"""What the commands' parsers share: argument types (a value out of range is refused by argparse itself, with the
usage line and one message, before any work) and option groups. Nothing here imports the library's heavy parts:
``--help`` and argument errors answer at once."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Callable

from lookalike.choices import CATALOGUE_BACKENDS, DEFAULT_COLLECTION

COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # Milvus's rule for collection names


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An ``int`` option from ``low`` to ``high`` (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: choose {low} to {high}" if high is not None
                                             else f"{value} is out of range: choose {low} or more")
        return value

    return parse


def collection(text: str) -> str:
    """A Milvus collection name: a letter or underscore, then letters, digits and underscores (255 at most)."""
    if not COLLECTION_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a collection name is a letter or _ followed by letters, digits "
                                         "and _ (at most 255)")
    return text


PORT = integer(1, 65535)
POSITIVE = integer(1)
NON_NEGATIVE = integer(0)


def add_backend_options(*parsers: argparse.ArgumentParser) -> None:
    """--backend and --collection: where the catalogue lives."""
    for p in parsers:
        p.add_argument("--backend", choices=CATALOGUE_BACKENDS, default="faiss", help="faiss: a .lkidx file "
                       "(default); milvus: a collection in a Milvus Lite file or on a Milvus server (token: "
                       "$MILVUS_TOKEN)")
        p.add_argument("--collection", type=collection, default=DEFAULT_COLLECTION,
                       help="the Milvus collection (--backend milvus)")


def add_embedding_options(*parsers: argparse.ArgumentParser) -> None:
    """--batch-size and --workers: how images are decoded and embedded."""
    for p in parsers:
        p.add_argument("--batch-size", type=POSITIVE, default=64)
        p.add_argument("--workers", type=NON_NEGATIVE, help="decoding processes (default: up to 4)")


def add_build_options(*parsers: argparse.ArgumentParser) -> None:
    """The options of building a catalogue (:class:`~lookalike.catalogue.build.BuildOptions`)."""
    for p in parsers:
        p.add_argument("--factory", default="Flat", help="FAISS index type: Flat, HNSW32, IVF1024,Flat, "
                       "IVF1024,PQ32, or binary (sign bits, Hamming): BFlat, BHNSW32, BIVF1024")
        add_embedding_options(p)
        p.add_argument("--search-params", help="FAISS search parameters stored with the index, e.g. efSearch=256 "
                       "or nprobe=64 (default: efSearch=128 for HNSW, nprobe=32 for IVF)")
        p.add_argument("--rerank", type=NON_NEGATIVE, help="keep the exact vectors in the file and re-score this "
                       "many candidates per search (default: 200 for compressed types: PQ, SQ, binary; else 0)")
        p.add_argument("--dba", type=NON_NEGATIVE, default=0, help="database-side augmentation: replace each "
                       "catalogue vector by its normalised sum with this many nearest items (0: off)")
        p.add_argument("--devices", type=POSITIVE, default=1, help="embed in this many processes per machine under "
                       "DDP (Lightning's predict loop; GPUs, or CPU processes with --accelerator cpu)")
        p.add_argument("--num-nodes", type=POSITIVE, default=1, help="machines taking part (each runs the same "
                       "command; Lightning's cluster environment, the output folder shared)")
        p.add_argument("--accelerator", default="auto", help="gpu, cpu or auto (Lightning's)")
        p.add_argument("--no-local", action="store_true", help="keep no local features (searches cannot verify "
                       "matches; saves about 30 KB an item and the extraction, ~25 ms a picture)")
        p.add_argument("--local-features", type=integer(8, 4096), default=400, help="local features kept per "
                       "picture (default 400; each takes --local-dims + 4 bytes, and as many in the vote index)")
        p.add_argument("--local-dims", type=integer(8, 128), default=32, help="bytes of a descriptor's code: "
                       "RootSIFT projected on this many principal components of the catalogue's own (default 32; "
                       "128 keeps them whole)")
        p.add_argument("--local-side", type=integer(64, 4096), default=640, help="pictures are scaled down to this "
                       "side before their local features are found (default 640)")


def build_options(args: argparse.Namespace, boxes: str | Path | None = None) -> Any:
    """The :class:`~lookalike.catalogue.build.BuildOptions` of parsed :func:`add_build_options` arguments."""
    from lookalike.catalogue.build import BuildOptions
    from lookalike.verification.features import FeatureOptions

    local = None if args.no_local else FeatureOptions(args.local_features, args.local_side, args.local_dims).check()
    return BuildOptions(factory=args.factory, search_params=args.search_params, batch_size=args.batch_size,
                        num_workers=args.workers, rerank=args.rerank, dba_k=args.dba, boxes=boxes,
                        devices=args.devices, num_nodes=args.num_nodes, accelerator=args.accelerator, local=local)
