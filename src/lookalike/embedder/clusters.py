"""Pseudo-classes for a catalogue without labels: its images embedded and clustered (spherical k-means), each
cluster a class that triplet training can continue on (``lookalike pseudo-labels``)."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.embedder.embed import embed_files
from lookalike.models.embedder import Embedder
from lookalike.retrieval.clustering import spherical_kmeans


def cluster(embeddings: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster id of every row of ``embeddings`` (unit vectors): spherical k-means, 25 iterations."""
    if not 2 <= clusters <= len(embeddings) // 2:
        raise LookalikeError(f"--clusters must be between 2 and half the number of images ({len(embeddings) // 2}): "
                             "a cluster needs two images to give a positive pair")
    return spherical_kmeans(embeddings, clusters, niter=25, seed=seed)


def cluster_images(embedder: Embedder, paths: Sequence[str], clusters: int, seed: int = 0, batch_size: int = 64,
                   num_workers: int | None = None) -> tuple[list[str], np.ndarray]:
    """The readable images of ``paths`` (unreadable ones skipped with a warning each) and their cluster ids."""
    kept, vectors = [], []
    for positions, batch, errors in embed_files(embedder, paths, batch_size=batch_size, num_workers=num_workers):
        kept += [paths[i] for i in positions]
        vectors.append(batch)
        for error in errors:
            warnings.warn(f"skipped: {error}")
    if not kept:
        raise LookalikeError("None of the images could be read")
    return kept, cluster(np.concatenate(vectors), clusters, seed)
