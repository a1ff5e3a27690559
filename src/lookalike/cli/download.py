"""``lookalike download NAME --root DIR``: fetch, verify and unpack a benchmark (resumable)."""

from __future__ import annotations

import argparse

from lookalike.data.download import BENCHMARKS, download


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike download",
                                     description="Download, verify (MD5) and unpack a benchmark; resumable.")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--root", required=True, help="folder to download and unpack into")
    args = parser.parse_args(argv)
    data_root = download(args.name, args.root)
    print(f"ready: python train.py data={BENCHMARKS[args.name].config} data.root={data_root}")
