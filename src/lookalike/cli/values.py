"""Argument types for the commands' options: a value out of range is refused by argparse itself, with the usage
line and one message, before any work."""

from __future__ import annotations

import argparse
import re
from typing import Callable

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
