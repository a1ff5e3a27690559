"""``lookalike export SOURCE --out FILE [--format native|torchscript|onnx]``: an embedder as one file, checked
against PyTorch. ``SOURCE`` is a training checkpoint (.ckpt) or an embedder file."""

from __future__ import annotations

import argparse

from lookalike.choices import EXPORT_FORMATS
from lookalike.cli.options import POSITIVE


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike export", description=__doc__)
    parser.add_argument("source", help="training checkpoint (.ckpt) or embedder file")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--format", default="native", choices=EXPORT_FORMATS)
    parser.add_argument("--samples", type=POSITIVE, default=4, help="random inputs for the output check")
    args = parser.parse_args(argv)
    from lookalike.embedder.export import TOLERANCE, export

    diff = export(args.source, args.out, args.format, args.samples)
    print(f"wrote {args.out} ({args.format}); max abs difference from PyTorch on {args.samples} inputs: "
          f"{diff:.2e} (tolerance {TOLERANCE})")
