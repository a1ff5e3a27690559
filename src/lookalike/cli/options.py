"""What the commands' parsers share: argument types (a value out of range is refused by argparse itself, with the
usage line and one message, before any work) and option groups. Nothing here imports the library's heavy parts:
``--help`` and argument errors answer at once."""

from __future__ import annotations

import argparse
import re
from typing import Callable

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
