"""``lookalike calibrate --embedder FILE --images DIR_OR_CSV``: the match threshold for a target precision,
chosen on half of the labels, checked on the other half, stored in the embedder file."""

from __future__ import annotations

import argparse

from lookalike.cli.options import POSITIVE


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike calibrate", description=__doc__)
    parser.add_argument("--embedder", required=True, help="embedder file to calibrate (updated in place)")
    parser.add_argument("--images", required=True, help="labelled images: folder with a sub-folder per label, or CSV")
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("-k", type=POSITIVE, default=20, help="neighbours per image considered")
    args = parser.parse_args(argv)
    from lookalike.embedder.calibrate import calibrate

    r = calibrate(args.embedder, args.images, args.target_precision, args.k)
    print(f"match threshold {r['threshold']:.4f} (target precision {r['target_precision']}), stored in {args.embedder}\n"
          f"  classes it was chosen on ({r['fit']['classes']}): precision {r['fit']['precision']:.3f}, "
          f"recall {r['fit']['recall']:.3f}\n"
          f"  held-out classes ({r['held_out']['classes']}): precision {r['held_out']['precision']:.3f}, "
          f"recall {r['held_out']['recall']:.3f}")
