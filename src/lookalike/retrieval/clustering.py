"""Spherical k-means of unit vectors (FAISS): for pseudo-labels and for the NMI clustering metric."""

from __future__ import annotations

import numpy as np

from lookalike.retrieval.knn import faiss_module


def spherical_kmeans(vectors: np.ndarray, clusters: int, niter: int = 25, seed: int = 0) -> np.ndarray:
    """The cluster id (0..clusters-1) of every row of ``vectors`` after ``niter`` iterations of FAISS's
    spherical k-means (centroids renormalised, rows assigned by inner product)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    kmeans = faiss_module().Kmeans(x.shape[1], clusters, niter=niter, seed=seed, spherical=True)
    kmeans.train(x)
    return kmeans.index.search(x, 1)[1][:, 0]
