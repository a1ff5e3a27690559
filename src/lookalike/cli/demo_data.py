"""``lookalike demo-data --out DIR``: the quickstart's test products as a catalogue and photos."""

from __future__ import annotations

import argparse

from lookalike.files import cache_dir


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike demo-data",
                                     description="Write the quickstart's test products as a catalogue and photos.")
    parser.add_argument("--out", required=True, help="folder to write catalogue/ and photos/ into")
    parser.add_argument("--cache", default=cache_dir(),
                        help="where the synthetic products are generated (default: $LOOKALIKE_CACHE)")
    args = parser.parse_args(argv)
    from lookalike.data.synthetic import write_demo

    catalogue, photos = write_demo(args.out, args.cache)
    print(f"catalogue pictures: {catalogue}\nphotos:             {photos}")
