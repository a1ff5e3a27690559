"""Benchmark: several photos of one item searched together (`lookalike search a.jpg b.jpg --fuse mean|max`).

DVD covers (Stanford Mobile Visual Search): a catalogue index of the 100 clean references, built with
`FileCatalogue.build` from an embedder file; each item's four phone photos (canon, droid, e63, palm) are its queries.
For s = 1, 2, 4 photos, every s-subset of an item's photos is one query (4, 6 and 1 per item), answered by
`lookalike.catalogue.query.search_catalogue` with `fuse=mean` (mean embedding) or `fuse=max` (each item's best
photo); recall@1/@5 = the item's reference among the first 1/5 results, averaged over all queries. No training,
so nothing is chosen on these items: the embedder is a pretrained backbone's pooled features at its own size.

    python experiments/multi_photo.py --root ../shared/datasets/dvd_covers --out experiments/results/photo_to_catalogue.md
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, report

CAMERAS = ("canon", "droid", "e63", "palm")
KS = (1, 5)


def main() -> None:
    from lookalike.catalogue.file import FileCatalogue
    from lookalike.embedder.file import load_embedder, pretrained_embedder, save_embedder
    from lookalike.catalogue.query import SearchOptions, search_catalogue

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--embedder", help="an embedder file instead of the pretrained backbone")
    p.add_argument("--out")
    args = p.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.embedder or save_embedder(pretrained_embedder(args.backbone), Path(tmp) / "embedder.pt")
        index = FileCatalogue.build(path, args.root / "reference")
        embedder = load_embedder(path)
    names = [f"{i:03d}" for i in range(1, 101)]
    photos = embedder.embed([str(args.root / c / f"{n}.jpg") for n in names for c in CAMERAS]).numpy()
    photos = photos.reshape(len(names), len(CAMERAS), -1)
    rows = []
    for size in (1, 2, 4):
        for fuse in ("mean", "max") if size > 1 else ("-",):
            found = {k: [] for k in KS}
            for item, name in enumerate(names):
                for subset in itertools.combinations(range(len(CAMERAS)), size):
                    options = SearchOptions(k=max(KS), fuse=None if fuse == "-" else fuse)
                    [answer] = search_catalogue(index, photos[item, list(subset)], options)
                    labels = [h.label or Path(h.path).stem for h in answer.hits]
                    for k in KS:
                        found[k].append(name in labels[:k])
            rows.append((size, fuse, len(found[1]), *(float(np.mean(found[k])) for k in KS)))
            print(rows[-1], flush=True)
    table = ["| photos per query | fuse | queries | recall@1 | recall@5 |", "|---:|---|---:|---:|---:|"]
    table += [f"| {s} | {f} | {n} | {r1:.3f} | {r5:.3f} |" for s, f, n, r1, r5 in rows]
    what = args.embedder or f"pretrained {args.backbone} pooled features at {embedder.preprocessing['input_size'][-1]} px, no training"
    report([f"## {date.today()}: several photos per query (DVD covers, 100 items, {what})", "",
            f"Machine: {machine()}  ", f"Command: `python experiments/multi_photo.py --root {args.root}"
            + (f" --embedder {args.embedder}" if args.embedder else "") + f"` ({time.perf_counter() - t0:.0f} s)",
            "", *table, ""], args.out)


if __name__ == "__main__":
    main()
