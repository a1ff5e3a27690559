"""``lookalike pretrained --model NAME --out embedder.pt``: an embedder file of a timm model's pretrained
features, no training: the first thing to index and search with, and the baseline training has to beat."""

from __future__ import annotations

import argparse

from lookalike.choices import POOLS
from lookalike.errors import LookalikeError
from lookalike.files import MAX_INPUT_SIDE


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lookalike pretrained", description=__doc__)
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="any timm model name (default: "
                        "tf_efficientnet_lite0, whose weights need no network; lite1/lite2 with the offline-weights "
                        "extra; others from timm's hub, or --checkpoint)")
    parser.add_argument("--pool", default="avg", choices=POOLS, help="pooling of the features (token: a vision "
                        "transformer's class token)")
    parser.add_argument("--image-size", type=int, help="input size in pixels (default: the model's own)")
    parser.add_argument("--checkpoint", help="a local timm or torchvision state dict with the weights")
    parser.add_argument("--out", required=True, help="embedder file to write")
    args = parser.parse_args(argv)
    if args.image_size is not None and not 8 <= args.image_size <= MAX_INPUT_SIDE:
        raise LookalikeError(f"--image-size {args.image_size}: choose 8 to {MAX_INPUT_SIDE} pixels")
    from lookalike.embedder.file import pretrained_embedder, save_embedder
    from lookalike.provenance import provenance

    embedder = pretrained_embedder(args.model, args.pool, args.image_size, args.checkpoint)
    save_embedder(embedder, args.out, pretrained={"model": args.model, "pool": args.pool,
                                                  "checkpoint": args.checkpoint}, **provenance(0))
    size = embedder.preprocessing["input_size"][-1]
    print(f"wrote {args.out}: {args.model} pretrained, {args.pool} pooling, {embedder.embedding_size}-d, {size} px")
