"""``lookalike export SOURCE --out FILE [--format native|torchscript|onnx]``: an embedder as one file, checked
against PyTorch. ``SOURCE`` is a training checkpoint (.ckpt) or an embedder file."""

from __future__ import annotations

import argparse
import sys

from lookalike.errors import LookalikeError
from lookalike.inference.export import FORMATS, TOLERANCE, export


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike export", description=__doc__)
    parser.add_argument("source", nargs="*", help="training checkpoint (.ckpt) or embedder file")
    parser.add_argument("--out", help="file to write")
    parser.add_argument("--format", default="native", choices=FORMATS)
    parser.add_argument("--samples", type=int, default=4, help="random inputs for the output check")
    args = parser.parse_args(argv)
    legacy = dict(a.split("=", 1) for a in args.source if "=" in a)  # ckpt=X out=Y, the spelling before 0.2
    if legacy:
        print("lookalike export: note: `ckpt=X out=Y` is now `lookalike export X --out Y`; the old spelling "
              "will be removed", file=sys.stderr)
    sources = [a for a in args.source if "=" not in a] + [v for k, v in legacy.items() if k == "ckpt"]
    out = args.out or legacy.get("out")
    if len(sources) != 1 or not out:
        raise LookalikeError("lookalike export needs one source and --out FILE, e.g. "
                             "lookalike export runs/quickstart/latest/checkpoints/best.ckpt --out embedder.pt")
    diff = export(sources[0], out, args.format, args.samples)
    print(f"wrote {out} ({args.format}); max abs difference from PyTorch on {args.samples} inputs: "
          f"{diff:.2e} (tolerance {TOLERANCE})")
