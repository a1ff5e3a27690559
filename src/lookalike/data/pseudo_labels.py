"""Pseudo-labels for catalogues without labels: the embeddings of a (self-supervised) embedder clustered
with FAISS spherical k-means; each cluster becomes a class that triplet training can continue on.

    lookalike pseudo-labels --embedder SELFSUP/embedder.pt --images DIR --clusters 300 --out clusters.csv
    python train.py experiment=selfsup_pseudo data.root=DIR data.source.pseudo_labels=clusters.csv \\
        model.backbone.checkpoint=SELFSUP/embedder.pt
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

import numpy as np

from lookalike.data.manifest import read_rows
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write
from lookalike.retrieval.knn import faiss_module


def cluster(embeddings: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster id of every row of ``embeddings`` (unit vectors): spherical k-means, 25 iterations."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not 2 <= clusters <= len(x) // 2:
        raise LookalikeError(f"--clusters must be between 2 and half the number of images ({len(x) // 2}): "
                             "a cluster needs two images to give a positive pair")
    kmeans = faiss_module().Kmeans(x.shape[1], clusters, niter=25, seed=seed, spherical=True)
    kmeans.train(x)
    return kmeans.index.search(x, 1)[1][:, 0]


def read_pseudo_labels(path: str | Path) -> dict[str, str]:
    """Absolute image path -> cluster name, from a CSV written by ``lookalike pseudo-labels``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"Pseudo-label file '{path}' not found: write it with lookalike pseudo-labels")
    rows = read_rows(path)
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise LookalikeError(f"Pseudo-label file '{path}' needs the columns path and label")
    return {os.path.abspath(path.parent / r["path"]): str(r["label"]) for r in rows}


def main(argv: list[str]) -> None:
    """``lookalike pseudo-labels``: embed a folder of images, cluster, write ``path,label`` rows."""
    from lookalike.data.unlabeled import list_image_files
    from lookalike.export import load_embedder
    from lookalike.retrieval.embed import embed_files

    p = argparse.ArgumentParser(prog="lookalike pseudo-labels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedder", required=True, help="embedder file (e.g. of an experiment=selfsup_catalog run)")
    p.add_argument("--images", required=True, help="folder of images (sub-folders allowed, names ignored)")
    p.add_argument("--clusters", type=int, required=True, help="number of clusters (pseudo-classes)")
    p.add_argument("--out", required=True, help="CSV to write (path,label)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="decoding processes (default: up to 4)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = list_image_files(a.images)
    kept, vectors = [], []
    for positions, batch, errors in embed_files(load_embedder(a.embedder), paths, batch_size=a.batch_size,
                                                num_workers=a.workers):
        kept += [paths[i] for i in positions]
        vectors.append(batch)
        for error in errors:
            print(f"skipped: {error}")
    labels = cluster(np.concatenate(vectors), a.clusters, a.seed)
    sizes = np.bincount(labels, minlength=a.clusters)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "label"])
    writer.writerows((os.path.abspath(path), f"cluster{label:05d}") for path, label in zip(kept, labels))
    atomic_write(a.out, lambda tmp: Path(tmp).write_text(text.getvalue()))
    print(f"{len(kept)} images in {a.clusters} clusters ({int((sizes < 2).sum())} of them single images, "
          f"median size {int(np.median(sizes))}, largest {int(sizes.max())}) -> {a.out}")
