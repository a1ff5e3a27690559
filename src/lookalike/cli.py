"""The ``lookalike`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    """``lookalike train [hydra overrides]``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train an embedder (same overrides as `python train.py`)", add_help=False)
    args, rest = parser.parse_known_args(argv[:1])
    if args.command == "train":
        from lookalike.train import main as train_main

        sys.argv = ["lookalike train", *argv[1:]]
        train_main()


if __name__ == "__main__":
    main()
