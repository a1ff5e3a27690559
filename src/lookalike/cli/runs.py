"""``lookalike runs summarize FOLDER``: a table and a plot of every run (sweep trial) under a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lookalike.runs import summarize, to_markdown


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike runs", description="Compare runs and sweep trials.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("summarize", help="table + plot of every run under a folder").add_argument("folder")
    args = parser.parse_args(argv)
    rows = summarize(args.folder)
    print(f"{to_markdown(rows)}\n\nwritten: {Path(args.folder) / 'summary.md'}, summary.csv, summary.png")
