"""``lookalike pseudo-labels``: embed a folder of images, cluster, write ``path,label`` rows.

    lookalike pseudo-labels --embedder SELFSUP/embedder.pt --images DIR --clusters 300 --out clusters.csv
    python train.py experiment=selfsup_pseudo data.root=DIR data.source.pseudo_labels=clusters.csv \\
        model.backbone.checkpoint=SELFSUP/embedder.pt
"""

from __future__ import annotations

import argparse

from lookalike.cli.options import NON_NEGATIVE, POSITIVE, integer


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="lookalike pseudo-labels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", required=True, help="embedder file (e.g. of an experiment=selfsup_catalog run)")
    p.add_argument("--images", required=True, help="folder of images (sub-folders allowed, names ignored)")
    p.add_argument("--clusters", type=integer(2), required=True, help="number of clusters (pseudo-classes)")
    p.add_argument("--out", required=True, help="CSV to write (path,label)")
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    p.add_argument("--workers", type=NON_NEGATIVE, help="decoding processes (default: up to 4)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import numpy as np

    from lookalike.data.pseudo_labels import write_pseudo_labels
    from lookalike.data.unlabeled import image_files
    from lookalike.embedder.clusters import cluster_images
    from lookalike.embedder.file import load_embedder

    kept, labels = cluster_images(load_embedder(a.embedder), image_files(a.images), a.clusters, a.seed,
                                  a.batch_size, a.workers)
    write_pseudo_labels(a.out, kept, labels)
    sizes = np.bincount(labels, minlength=a.clusters)
    print(f"{len(kept)} images in {a.clusters} clusters ({int((sizes < 2).sum())} of them single images, "
          f"median size {int(np.median(sizes))}, largest {int(sizes.max())}) -> {a.out}")
